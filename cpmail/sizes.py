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


def size_pair(size: int, limit: int) -> tuple[str, str]:
    """``size`` and ``limit`` in words that tell them apart (exact bytes when rounding would not).

    >>> size_pair(20_000_100, 20_000_000)
    ('20,000,100 bytes', '20,000,000 bytes')
    >>> size_pair(25_000_000, 20_000_000)
    ('25.00 MB', '20.00 MB')
    """
    a, b = size_text(size), size_text(limit)
    if a == b:
        return f"{size:,} bytes", f"{limit:,} bytes"
    return a, b
