"""Device identity and presence, the pure parts: secrets, logins, URLs, status messages."""

from __future__ import annotations

import hmac
from dataclasses import replace
from pathlib import Path

import pytest

from connectors.device_json import MalformedPayload
from connectors.ingress import IngressConnector
from connectors.presence import parse_status
from otaflow import config
from otaflow.config import MqttAddress, Settings
from otaflow.control.common import DictStore
from otaflow.control.plane import ControlPlane
from otaflow.edge.credentials import device_login, device_secret
from otaflow.edge.registry_sync import RegistrySync, device_of_key

NOW = 1_800_000_000_000


def plane(device_key: str) -> tuple[ControlPlane, DictStore]:
    store = DictStore()
    return ControlPlane(store, lambda url: url, device_key=device_key), store


def call(p: ControlPlane, store: DictStore, action: str, **params: str) -> dict[str, object]:
    outcome = p.handle(action, params, f"req-{action}-{sorted(params.items())}", NOW)
    store.apply(outcome.writes)
    return {**(outcome.data or {}), **outcome.top}


def test_register_device_hands_out_the_secret_the_broker_derives() -> None:
    p, store = plane("server-key-1")
    pk = str(call(p, store, "CreateProduct", ProductName="prod_one", NodeType="0")["ProductKey"])
    secret = call(p, store, "RegisterDevice", ProductKey=pk, DeviceName="dev0001")["DeviceSecret"]
    assert secret == device_secret("server-key-1", pk, "dev0001")
    assert len(str(secret)) == 32
    assert secret != device_secret("server-key-2", pk, "dev0001")
    assert secret != device_secret("server-key-1", pk, "dev0002")


def test_delete_device_removes_it_and_tells_its_partition() -> None:
    p, store = plane("k")
    pk = str(call(p, store, "CreateProduct", ProductName="prod_one", NodeType="0")["ProductKey"])
    call(p, store, "RegisterDevice", ProductKey=pk, DeviceName="dev0001")
    outcome = p.handle("DeleteDevice", {"ProductKey": pk, "DeviceName": "dev0001"}, "r-del", NOW)
    assert [(i.schema, i.record["action"]) for i in outcome.device_items] == [
        ("DeviceRegistration", "DELETE")
    ]
    store.apply(outcome.writes)
    assert store.get(f"device/{pk}/dev0001") is None
    with pytest.raises(Exception, match="does not exist"):
        p.handle("DeleteDevice", {"ProductKey": pk, "DeviceName": "dev0001"}, "r-del2", NOW)


@pytest.mark.parametrize(
    ("method", "digest"),
    [("hmacsha1", "sha1"), ("hmacsha256", "sha256"), ("hmacmd5", "md5")],
)
def test_device_login_is_the_platform_scheme(method: str, digest: str) -> None:
    login = device_login("a1pk", "dev1", "s3cret", sign_method=method, timestamp=1700000000)
    assert login.username == "dev1&a1pk"
    assert login.client_id == f"a1pk&dev1|securemode=3,signmethod={method},timestamp=1700000000|"
    content = b"clientIda1pk&dev1deviceNamedev1productKeya1pktimestamp1700000000"
    assert login.password == hmac.new(b"s3cret", content, digest).hexdigest()


def test_mqtt_url_keeps_user_password_and_tls() -> None:
    plain = MqttAddress.parse("mqtt://127.0.0.1:11883")
    assert (plain.host, plain.port, plain.username, plain.tls) == ("127.0.0.1", 11883, None, False)
    secure = MqttAddress.parse("mqtts://svc:p%40ss@broker.example:8883", ca_file="/ca.pem")
    assert (secure.username, secure.password, secure.tls, secure.ca_file) == (
        "svc",
        "p@ss",
        True,
        "/ca.pem",
    )
    assert MqttAddress.parse("mqtts://broker.example").port == 8883
    assert "p@ss" not in secure.url and "p%40ss" not in secure.url and "***" in secure.url
    assert "p@ss" not in repr(secure)
    assert MqttAddress.parse(secure.connect_url, ca_file="/ca.pem") == secure
    assert plain.connect_url == "mqtt://127.0.0.1:11883"


@pytest.mark.parametrize(
    "url",
    [
        "http://broker:1883",
        "mqtt://broker:1883/some/path",
        "mqtt://broker:1883?tls=1",
        "mqtt://broker:1883#frag",
        "mqtt://broker:notaport",
    ],
)
def test_mqtt_url_parts_otaflow_cannot_use_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="MQTT URL"):
        MqttAddress.parse(url)


