"""How the tests' MQTT clients log in to the broker otaflow provisions (docs/edge.md).

The dev broker takes no anonymous client: a client that stands for one device logs in
as that device, the platform's way (client id, ``dn&pk``, HMAC over its DeviceSecret,
derived from the dev device key); a client that watches or feeds many devices at once
(an observer of every offer, a harness publishing reports for a whole product, a
malformed message on a topic no device owns) logs in as otaflow's service user, the
login of the address it is given.
"""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt

from otaflow.config import DEV_DEVICE_KEY, MqttAddress
from otaflow.edge.credentials import device_login, device_secret


def device_client(
    product_key: str, device_name: str, *, device_key: str = DEV_DEVICE_KEY, **kwargs: object
) -> mqtt.Client:
    """A paho client that connects as the device (its own topics only)."""
    login = device_login(
        product_key, device_name, device_secret(device_key, product_key, device_name)
    )
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=login.client_id, **kwargs)  # type: ignore[arg-type]
    client.username_pw_set(login.username, login.password)
    return client


def service_client(
    address: MqttAddress, client_id: str | None = None, **kwargs: object
) -> mqtt.Client:
    """A paho client with the address's login (the service user on the dev broker)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"test-{uuid.uuid4().hex[:12]}",
        **kwargs,  # type: ignore[arg-type]
    )
    log_in(client, address)
    return client


def log_in(client: mqtt.Client, address: MqttAddress) -> None:
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
