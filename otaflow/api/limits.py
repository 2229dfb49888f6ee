"""What a request's parameters may hold, checked before anything is written.

A command is an Avro record on a Kafka topic and its outcome lands in more Avro
records: an integer beyond 64 bits, a string with a lone surrogate or a value of a
megabyte cannot be written there, and before this check such a call stopped the
command agent (issue 16). Every parameter is checked here, in the API process:

* **names**: the SDK's wire shape only (``Name``, ``Name.N``, ``Name.N.Key``; ASCII
  letters and digits), at most ``MAX_KEY_CHARS`` characters and ``MAX_DEPTH`` levels;
* **values**: valid Unicode (no lone surrogates: JSON may carry ``"\\ud800"``, UTF-8
  and Avro may not), no control characters but tab, CR and LF, at most
  ``MAX_VALUE_CHARS`` characters (the longest the platform documents is ``Udi``, 4,096);
* **integers**: every parameter the SDK types ``int`` (table ``INTEGER_PARAMS``,
  taken from ``alibabacloud_iot20180120.models``) must be a decimal integer within the
  platform's documented range or, where it documents none, the Java SDK's type
  (``Integer``: 32 bits; ``Long``: 64 bits);
* **size**: at most ``MAX_PARAMS`` parameters and ``MAX_COMMAND_BYTES`` of names and
  values together, so the command fits one Kafka record (1 MB by default).

Finer rules (a name's character set, a rate's range, a schedule window) stay with
the control plane, which answers them with the platform's business codes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from otaflow.api.params import ParamError
from otaflow.control.errors import ApiError, invalid

__all__ = [
    "INTEGER_PARAMS",
    "MAX_COMMAND_BYTES",
    "MAX_DEPTH",
    "MAX_KEY_CHARS",
    "MAX_PARAMS",
    "MAX_VALUE_CHARS",
    "check_params",
    "check_value",
]

MAX_PARAMS = 25_000
MAX_KEY_CHARS = 128
MAX_DEPTH = 4
MAX_VALUE_CHARS = 4_096
# Kafka refuses records over 1 MB by default; leave room for the envelope.
MAX_COMMAND_BYTES = 900_000

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
#: The platform's limit for one package file (console doc: "The maximum size for a
#: single file is 1,000 MB").
MAX_FIRMWARE_BYTES = 1_000 * 1024 * 1024

_PAGING = {"CurrentPage": (1, INT32[1]), "PageSize": (1, INT32[1])}
_JOB_RULES = {
    "MaximumPerMinute": INT32,
    "OverwriteMode": INT32,
    "RetryCount": INT32,
    "RetryInterval": INT32,
    "TimeoutInMinutes": INT32,
    # otaflow's variable-rate extras (docs/openapi-ota.md)
    "BaseRatePerMinute": INT32,
    "RateIncreaseThreshold": INT32,
}
#: Integer parameters per operation (wire name -> inclusive range).
INTEGER_PARAMS: dict[str, dict[str, tuple[int, int]]] = {
    "BatchRegisterDeviceWithApplyId": {"ApplyId": (1, INT64[1])},
    "CreateOTADynamicUpgradeJob": {**_JOB_RULES, "DynamicMode": INT32},
    "CreateOTAFirmware": {"FirmwareSize": (0, MAX_FIRMWARE_BYTES), "Type": INT32},
    "CreateOTAStaticUpgradeJob": {
        **_JOB_RULES,
        "ScheduleTime": (0, INT64[1]),
        "ScheduleFinishTime": (0, INT64[1]),
    },
    "CreateOTAVerifyJob": {"TimeoutInMinutes": INT32},
    "CreateProduct": {"DataFormat": INT32, "NodeType": INT32, "ValidateType": INT32},
    "ListOTAFirmware": _PAGING,
    "ListOTAJobByDevice": _PAGING,
    "ListOTAJobByFirmware": _PAGING,
    "ListOTAJobInvalidDeviceNames": _PAGING,
    "ListOTAModuleVersionsByDevice": _PAGING,
    "ListOTATaskByJob": _PAGING,
    "QueryBatchRegisterDeviceStatus": {"ApplyId": (1, INT64[1])},
    "QueryDeviceGroupList": _PAGING,
    "QueryPageByApplyId": {"ApplyId": (1, INT64[1]), **_PAGING},
    "UpdateOTAJob": {
        "MaximumPerMinute": INT32,
        "TimeoutInMinutes": INT32,
        "BaseRatePerMinute": INT32,
        "RateIncreaseThreshold": INT32,
    },
}

_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
# C0 controls but tab, LF and CR; DEL; lone surrogates (never valid in UTF-8).
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_INTEGER = re.compile(r"[+-]?[0-9]{1,40}")


def _base(key: str) -> str:
    return key.split(".", 1)[0]


def check_value(key: str, value: str) -> None:
    """One parameter's name and value (raises ``ParamError``, HTTP 400)."""
    well_formed = len(key) <= MAX_KEY_CHARS and _KEY.fullmatch(key) is not None
    name = _base(key) if well_formed else "ParameterName"
    if not well_formed or key.count(".") >= MAX_DEPTH:
        raise ParamError.invalid(
            name, f"A parameter name must be Name, Name.N or Name.N.Key: {key[:64]!r}."
        )
    if len(value) > MAX_VALUE_CHARS:
        raise ParamError.invalid(name, f"At most {MAX_VALUE_CHARS} characters.")
    bad = _BAD_CHARS.search(value)
    if bad is not None:
        raise ParamError.invalid(
            name,
            f"Character U+{ord(bad.group()):04X} is not allowed"
            " (control characters and unpaired surrogates cannot be stored).",
        )


def check_params(action: str, params: Mapping[str, str]) -> None:
    """Every parameter of one call; raises ``ParamError`` (malformed, HTTP 400) or
    ``ApiError`` (an integer out of range: the platform's business error, HTTP 200)."""
    if len(params) > MAX_PARAMS:
        raise ParamError("InvalidParameter.Size", f"At most {MAX_PARAMS} parameters.")
    total = 0
    for key, value in params.items():
        check_value(key, value)
        total += len(key) + len(value.encode("utf-8")) + 4
    if total > MAX_COMMAND_BYTES:
        raise ParamError(
            "InvalidParameter.Size",
            f"The parameters take {total:,} bytes; at most {MAX_COMMAND_BYTES:,} are accepted.",
        )
    for name, (low, high) in INTEGER_PARAMS.get(action, {}).items():
        raw = params.get(name)
        if raw is None or raw == "":
            continue
        check_integer(name, raw, low, high)


def check_integer(name: str, raw: str, low: int, high: int) -> int:
    text = raw.strip()
    if not _INTEGER.fullmatch(text):
        raise invalid(name, f"{raw[:40]!r} is not an integer")
    number = int(text)
    if not low <= number <= high:
        raise ApiError(
            "iot.common.InvalidFormattedParameter",
            f"The parameter {name} is invalid: must be from {low} to {high}, got {number}",
        )
    return number
