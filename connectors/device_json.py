"""What every device -> cloud MQTT payload shares, whatever its protocol.

The OTA messages (:mod:`connectors.ota_messages`), the file-download requests
(:mod:`connectors.download_frames`) and the broker's presence messages
(:mod:`connectors.presence`) are all a JSON object on a topic that names the device:
the limits, the topic-level rule and the one error type live here so that each
protocol refuses bad input the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# A report is a few hundred bytes; anything this large is not one of ours and
# should not be parsed (nor kept whole in the dead-letter topic, see ingress).
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_ID_CHARS = 64
# A topic level we accept as product key / device name: non-empty, no MQTT
# wildcards, no NUL (the separator '/' cannot occur inside a level by construction).
BAD_LEVEL_CHARS = frozenset("+#\x00")


class MalformedPayload(ValueError):
    """A device message otaflow cannot use; ``reason`` says why, for the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def topic_level(value: str, what: str) -> str:
    if not value:
        raise MalformedPayload(f"empty {what} in topic")
    if not BAD_LEVEL_CHARS.isdisjoint(value):
        raise MalformedPayload(f"{what} {value!r} in topic contains '+', '#' or NUL")
    return utf8_text(value, f"{what} in topic")


def utf8_text(value: str, what: str) -> str:
    """JSON strings may hold unpaired surrogates (``"\\ud800"``); Avro strings may not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedPayload(f"{what} is not valid Unicode (unpaired surrogate)") from None
    return value


def json_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedPayload(
            f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"payload is not UTF-8: {exc}") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise MalformedPayload("payload is not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer literal with too many digits
        raise MalformedPayload(f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedPayload(f"payload must be a JSON object, got {type_name(body)}")
    return body


def read_message_id(body: Mapping[str, Any], *, required: bool) -> str | None:
    raw = body.get("id")
    if raw is None:
        if required:
            raise MalformedPayload("missing 'id' (needed to answer the request)")
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise MalformedPayload(f"'id' must be a string or an integer, got {type_name(raw)}")
    text = str(raw)
    if not text or len(text) > MAX_ID_CHARS:
        raise MalformedPayload(f"'id' must be 1-{MAX_ID_CHARS} characters, got {len(text)}")
    return utf8_text(text, "'id'")


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
