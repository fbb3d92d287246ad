"""Addresses and header text from agency data: parse strictly, never let data add a header."""

from __future__ import annotations

import re

from cpmail.errors import InputError

_UNSAFE = re.compile(r"[\r\n\x00]")


def clean_header_text(text: str) -> str:
    """Replace CR, LF and NUL with spaces so data cannot start a new header line."""
    return _UNSAFE.sub(" ", text)


def check_address(address: str, *, where: str = "") -> str:
    """Return ``address`` normalised, or raise InputError naming it (and ``where``)."""
    from email_validator import EmailNotValidError, validate_email

    label = f"{where}: " if where else ""
    if _UNSAFE.search(address) or "," in address or "<" in address or ">" in address:
        raise InputError(f"{label}{address!r} is not one e-mail address.")
    try:
        info = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as e:
        raise InputError(f"{label}{address!r} is not a valid e-mail address: {e}") from None
    return str(info.normalized)


def looks_like_address(text: str) -> bool:
    """True when ``text`` is meant as an address (has an @), not a staff ID."""
    return "@" in text
