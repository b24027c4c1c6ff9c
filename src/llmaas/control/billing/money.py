"""Exact money: integer pico-USD (1e-12) inside, decimal strings outside. Float never touches a cost."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from llmaas.core.errors import InvalidRequestError

PICO_PER_USD = 10**12
MAX_USD = Decimal(1_000_000)  # per budget period; keeps every sum inside a signed 64-bit column


def usd_to_pico(value: str | int | float | Decimal, *, param: str) -> int:
    """'12.5' → 12_500_000_000_000. Rejects amounts finer than a pico-dollar, negative or absurd."""
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidRequestError(f"'{param}' must be a decimal amount in USD, got {value!r}.", param=param) from None
    if not d.is_finite() or d < 0 or d > MAX_USD:
        raise InvalidRequestError(f"'{param}' must be between 0 and {MAX_USD} USD.", param=param)
    pico = d * PICO_PER_USD
    if pico != pico.to_integral_value():
        raise InvalidRequestError(f"'{param}' has more precision than 1e-12 USD.", param=param)
    return int(pico)


def price_to_pico_per_token(usd_per_mtok: str | int | float | Decimal, *, param: str) -> int:
    """A price in USD per million tokens → pico-USD per token (exact for up to 6 decimals)."""
    per_token = usd_to_pico(usd_per_mtok, param=param)
    if per_token % 10**6:
        raise InvalidRequestError(f"'{param}' may have at most 6 decimals (USD per 1M tokens).", param=param)
    return per_token // 10**6


def pico_to_usd(pico: int | None) -> str | None:
    """Exact decimal string, without trailing zeros beyond cents: 1_500_000_000 → '0.0015'."""
    if pico is None:
        return None
    d = (Decimal(pico) / PICO_PER_USD).normalize()
    s = format(d, "f")
    if "." not in s:
        return s + ".00"
    whole, frac = s.split(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def price_per_mtok(pico_per_token: int) -> str:
    return pico_to_usd(pico_per_token * 10**6) or "0.00"
