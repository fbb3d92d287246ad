"""Addresses and header text from agency data: parse strictly, never let data add a header.

An address is accepted only when it is one mailbox written the plain way a
person types it: ``local@domain``, international addresses included
(``üser@agency.test``, ``user@bücher.example``, ``user@xn--bcher-kva.example``).
Everything else is refused with the place it came from: a list
(``a@b,c@d``), a quoted local part (``"a@b"@x``), a name with angle brackets
(``Name <a@b>``), spaces, comments, a bracketed IP address, a local part over
64 characters or an address over 254, and text that a mail program would read
as an RFC 2047 encoded-word (``=?utf-8?q?a=40b?=@agency.test``), which could
name a different mailbox than the one stored.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

from cpmail.errors import InputError

# CR, LF and NUL, plus every other character Python's splitlines() breaks on
# (\v \f \x1c-\x1e \x85 \u2028 \u2029) and the remaining C0 controls.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_ALLOWED_SPECIAL = ("local", "localhost", "test")
_SPACE = re.compile(r"\s")
# The address most people have: letters, digits and . _ + - in the local part
# (not first, last or twice in a row), a domain of plain labels with a
# top-level name of letters. email-validator accepts every such address (but
# one in a special-use domain) and gives back the local part as typed and
# the domain in lower case, which `_examine` does without it: the library
# spends tens of microseconds on an address, and a run checks one per
# recipient (tests/test_addresses.py compares the two over generated text).
_PLAIN = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9]+(?:[._+-][A-Za-z0-9]+)*"
    r"@(?=.{4,253}\Z)((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})\Z",
    re.ASCII,
)


def clean_header_text(text: str) -> str:
    """Replace CR, LF, NUL and other line breaks with spaces: data cannot start a header line."""
    return _UNSAFE.sub(" ", text)


def check_address(address: str, *, where: str = "") -> str:
    """Return ``address`` normalised, or raise InputError naming it (and ``where``).

    The normal form keeps the local part as typed (Unicode NFC) and the domain
    in lower case, in the form it was given: a punycode domain stays ASCII,
    a Unicode domain stays Unicode.
    """
    problem, normal = _examine(address)
    if problem is not None:
        label = f"{where}: " if where else ""
        raise InputError(f"{label}{address!r} {problem}")
    return normal


def valid_address(address: str) -> bool:
    """True when ``check_address`` accepts ``address`` (cached: cheap to ask per message)."""
    return _examine(address)[0] is None


def normal_address(address: str) -> str:
    """The normal form of an address ``valid_address`` accepts (as ``check_address`` gives)."""
    return _examine(address)[1] or address.strip()


def mailbox_key(address: str) -> str:
    """What names one mailbox however it is written: the normal form, in lower case,
    with the domain in ASCII (``user@bücher.example`` is ``user@xn--bcher-kva.example``).
    """
    local, _, domain = normal_address(address).rpartition("@")
    return f"{local}@{ascii_domain(domain)}".lower()


@lru_cache(maxsize=4096)
def ascii_domain(domain: str) -> str:
    """``domain`` as DNS has it: an international name in punycode (IDNA)."""
    if domain.isascii():
        return domain
    import idna

    try:
        return str(idna.encode(domain, uts46=True).decode("ascii"))
    except idna.IDNAError:
        return domain


def looks_like_address(text: str) -> bool:
    """True when ``text`` is meant as an address (has an @), not a staff ID."""
    return "@" in text


@lru_cache(maxsize=65536)
def _examine(address: str) -> tuple[str | None, str]:
    """(what is wrong or None, the normal form)."""
    text = address.strip()
    if not text:
        return "is empty; give one e-mail address such as jd@agency.test.", ""
    if _UNSAFE.search(text):
        return "holds a line break or a control character; give one e-mail address.", ""
    if "<" in text or ">" in text:
        return "is not one plain address: give it without a name or <…>, e.g. jd@agency.test.", ""
    if '"' in text:
        return "has a quoted part; cpmail accepts only addresses written without quotes.", ""
    if "," in text or ";" in text or text.count("@") > 1:
        return "is not one e-mail address: give one address, not a list.", ""
    if _SPACE.search(text):
        return "contains a space; an e-mail address has none.", ""
    if "=?" in text:
        return (
            "looks like an encoded word (=?…?=), not an address as a person types it; "
            "give the address itself.",
            "",
        )
    if "@" not in text:
        return "is not an e-mail address (it has no @).", ""
    plain = _PLAIN.match(text)
    if plain is not None and len(text) <= 254:
        domain = plain[1].lower()
        if "--" not in domain and not _special_use(domain):
            return None, f"{text.rpartition('@')[0]}@{domain}"
    return _validate(text)


@lru_cache(maxsize=1024)
def _special_use(domain: str) -> bool:
    """Whether email-validator refuses ``domain`` as a special-use name (RFC 6761).

    Asked once per domain: an agency's staff share a few.
    """
    return any(domain == name or domain.endswith("." + name) for name in _special_names())


@cache
def _special_names() -> tuple[str, ...]:
    """email-validator's special-use names, once trimmed of those agencies use.

    Agencies run internal mail on .local/.lan names and tests use .test
    (RFC 6761): the library allows trimming its list for that.
    """
    import email_validator

    for name in _ALLOWED_SPECIAL:
        if name in email_validator.SPECIAL_USE_DOMAIN_NAMES:
            email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(name)
    return tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def _validate(text: str) -> tuple[str | None, str]:
    """``_examine`` by email-validator, for any address that is not plain."""
    from email_validator import EmailNotValidError, validate_email

    _special_names()  # the library's list trimmed before it is used
    try:
        info = validate_email(
            text,
            allow_smtputf8=True,
            allow_empty_local=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            strict=True,
            check_deliverability=False,
            globally_deliverable=False,
        )
    except EmailNotValidError as e:
        return f"is not a valid e-mail address: {e}", ""
    if info.ascii_domain.rpartition(".")[2].isdigit():
        return (
            "is not a valid e-mail address: the part after the @-sign is a number, "
            "not a domain name.",
            "",
        )
    typed_domain = text.rpartition("@")[2]
    domain = info.ascii_domain if typed_domain.isascii() else info.domain
    return None, f"{info.local_part}@{domain}"
