"""The key of every device-scoped record, ``productKey/deviceName``, and back.

Which Kafka partition a key lives on is ``otaflow.kafka_partitions``.
"""

from __future__ import annotations


def device_key(product_key: str, device_name: str) -> str:
    """The key of every device-scoped record: ``productKey/deviceName``.

    '/' can appear in neither part on the platform, so the key splits back unambiguously.
    """
    return f"{product_key}/{device_name}"


def split_device_key(key: str) -> tuple[str, str]:
    product_key, _, device_name = key.partition("/")
    return product_key, device_name
