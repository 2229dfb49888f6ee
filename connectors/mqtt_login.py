"""How otaflow's MQTT connectors log in: user name, password and TLS from the URL.

``OTAFLOW_MQTT_URL=mqtts://user:password@host:8883`` (``OTAFLOW_MQTT_CA_FILE`` for a
private CA); with the broker otaflow provisions, the user is its service identity
(``OTAFLOW_MQTT_SERVICE_USER``/``..._PASSWORD`` in docs/edge.md), which may use every
topic while a device may use only its own.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

from otaflow.config import MqttAddress


def tls_context(address: MqttAddress) -> ssl.SSLContext | None:
    """The TLS context for ``address`` (None for plain MQTT); the host name is checked."""
    if not address.tls:
        return None
    return ssl.create_default_context(cafile=address.ca_file)


def configure_paho(client: mqtt.Client, address: MqttAddress) -> None:
    """Credentials and TLS of ``address`` on a paho client, before it connects."""
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    context = tls_context(address)
    if context is not None:
        client.tls_set_context(context)
