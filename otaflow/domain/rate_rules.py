"""The platform's push-rate ranges, as one pure check shared by the CLI and the API.

Kept apart from :mod:`otaflow.domain.rate` because the engine only needs the
arithmetic to be well defined, whereas these limits are product rules (the
console's "Push rate" section) that callers must report with stable error codes.

Error codes raised by :func:`validate_rate`:

=========================================  ================================================
``iot.ota.InvalidRateType``                kind is neither "constant" nor "variable"
``iot.ota.InvalidConstantRate``            constant rate not an integer in 10..10,000
``iot.ota.InvalidBaseRate``                base rate not an integer in 1..10,000
``iot.ota.InvalidMaxRate``                 maximum rate not an integer in 10..10,000
``iot.ota.BaseRateExceedsMaxRate``         base rate greater than the maximum rate
``iot.ota.InvalidIncrementalFactor``       factor outside 1.20..5.00 or > 2 decimal places
``iot.ota.InvalidRateThreshold``           threshold not an integer in 1..100,000
``iot.ota.InvalidRateCondition``           condition is not "pushed" or "succeeded"
=========================================  ================================================

(Changing constant <-> variable on a live batch is refused elsewhere, with
``iot.ota.RateTypeChangeNotAllowed``; see :class:`rate.RateTypeChangeError`.)
"""

from __future__ import annotations

from decimal import Decimal

from otaflow.domain.rate import RateCondition, RateConfig

__all__ = [
    "BASE_RATE_RANGE",
    "CONSTANT_RATE_RANGE",
    "ERROR_CODES",
    "FACTOR_RANGE",
    "MAX_RATE_RANGE",
    "THRESHOLD_RANGE",
    "RateRuleError",
    "validate_rate",
]

CONSTANT_RATE_RANGE = (10, 10_000)
BASE_RATE_RANGE = (1, 10_000)
MAX_RATE_RANGE = (10, 10_000)
THRESHOLD_RANGE = (1, 100_000)
FACTOR_RANGE = (Decimal("1.20"), Decimal("5.00"))

INVALID_RATE_TYPE = "iot.ota.InvalidRateType"
INVALID_CONSTANT_RATE = "iot.ota.InvalidConstantRate"
INVALID_BASE_RATE = "iot.ota.InvalidBaseRate"
INVALID_MAX_RATE = "iot.ota.InvalidMaxRate"
BASE_RATE_EXCEEDS_MAX_RATE = "iot.ota.BaseRateExceedsMaxRate"
INVALID_FACTOR = "iot.ota.InvalidIncrementalFactor"
INVALID_THRESHOLD = "iot.ota.InvalidRateThreshold"
INVALID_CONDITION = "iot.ota.InvalidRateCondition"

ERROR_CODES = (
    INVALID_RATE_TYPE,
    INVALID_CONSTANT_RATE,
    INVALID_BASE_RATE,
    INVALID_MAX_RATE,
    BASE_RATE_EXCEEDS_MAX_RATE,
    INVALID_FACTOR,
    INVALID_THRESHOLD,
    INVALID_CONDITION,
)


class RateRuleError(ValueError):
    """A push-rate setting outside the platform's rules; ``code`` is stable for API clients."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def _is_int(value: object) -> bool:
    # bool is an int subclass; True must not pass as a rate of 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: object, bounds: tuple[int, int], code: str, what: str) -> None:
    low, high = bounds
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise RateRuleError(
            code, f"{what} must be an integer from {low:,} to {high:,}, got {value!r}"
        )


def validate_rate(config: RateConfig) -> None:
    """Raise :class:`RateRuleError` unless ``config`` is within the platform's ranges.

    Checks run in the console's field order, so the first problem reported is
    the one an operator filling the form top-down would hit first.
    """
    if config.kind == "constant":
        _check_int(config.base_rate, CONSTANT_RATE_RANGE, INVALID_CONSTANT_RATE, "constant rate")
        if config.max_rate != config.base_rate:
            raise RateRuleError(INVALID_CONSTANT_RATE, "a constant rate has one value")
        return
    if config.kind != "variable":
        raise RateRuleError(INVALID_RATE_TYPE, f"unknown rate type {config.kind!r}")
    _check_int(config.base_rate, BASE_RATE_RANGE, INVALID_BASE_RATE, "base push rate")
    factor = config.factor
    low, high = FACTOR_RANGE
    if (
        not isinstance(factor, Decimal)
        or not factor.is_finite()
        or not low <= factor <= high
        or factor != factor.quantize(Decimal("0.01"))
    ):
        raise RateRuleError(
            INVALID_FACTOR,
            f"incremental factor must be from {low} to {high} with at most two decimal places, "
            f"got {factor}",
        )
    _check_int(config.max_rate, MAX_RATE_RANGE, INVALID_MAX_RATE, "maximum push rate")
    if config.base_rate > config.max_rate:
        raise RateRuleError(
            BASE_RATE_EXCEEDS_MAX_RATE,
            f"base push rate {config.base_rate:,} exceeds maximum push rate {config.max_rate:,}",
        )
    _check_int(config.threshold, THRESHOLD_RANGE, INVALID_THRESHOLD, "threshold")
    if not isinstance(config.condition, RateCondition):
        raise RateRuleError(
            INVALID_CONDITION,
            f"condition must be 'pushed' or 'succeeded', got {config.condition!r}",
        )
