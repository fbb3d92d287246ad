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

And every secret a command has read (``remember``: its settings' passwords and
tokens, a proxy's password, what it took from the secrets store) is masked by
value in whatever leaves it (``hide``: printed, written as JSON, recorded as
an error, alerted, mailed as diagnostics).
"""

from __future__ import annotations

import base64
import contextlib
import re
import urllib.parse
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


# ---------------------------------------------------------------- what this process knows
#
# Every secret cpmail reads (a URL's password in a setting, a passcode, a token, an alert
# URL's tokens, a proxy's password in the environment) is remembered by value, and what
# leaves the program (printed, written as JSON, recorded as an error, alerted) is passed
# through ``hide``: a secret quoted where no rule of shape finds it (a library's message,
# a host with its user part) is masked all the same. Shorter values are left to the
# rules of shape: masked wherever they occur, they would mask dates and counts, and show
# what the secret is by what went missing.
_LEAST = 6
_known: set[str] = set()
_forms: list[str] = []


def remember(values: Iterable[str]) -> None:
    """Mask these values (and their URL-decoded forms) in whatever ``hide`` is given."""
    new: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            continue
        bare = value.strip().strip("'\"{}").replace("''", "'")
        for form in (value, value.strip(), bare, urllib.parse.unquote(value)):
            if len(form.strip()) >= _LEAST and form not in _known:
                new.add(form)
    if not new:
        return
    import json

    _known.update(new)
    forms = {f for v in _known for f in (v, json.dumps(v, ensure_ascii=False)[1:-1])}
    _forms[:] = sorted(forms, key=len, reverse=True)  # longest first: a secret inside another


def forget() -> None:
    """Remember nothing (a command starts: what another in this process read is not its)."""
    _known.clear()
    _forms.clear()


def hide(text: str) -> str:
    """``text`` with every remembered secret masked (as written, and as JSON writes it)."""
    for form in _forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def secrets_in(text: str) -> list[str]:
    """The values ``cpmail.settings.redact`` masks in ``text`` (passwords, tokens): what
    stands in ``text`` where its redacted form has ``••••``, the rest being the same."""
    from cpmail.settings import redact

    shown = redact(text)
    if shown == text or MASK in text:
        return []
    kept = shown.split(MASK)  # what stays between the masks, as it is in ``text``
    if not text.startswith(kept[0]) or not text.endswith(kept[-1]):
        return []
    found: list[str] = []
    start = len(kept[0])
    for n, part in enumerate(kept[1:], 1):
        if n == len(kept) - 1:
            end = len(text) - len(part)
        elif not part:
            continue  # two masks in a row: one secret, as far as the next part
        else:
            end = text.find(part, start + 1)
        if end <= start:
            return found
        found.append(text[start:end])
        start = end + len(part)
    return found


def remember_setting(value: str, *, secret: bool) -> None:
    """Remember the secrets in a setting's value: a secret setting's (an alert URL's)
    whole value and its words that are no plain word or host, anything's passwords."""
    from cpmail.settings import redact

    # A password that the value shows anyway (a user name, the host, the scheme) is no
    # secret to mask by value: masking it there would show what it is ("••••ql").
    shown = redact(value)
    remember(s for s in secrets_in(value) if urllib.parse.unquote(s) not in shown)
    if secret:
        remember([value])
        remember(_tokens(value))
        with contextlib.suppress(ValueError):
            remember([urllib.parse.unquote(urllib.parse.urlsplit(value).password or "")])


def _tokens(url: str) -> list[str]:
    """The words of an alert URL that may be tokens (Apprise puts them in the host, the path
    and the query: ``slack://TokenA/TokenB/TokenC``, ``tgram://bottoken/chat``): not its
    user name, an address (``to=ops-team@agency.example``), a plain word or a host name,
    which other output shows as they are (the sender, a recipient)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    where = parts.netloc.rpartition("@")[2]  # a host, with a port, or a token (bot:key)
    host, colon, port = where.rpartition(":")
    if colon and port.isdigit():
        where = host  # (a port is no secret)
    words = [] if where.startswith("[") else [where, *where.split(":")]  # ([::1]: an address)
    words += parts.path.split("/")
    words += [v for k, v in urllib.parse.parse_qsl(parts.query) if k.lower() not in _NAMED]
    words += parts.fragment.split("/")
    return [
        w
        for w in (urllib.parse.unquote(w) for w in words)
        if "@" not in w and not w.isdigit() and not _PLAIN.fullmatch(w)
    ]


# Query keys of Apprise URLs that name people or places, not secrets.
_NAMED = frozenset(["to", "from", "cc", "bcc", "name", "user", "reply", "smtp", "format"])


# A word of lower-case letters, or a host name: no token.
_PLAIN = re.compile(r"[a-z]*|[\w-]+(?:\.[\w-]+)+")


def remember_document(doc: object) -> None:
    """Remember the secrets in a stored sign-in or OAuth client (JSON): every token,
    refresh token, client secret and device code in it, however deep."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, str) and key in _SECRET_FIELDS:
                remember([value])
            else:
                remember_document(value)
    elif isinstance(doc, list):
        for value in doc:
            remember_document(value)


# The fields of Google's and msal's documents that hold a secret (msal's "secret" is each
# cached token's); the others (token_uri, token_type, scopes, the address) are no secret.
_SECRET_FIELDS = frozenset(
    [
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "secret",
        "client_secret",
        "device_code",
        "code",
        "password",
        "passcode",
        "client_assertion",
        "private_key",
    ]
)
