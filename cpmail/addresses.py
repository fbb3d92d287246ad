"""Addresses and header text from agency data: parse strictly, never let data add a header."""

from __future__ import annotations

import re

from cpmail.errors import InputError

# CR, LF and NUL, plus every other character Python's splitlines() breaks on
# (\v \f \x1c-\x1e \x85 \u2028 \u2029) and the remaining C0 controls.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_ALLOWED_SPECIAL = ("local", "localhost", "test")


def clean_header_text(text: str) -> str:
    """Replace CR, LF, NUL and other line breaks with spaces: data cannot start a header line."""
    return _UNSAFE.sub(" ", text)


def check_address(address: str, *, where: str = "") -> str:
    """Return ``address`` normalised, or raise InputError naming it (and ``where``)."""
    import email_validator
    from email_validator import EmailNotValidError, validate_email

    # Agencies run internal mail on .local/.lan names and tests use .test
    # (RFC 6761): the library allows trimming its special-use list for that.
    for name in _ALLOWED_SPECIAL:
        if name in email_validator.SPECIAL_USE_DOMAIN_NAMES:
            email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(name)
    label = f"{where}: " if where else ""
    if _UNSAFE.search(address) or "," in address or "<" in address or ">" in address:
        raise InputError(f"{label}{address!r} is not one e-mail address.")
    try:
        info = validate_email(
            address.strip(), check_deliverability=False, globally_deliverable=False
        )
    except EmailNotValidError as e:
        raise InputError(f"{label}{address!r} is not a valid e-mail address: {e}") from None
    return str(info.normalized)


def looks_like_address(text: str) -> bool:
    """True when ``text`` is meant as an address (has an @), not a staff ID."""
    return "@" in text
