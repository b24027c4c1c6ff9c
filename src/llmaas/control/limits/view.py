"""Limits as the API shows them and as services apply them to a tenant or key row."""

from __future__ import annotations

from typing import Any

from llmaas.control.billing.money import pico_to_usd, usd_to_pico
from llmaas.control.clock import PERIODS
from llmaas.core.errors import InvalidRequestError

LIMIT_FIELDS = ("rpm", "tpm", "max_parallel", "budget_usd", "budget_period", "budget_alert_fraction")


def limits_dict(row: Any) -> dict:
    return {
        "rpm": row.rpm, "tpm": row.tpm, "max_parallel": row.max_parallel,
        "budget_usd": pico_to_usd(row.budget_pico), "budget_period": row.budget_period or "monthly",
        "budget_alert_fraction": row.budget_alert_fraction if row.budget_alert_fraction is not None else 0.8,
    }


def apply_limits(row: Any, changes: dict[str, Any], *, param: str = "limits") -> None:
    """Apply a partial update ({field: value}; None clears a limit). Validates every field first."""
    unknown = set(changes) - set(LIMIT_FIELDS)
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequestError(f"Unknown limit '{name}'. Known: {', '.join(LIMIT_FIELDS)}.",
                                  param=f"{param}.{name}")
    staged: dict[str, Any] = {}
    for name in ("rpm", "tpm", "max_parallel"):
        if name in changes:
            v = changes[name]
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise InvalidRequestError(f"'{param}.{name}' must be a positive integer or null.",
                                          param=f"{param}.{name}")
            staged[name] = v
    if "budget_usd" in changes:
        v = changes["budget_usd"]
        staged["budget_pico"] = None if v is None else usd_to_pico(v, param=f"{param}.budget_usd")
    if changes.get("budget_period") is not None:
        if changes["budget_period"] not in PERIODS:
            raise InvalidRequestError(f"'{param}.budget_period' must be one of {', '.join(PERIODS)}.",
                                      param=f"{param}.budget_period")
        staged["budget_period"] = changes["budget_period"]
    if changes.get("budget_alert_fraction") is not None:
        f = changes["budget_alert_fraction"]
        if not isinstance(f, int | float) or not 0 < f <= 1:
            raise InvalidRequestError(f"'{param}.budget_alert_fraction' must be in (0, 1].",
                                      param=f"{param}.budget_alert_fraction")
        staged["budget_alert_fraction"] = float(f)
    for k, v in staged.items():
        setattr(row, k, v)
    if row.budget_period is None:
        row.budget_period = "monthly"
    if row.budget_alert_fraction is None:
        row.budget_alert_fraction = 0.8
