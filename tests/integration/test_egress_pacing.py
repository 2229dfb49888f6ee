"""An egress that comes back to a backlog sends it at the rate it was released at
(issue 16: 870-939 offers/s were measured after an egress restart at 100/s configured)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Producer

from connectors.egress import EgressConnector
from connectors.ingress import producer_config
from otaflow.codec import codec
from otaflow.dev import devstack
from otaflow.device_keys import device_key
from otaflow.topics import NOTIFICATIONS
from tests.integration.connector_support import (
    UpgradeSubscriber,
    make_settings,
    mqtt_client,
    running,
    signer,
    wait_for,
)

pytestmark = pytest.mark.integration

PER_SECOND = 100  # the rate the notifications were released at
SECONDS = 10


class TimedSubscriber(UpgradeSubscriber):
    """Also notes when each offer arrived (monotonic seconds)."""

    def __init__(self, product_key: str) -> None:
        super().__init__(product_key)
        self.arrivals: list[float] = []
        self._times_lock = threading.Lock()

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._times_lock:
            self.arrivals.append(time.monotonic())
        super().on_message(client, userdata, msg)


def released_notification(pk: str, i: int, released_at: int) -> dict[str, Any]:
    return {
        "product_key": pk,
        "device_name": f"dev-{i}",
        "kind": "PUSH",
        "reply_to": None,
        "task_id": f"task-{i}",
        "batch_id": "b1",
        "firmware": {
            "firmware_id": "fw-1",
            "version": "2.0",
            "module": "default",
            "size": 1024,
            "sign_method": "SHA256",
            "sign": "ab" * 32,
            "md5": None,
            "file_path": f"{pk}/fw-1.bin",
            "download_protocol": "HTTPS",
        },
        "ext_data": {},
        "event_time": released_at,
    }


def test_egress_back_after_a_stall_sends_the_backlog_at_its_release_rate(
    stack: devstack.DevStack,
) -> None:
    """The rate agent released 1,000 offers at 100/s a minute ago while no egress ran: the
    egress that starts now sends them at 100/s (within its 200 ms tolerance), not at once."""
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    total = PER_SECOND * SECONDS
    start = int(time.time() * 1000) - 60_000
    producer = Producer(producer_config(settings, f"test-{uuid.uuid4().hex[:8]}"))
    for i in range(total):
        record = released_notification(pk, i, start + i * 1000 // PER_SECOND)
        producer.produce(
            NOTIFICATIONS.full_name(settings),
            codec().encode("Notification", record),
            device_key(pk, f"dev-{i}").encode(),
        )
    assert producer.flush(30) == 0
    subscriber = TimedSubscriber(pk)
    egress = EgressConnector(settings, signer, client_id=f"{settings.app_id}-out")
    with mqtt_client(settings.mqtt) as client:
        subscriber.attach(client)
        with running(egress.run):
            wait_for(lambda: subscriber.count() >= total, 60, "every offer")
    assert subscriber.task_ids == {f"task-{i}" for i in range(total)}
    arrivals = sorted(subscriber.arrivals)
    span = arrivals[-1] - arrivals[0]
    per_second = Counter(int(t - arrivals[0]) for t in arrivals)
    print(f"\n{total} offers in {span:.1f} s, at most {max(per_second.values())} in a second")
    assert span >= SECONDS - 1.5  # the old egress: all of them in well under a second
    # One second of sending holds at most 1.2 s of releases (the tolerance), plus jitter.
    assert max(per_second.values()) <= PER_SECOND * 1.2 + 10, sorted(per_second.items())


def test_offers_answering_a_burst_of_pulls_keep_their_own_limit(
    stack: devstack.DevStack,
) -> None:
    """A fleet back from a broker restart asks at once (1,800 pulls in one second were
    measured): the offers answering them go out at the egress's pull limit."""
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    total, per_minute = 500, 3_000  # 50 a second: 10 s
    asked_at = int(time.time() * 1000)
    producer = Producer(producer_config(settings, f"test-{uuid.uuid4().hex[:8]}"))
    for i in range(total):
        record = released_notification(pk, i, asked_at) | {
            "kind": "PULL_REPLY",
            "reply_to": f"get-{i}",
        }
        producer.produce(
            NOTIFICATIONS.full_name(settings),
            codec().encode("Notification", record),
            device_key(pk, f"dev-{i}").encode(),
        )
    assert producer.flush(30) == 0
    subscriber = TimedSubscriber(pk)
    subscriber.filter = f"/sys/{pk}/+/thing/ota/firmware/get_reply"
    egress = EgressConnector(
        settings,
        signer,
        client_id=f"{settings.app_id}-out",
        pull_offers_per_minute=per_minute,
    )
    with mqtt_client(settings.mqtt) as client:
        subscriber.attach(client)
        with running(egress.run):
            wait_for(lambda: subscriber.count() >= total, 60, "every pull answered")
    arrivals = sorted(subscriber.arrivals)
    per_second = Counter(int(t - arrivals[0]) for t in arrivals)
    print(f"\n{total} pull offers in {arrivals[-1] - arrivals[0]:.1f} s")
    assert arrivals[-1] - arrivals[0] >= total / (per_minute / 60) - 1.5
    assert max(per_second.values()) <= per_minute / 60 * 1.2 + 5, sorted(per_second.items())
