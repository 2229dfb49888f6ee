"""Presence: the broker's connect/disconnect messages -> ``DeviceReport`` ONLINE/OFFLINE.

The broker otaflow provisions (Mosquitto with ``otaflow/edge/otaflow_auth.c``)
publishes the platform's device status message on ``/as/mqtt/status/{pk}/{dn}``::

    {"status": "online"|"offline", "productKey": ..., "deviceName": ...,
     "time": "yyyy-MM-dd HH:mm:ss.SSS", "lastTime": ..., "clientIp": ...}

and the ingress connector (with ``OTAFLOW_PRESENCE=1``) turns each into a
``DeviceReport`` of kind ONLINE or OFFLINE on ``ota.device.reports``, so the device
engine knows whether an offer can reach a device. Any broker that can publish this
message (EMQX's rule engine on ``client.connected``/``client.disconnected``, a HiveMQ
extension's ``ClientLifecycleEventListener``) feeds otaflow the same records; see
docs/edge.md. ``event_time`` is the ingress's clock, like every other report.
"""

from __future__ import annotations

from typing import Any

from connectors.device_json import MalformedPayload, json_object, topic_level

STATUS_TOPIC_PREFIX = "/as/mqtt/status/"
STATUS_TOPIC_FILTER = f"{STATUS_TOPIC_PREFIX}+/+"
_KINDS = {"online": "ONLINE", "offline": "OFFLINE"}


def is_status_topic(mqtt_topic: str) -> bool:
    return mqtt_topic.startswith(STATUS_TOPIC_PREFIX)


def status_topic(product_key: str, device_name: str) -> str:
    return f"{STATUS_TOPIC_PREFIX}{product_key}/{device_name}"


def parse_status(mqtt_topic: str, payload: bytes, now_ms: int) -> dict[str, Any]:
    """One status message -> a ``DeviceReport`` record, or raise :class:`MalformedPayload`."""
    levels = mqtt_topic[len(STATUS_TOPIC_PREFIX) :].split("/")
    if not is_status_topic(mqtt_topic) or len(levels) != 2:
        raise MalformedPayload(f"topic {mqtt_topic!r} is not a device status topic")
    product_key = topic_level(levels[0], "product key")
    device_name = topic_level(levels[1], "device name")
    body = json_object(payload)
    kind = _KINDS.get(str(body.get("status")).lower())
    if kind is None:
        raise MalformedPayload(
            f"'status' must be 'online' or 'offline', got {body.get('status')!r}"
        )
    for field, expected in (("productKey", product_key), ("deviceName", device_name)):
        if field in body and body[field] != expected:
            raise MalformedPayload(f"'{field}' {body[field]!r} does not match the topic")
    return {
        "product_key": product_key,
        "device_name": device_name,
        "kind": kind,
        "module": "default",
        "version": None,
        "step": None,
        "desc": None,
        "message_id": None,
        "event_time": now_ms,
    }
