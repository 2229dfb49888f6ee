"""Device credentials the platform's way: one device, one secret.

A device secret is derived, never stored: ``hex(HMAC-SHA256(device_key, "{pk}&{dn}"))``
cut to 32 characters, where ``device_key`` is the deployment's server key
(``OTAFLOW_DEVICE_KEY``). ``RegisterDevice`` hands it out and the broker's auth plugin
(``otaflow/edge/otaflow_auth.c``) recomputes it from the user name, so the broker
needs no database of devices.

Revocation: the broker lets in only the devices of the registry
(``otaflow.edge.registry_sync`` keeps its list of ``pk&dn``), so deleting a device
revokes its secret. Registering the same name again gives the same secret back (it
is a function of the name); rotating ``OTAFLOW_DEVICE_KEY`` revokes every secret.

The MQTT login a device makes (what ``aliyun-iot-linkkit`` sends unchanged)::

    client id  {pk}&{dn}|securemode=3,signmethod=hmacsha1,timestamp=T|
    user name  {dn}&{pk}
    password   hex(HMAC-<signmethod>(secret,
                   "clientId{pk}&{dn}deviceName{dn}productKey{pk}timestamp{T}"))
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

SECRET_CHARS = 32
SIGN_METHODS = {"hmacsha1": hashlib.sha1, "hmacsha256": hashlib.sha256, "hmacmd5": hashlib.md5}


def device_secret(device_key: str, product_key: str, device_name: str) -> str:
    """The device's secret under the deployment's server key."""
    digest = hmac.new(
        device_key.encode(), f"{product_key}&{device_name}".encode(), hashlib.sha256
    ).hexdigest()
    return digest[:SECRET_CHARS]


@dataclass(frozen=True)
class MqttLogin:
    client_id: str
    username: str
    password: str


def device_login(
    product_key: str,
    device_name: str,
    secret: str,
    *,
    sign_method: str = "hmacsha1",
    timestamp: int | None = None,
    secure_mode: int = 3,
) -> MqttLogin:
    """The client id, user name and password a device connects with."""
    digest = SIGN_METHODS[sign_method]
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signed_id = f"{product_key}&{device_name}"
    content = f"clientId{signed_id}deviceName{device_name}productKey{product_key}timestamp{stamp}"
    password = hmac.new(secret.encode(), content.encode(), digest).hexdigest()
    client_id = f"{signed_id}|securemode={secure_mode},signmethod={sign_method},timestamp={stamp}|"
    return MqttLogin(client_id, f"{device_name}&{product_key}", password)
