"""Masking secrets in what a server says back, before cpmail stores, prints or mails it.

A server that refuses a login or a request may quote it: an SMTP server its
AUTH line (the passcode in base64), an API the ``Authorization`` header, a
token endpoint the refresh token. cpmail keeps the server's words, because
they say what went wrong, but never a secret in them:

* each known secret, and its base64 forms, whatever the server did to the
  spaces in it (``Scrubber``);
* pieces of one, such as a base64 line split over two lines of a reply: any
  word holding eight characters in a row of a secret is masked whole, and
  so are words that spell one out together, however short each (the reply
  read without its spaces, line breaks and reply codes);
* for HTTP APIs, anything shaped like a bearer token (``mask_tokens``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

from cpmail.settings import MASK

_PIECE = 8  # characters in a row of a secret that make a word part of it
_WORD = re.compile(r"\S+")
# What starts a line of a reply (``535-5.7.8``, ``535 5.7.8``): left out when the
# words are read together. Only there: a passcode may hold digit groups too.
_LINE_CODE = re.compile(r"^[ \t]*\d{3}(?:[- ]\d\.\d{1,3}\.\d{1,3})?-?(?=[ \t]|$)", re.M)


class Scrubber:
    """Masks ``secrets`` (and their base64 forms) wherever they appear, whole or in pieces."""

    def __init__(self, secrets: Iterable[str], *, with_base64_of: Iterable[str] = ()) -> None:
        forms = [s for s in secrets if s]
        forms += [base64.b64encode(s.encode("utf-8")).decode("ascii") for s in with_base64_of if s]
        # Longest first: a secret inside a longer form is masked with it.
        forms.sort(key=len, reverse=True)
        self._whole = [
            re.compile(r"\s*".join(re.escape(part) for part in form.split()))
            for form in forms
            if form.strip()
        ]
        self._joined = [j for j in ("".join(form.split()) for form in forms) if len(j) >= _PIECE]
        self._pieces = {
            joined[i : i + _PIECE]
            for joined in self._joined
            for i in range(len(joined) - _PIECE + 1)
        }

    def __call__(self, text: str) -> str:
        text = self._spelled_out(text)
        for pattern in self._whole:
            text = pattern.sub(MASK, text)
        if not self._pieces:
            return text
        return _WORD.sub(self._word, text)

    def _spelled_out(self, text: str) -> str:
        """Mask the words that together spell a secret: read as they are, and read without
        the reply codes that start the lines (so each way of splitting is caught)."""
        if not self._joined:
            return text
        codes = [m.span() for m in _LINE_CODE.finditer(text)]
        every = list(_WORD.finditer(text))
        bare = [m for m in every if not any(a <= m.start() and m.end() <= b for a, b in codes)]
        hit: set[tuple[int, int]] = set()
        for words in (every, bare):
            joined = "".join(m.group(0) for m in words)
            owner = [n for n, m in enumerate(words) for _ in m.group(0)]
            for form in self._joined:
                at = joined.find(form)
                while at >= 0:
                    hit.update(words[n].span() for n in set(owner[at : at + len(form)]))
                    at = joined.find(form, at + 1)
        for start, end in sorted(hit, reverse=True):
            text = text[:start] + MASK + text[end:]
        return text

    def _word(self, m: re.Match[str]) -> str:
        word = m.group(0)
        if len(word) >= _PIECE and any(
            word[i : i + _PIECE] in self._pieces for i in range(len(word) - _PIECE + 1)
        ):
            return MASK
        return word


def login_scrubber(user: str, passcode: str) -> Scrubber:
    """For a login's answers: the passcode as typed and in AUTH PLAIN's and LOGIN's base64."""
    if not passcode:
        return Scrubber(())
    return Scrubber(
        [passcode], with_base64_of=[passcode, f"\0{user}\0{passcode}", f"{user}\0{passcode}"]
    )


# "Bearer <token>", and words shaped like OAuth tokens and keys: Google's access tokens
# (ya29.…), refresh tokens (1//…), JSON Web Tokens (eyJ….….…), long runs of letters and
# digits. A request id written as a UUID stays: it helps support and is no secret.
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+\S+")
_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_TOKEN_SHAPE = re.compile(r"ya29\.\S+|1//\S+|eyJ[\w-]+\.[\w-]+\.?[\w-]*|[\w\-./+=~]{20,}")


def mask_tokens(text: str) -> str:
    """``text`` from an HTTP API with anything shaped like a token masked."""
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)

    def one(m: re.Match[str]) -> str:
        word = m.group(0)
        if _UUID.fullmatch(word.strip(".,;:()[]\"'")):
            return word
        if word.startswith(("ya29.", "1//", "eyJ")):
            return MASK
        has_digit = any(c.isdigit() for c in word)
        has_alpha = any(c.isalpha() for c in word)
        return MASK if has_digit and has_alpha and "://" not in word else word

    return _TOKEN_SHAPE.sub(one, text)
