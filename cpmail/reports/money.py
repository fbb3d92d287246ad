"""Money and quantities as printed on reports: Decimal only, never float.

Amounts have thousands separators and two decimals; a negative amount is shown
in parentheses, as accountants print credits: ``(1,234.50)``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


def to_decimal(value: object) -> Decimal:
    """Return ``value`` as a Decimal (None and blanks are zero); floats go through ``str``."""
    if value is None or value == "":
        return ZERO
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not an amount")
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None


def cents(value: Decimal) -> Decimal:
    """Round to cents, half away from zero (how invoices are rounded)."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def money(value: Decimal | None, *, blank_zero: bool = False) -> str:
    """``1234.5`` -> ``1,234.50``; ``-1234.5`` -> ``(1,234.50)``; None -> ``''``."""
    if value is None:
        return ""
    amount = cents(value)
    if blank_zero and amount == 0:
        return ""
    text = f"{abs(amount):,.2f}"
    return f"({text})" if amount < 0 else text


def quantity(value: Decimal | None) -> str:
    """``2.00`` -> ``2``; ``1.50`` -> ``1.5``; ``1234`` -> ``1,234``."""
    if value is None:
        return ""
    q = cents(value)
    if q == q.to_integral_value():
        return f"{q:,.0f}"
    text = f"{q:,.2f}"
    return text.rstrip("0")
