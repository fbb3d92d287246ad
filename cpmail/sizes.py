"""Sizes in words a person can compare."""

from __future__ import annotations


def size_text(n: int) -> str:
    """Bytes, KB or MB, with the digits that tell two nearby sizes apart.

    >>> size_text(9_999), size_text(10_240), size_text(20_971_520)
    ('9,999 bytes', '10.2 KB', '20.97 MB')
    """
    if n < 10_000:
        return f"{n:,} bytes"
    if n < 1_000_000:
        return f"{n / 1000:,.1f} KB"
    return f"{n / 1_000_000:,.2f} MB"
