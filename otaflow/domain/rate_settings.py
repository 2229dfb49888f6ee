"""A batch's push rate as stored in its records (``RateSettings``) and as the meter uses it.

One mapping, used by the control plane when it writes a batch and by the rate agent
when it reads one. The factor is kept in hundredths so 1.20 or 2.35 stay exact.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from otaflow.domain.rate import RateCondition, RateConfig


def to_settings(config: RateConfig | None) -> dict[str, Any] | None:
    """The ``RateSettings`` record of a rate (None: no proactive push)."""
    if config is None:
        return None
    if config.kind == "constant":
        return {
            "kind": "constant",
            "max_rate": config.rate,
            "base_rate": None,
            "factor_hundredths": None,
            "threshold": None,
            "condition": None,
        }
    return {
        "kind": "variable",
        "max_rate": config.max_rate,
        "base_rate": config.base_rate,
        "factor_hundredths": int(config.factor * 100),
        "threshold": config.threshold,
        "condition": config.condition.value if config.condition else None,
    }


def from_settings(record: dict[str, Any] | None) -> RateConfig | None:
    """The rate of a ``RateSettings`` record (None: no proactive push)."""
    if record is None:
        return None
    if record["kind"] == "constant":
        return RateConfig.constant(record["max_rate"])
    return RateConfig.variable(
        base_rate=record["base_rate"],
        factor=Decimal(record["factor_hundredths"]) / 100,
        max_rate=record["max_rate"],
        threshold=record["threshold"],
        condition=RateCondition(record["condition"]),
    )