def test_a_ca_file_without_tls_is_refused() -> None:
    with pytest.raises(ValueError, match="mqtts"):
        MqttAddress.parse("mqtt://broker:1883", ca_file="/ca.pem")


def test_status_messages_become_presence_reports() -> None:
    online = parse_status(
        "/as/mqtt/status/a1pk/dev1",
        b'{"status":"online","productKey":"a1pk","deviceName":"dev1","lastTime":"x"}',
        NOW,
    )
    assert (online["kind"], online["product_key"], online["device_name"], online["event_time"]) == (
        "ONLINE",
        "a1pk",
        "dev1",
        NOW,
    )
    offline = parse_status("/as/mqtt/status/a1pk/dev1", b'{"status":"offline"}', NOW)
    assert offline["kind"] == "OFFLINE"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("/as/mqtt/status/a1pk", b'{"status":"online"}', "not a device status topic"),
        ("/as/mqtt/status/a1pk/dev1", b'{"status":"away"}', "'status' must be"),
        ("/as/mqtt/status/a1pk/dev1", b"[1]", "JSON object"),
        ("/as/mqtt/status/a1pk/dev1", b'{"status":"online","deviceName":"x"}', "does not match"),
    ],
)
def test_malformed_status_messages_are_refused(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedPayload, match=reason):
        parse_status(topic, payload, NOW)


def test_registry_sync_follows_registrations_and_deletions(tmp_path: object) -> None:
    assert device_of_key(b"device/a1pk/dev1") == "a1pk&dev1"
    assert device_of_key(b"product/a1pk") is None
    assert device_of_key(b"device/a1pk") is None
    sync = RegistrySync.__new__(RegistrySync)
    sync.devices = set()
    assert sync.apply(b"device/a1pk/dev1", b"\xc3\x01record")
    assert not sync.apply(b"device/a1pk/dev1", b"\xc3\x01record")  # no change
    assert not sync.apply(b"iotid/xyz", b"\xc3\x01record")
    assert sync.apply(b"device/a1pk/dev1", None)  # tombstone: deleted
    assert sync.devices == set()


def test_ingress_subscribes_to_status_messages_only_with_presence() -> None:
    off = IngressConnector(Settings(), client_id="x")
    on = IngressConnector(replace(Settings(), presence=True), client_id="x")
    assert not any("/as/mqtt/status/" in s for s in off.subscriptions)
    assert [s for s in on.subscriptions if s not in off.subscriptions] == [
        "$share/otaflow-ingress//as/mqtt/status/+/+"
    ]


def test_otaflow_logs_in_to_the_dev_broker_as_the_service_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTAFLOW_MQTT_URL", "OTAFLOW_MQTT_SERVICE_USER", "OTAFLOW_MQTT_SERVICE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTAFLOW_MQTT_PORT", "12345")
    mqtt = config.load().mqtt
    assert (mqtt.host, mqtt.port) == ("127.0.0.1", 12345)
    assert (mqtt.username, mqtt.password) == (config.DEV_SERVICE_USER, config.DEV_SERVICE_PASSWORD)
    assert "***" in mqtt.url and config.DEV_SERVICE_PASSWORD not in mqtt.url


def test_the_dev_broker_takes_no_anonymous_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from otaflow.dev import devstack
    from otaflow.edge import broker as edge_broker

    plugin = tmp_path / "otaflow_auth-x.so"
    plugin.write_bytes(b"\x7fELF")
    monkeypatch.setattr(edge_broker, "build_plugin", lambda: plugin)
    monkeypatch.setenv("OTAFLOW_CACHE", str(tmp_path))
    monkeypatch.setenv("OTAFLOW_MQTT_AUTH_PORT", "12346")
    conf = devstack._mosquitto_conf("127.0.0.1", 12345)
    assert "allow_anonymous true" not in conf
    listeners = conf.split("listener ")[1:]
    assert [part.split("\n", 1)[0] for part in listeners] == ["12345 127.0.0.1", "12346 127.0.0.1"]
    shared, registry = listeners
    assert "allow_anonymous false" in shared and "allow_anonymous false" in registry
    assert f"plugin {plugin}\n" in shared and "plugin_opt_devices_file" not in shared
    # Its own copy of the plugin: one file loaded twice would share its globals.
    assert f"plugin {tmp_path / 'otaflow_auth-x-registry.so'}\n" in registry
    assert (tmp_path / "otaflow_auth-x-registry.so").read_bytes() == b"\x7fELF"
    assert "plugin_opt_devices_file" in registry
