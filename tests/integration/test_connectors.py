"""The MQTT <-> Kafka connectors against the real dev-stack Kafka and Mosquitto.

Every test gets its own topic prefix, app id (so its own MQTT share group and Kafka
consumer group) and product key, so tests never see each other's records. Connectors
run in threads with a stop Event; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from connectors.device_json import MalformedPayload
from connectors.egress import EgressConnector
from connectors.ingress import IngressConnector, producer_config
from connectors.ota_messages import parse_report
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.dev import devstack
from otaflow.device_keys import device_key
from otaflow.kafka_partitions import partition_for
from otaflow.topics import DEAD_LETTERS, DEVICE_REPORTS, NOTIFICATIONS
from tests.integration.conftest import free_port
from tests.integration.connector_support import (
    PrivateMosquitto,
    TopicReader,
    UpgradeSubscriber,
    make_settings,
    mqtt_client,
    publish_all,
    running,
    signer,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> devstack.DevStack:
    return devstack.up()


# --------------------------------------------------------------------------- ingress


def valid_reports(product_key: str, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        dn = f"dev-{i % 50}"
        if i % 3 == 0:
            params: dict[str, Any] = {"version": f"1.0.{i}"}
            if i % 2:
                params["module"] = "MCU"
            out.append(
                (
                    f"/ota/device/inform/{product_key}/{dn}",
                    json.dumps({"id": str(i), "params": params}).encode(),
                )
            )
        elif i % 3 == 1:
            step: int | str = i % 100 + 1 if i % 2 else str(-(i % 4) - 1)
            out.append(
                (
                    f"/ota/device/progress/{product_key}/{dn}",
                    json.dumps({"id": str(i), "params": {"step": step, "desc": f"d{i}"}}).encode(),
                )
            )
        else:
            out.append(
                (
                    f"/sys/{product_key}/{dn}/thing/ota/firmware/get",
                    json.dumps(
                        {
                            "id": str(i),
                            "version": "1.0",
                            "params": {"module": "MCU"},
                            "method": "thing.ota.firmware.get",
                        }
                    ).encode(),
                )
            )
    return out


def malformed_payload(rng: random.Random, i: int) -> bytes:
    """A payload parse_report refuses, of one of many shapes, unique by ``i``."""
    shape = i % 10
    if shape == 0:  # not UTF-8
        return b"\xff" + f"{i}".encode() + rng.randbytes(rng.randrange(0, 40))
    if shape == 1:  # not JSON
        return f"garbage {i} ".encode() + bytes(rng.randrange(32, 127) for _ in range(10))
    if shape == 2:  # JSON, not an object
        return json.dumps(rng.choice([[i], i, f"s{i}", [None, i, {"a": i}]])).encode()
    if shape == 3:  # no params (and no id, which a firmware/get must have)
        return json.dumps({"n": i, "version": "1.0"}).encode()
    if shape == 4:  # params of the wrong type
        return json.dumps({"id": str(i), "params": rng.choice([[i], f"p{i}", i, True])}).encode()
    if shape == 5:  # version / step / module of the wrong type
        return json.dumps(
            {
                "id": str(i),
                "params": {
                    "version": rng.choice([i, [str(i)], {"v": i}, None, 1.5]),
                    "step": rng.choice([True, [i], {"s": i}, 2.5, None]),
                    "module": rng.choice([i, [str(i)], {"m": i}, True, ""]),
                    "n": i,
                },
            }
        ).encode()
    if shape == 6:  # step out of range
        return json.dumps(
            {"params": {"step": rng.choice([101 + i, -5 - i, str(200 + i)]), "version": i}}
        ).encode()
    if shape == 7:  # truncated JSON
        text = json.dumps({"id": str(i), "params": {"version": f"1.{i}", "step": "5"}})
        return text[: rng.randrange(1, len(text) - 1)].encode() + b"\x00" + str(i).encode()
    if shape == 8:  # nested too deeply
        depth = rng.randrange(3000, 20000)
        return b"[" * depth + str(i).encode() + b"]" * depth
    return json.dumps(
        {
            "id": rng.choice([True, [i], {"x": i}, 1.5]),
            "n": i,  # bad id
            "params": {"version": "1", "step": 1},
        }
    ).encode()


def test_ingress_forwards_valid_reports_keyed_by_device(stack: devstack.DevStack) -> None:
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    reports = valid_reports(pk, 1000)
    expected = {
        str(i): parse_report(topic, payload, 0) for i, (topic, payload) in enumerate(reports)
    }
    ingress = IngressConnector(
        settings, client_id=f"{settings.app_id}-in", session_expiry_s=60, leave_on_stop=True
    )
    reader = TopicReader(settings, DEVICE_REPORTS)
    try:
        with running(ingress.run):
            assert ingress.ready.wait(15), "ingress never subscribed"
            started = time.monotonic()
            publish_all(settings.mqtt, reports)

            def mine(messages: list[Message]) -> list[Message]:
                return [m for m in messages if (m.key() or b"").startswith(pk.encode())]

            reader.read(lambda ms: len(mine(ms)) >= 1000, 60, "1,000 reports")
            elapsed = time.monotonic() - started
            print(f"\ningress: 1,000 reports MQTT -> Kafka in {elapsed:.2f}s")
        got = mine(reader.read_to_end())
    finally:
        reader.close()
    assert len(got) == 1000, "reports lost or duplicated"
    seen = set()
    for msg in got:
        record = codec().decode_as("DeviceReport", msg.value())
        key = device_key(record["product_key"], record["device_name"])
        assert msg.key() == key.encode()
        assert msg.partition() == partition_for(key.encode(), settings.partitions)
        want = expected[record["message_id"]]
        assert record == want | {"event_time": record["event_time"]}
        assert abs(record["event_time"] - time.time() * 1000) < 120_000
        seen.add(record["message_id"])
    assert seen == set(expected)
    assert {codec().decode_as("DeviceReport", m.value())["kind"] for m in got} == {
        "VERSION",
        "PROGRESS",
        "FIRMWARE_GET",
    }


def test_ingress_dead_letters_malformed_payloads_and_keeps_going(
    stack: devstack.DevStack,
) -> None:
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    rng = random.Random(1234)
    topics = [
        f"/ota/device/inform/{pk}/dev1",
        f"/ota/device/progress/{pk}/dev2",
        f"/sys/{pk}/dev3/thing/ota/firmware/get",
    ]
    bad = [(topics[i % 3], malformed_payload(rng, i)) for i in range(10_000)]
    for topic, payload in bad:  # the test's own premise
        with pytest.raises(MalformedPayload):
            parse_report(topic, payload, 0)
    assert len({p for _, p in bad}) == len(bad)
    ingress = IngressConnector(
        settings, client_id=f"{settings.app_id}-in", session_expiry_s=60, leave_on_stop=True
    )
    dead = TopicReader(settings, DEAD_LETTERS)
    reports = TopicReader(settings, DEVICE_REPORTS)

    def mine(messages: list[Message]) -> list[Message]:
        return [m for m in messages if pk in (m.key() or b"").decode()]

    try:
        with running(ingress.run) as thread:
            assert ingress.ready.wait(15), "ingress never subscribed"
            started = time.monotonic()
            publish_all(settings.mqtt, bad)
            dead.read(lambda ms: len(mine(ms)) >= 10_000, 120, "10,000 dead letters")
            elapsed = time.monotonic() - started
            print(f"\ningress: 10,000 malformed payloads -> dead letters in {elapsed:.2f}s")
            assert thread.is_alive()
            publish_all(settings.mqtt, [(topics[0], b'{"id":"ok","params":{"version":"9.9"}}')])
            got = reports.read(lambda ms: len(mine(ms)) >= 1, 30, "the valid report")
            assert codec().decode_as("DeviceReport", mine(got)[0].value())["version"] == "9.9"
            assert thread.is_alive()
        letters = mine(dead.read_to_end())
    finally:
        dead.close()
        reports.close()
    assert len(letters) == 10_000
    published = dict((p, t) for t, p in bad)
    raws = set()
    for msg in letters:
        letter = codec().decode_as("DeadLetter", msg.value())
        assert letter["raw"] in published
        assert letter["source"] == published[letter["raw"]] == (msg.key() or b"").decode()
        assert letter["reason"]
        raws.add(letter["raw"])
    assert len(raws) == 10_000


def report_ids(messages: list[Message], product_key: str) -> list[str]:
    return [
        codec().decode_as("DeviceReport", m.value())["message_id"]
        for m in messages
        if (m.key() or b"").startswith(product_key.encode() + b"/")
    ]


def test_ingress_acknowledges_only_what_kafka_has(stack: devstack.DevStack) -> None:
    """Reports taken while Kafka is unreachable stay unacknowledged in the MQTT session
    and reach Kafka through the next connector with the same client id."""
    settings = make_settings(stack)
    no_kafka = dataclasses.replace(settings, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    pk = f"pk{uuid.uuid4().hex[:8]}"
    reports = valid_reports(pk, 200)
    client_id = f"{settings.app_id}-in"
    first = IngressConnector(no_kafka, client_id=client_id, session_expiry_s=60, drain_timeout_s=1)
    with running(first.run):
        assert first.ready.wait(15), "ingress never subscribed"
        publish_all(settings.mqtt, reports)
        wait_for(lambda: first.pending == 200, 30, "the first connector to hold all 200")
        assert first.forwarded == 0
    second = IngressConnector(
        settings, client_id=client_id, session_expiry_s=60, leave_on_stop=True
    )
    reader = TopicReader(settings, DEVICE_REPORTS)
    try:
        with running(second.run):
            reader.read(
                lambda ms: len(set(report_ids(ms, pk))) >= 200, 60, "the 200 reports, redelivered"
            )
    finally:
        reader.close()
    assert set(report_ids(reader.messages, pk)) == {str(i) for i in range(200)}


def test_ingress_reconnects_after_the_broker_restarts(
    stack: devstack.DevStack,
    tmp_path: Path,
) -> None:
    broker = PrivateMosquitto(tmp_path)
    broker.start()
    settings = make_settings(stack, broker.address)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    reports = valid_reports(pk, 1000)
    ingress = IngressConnector(
        settings, client_id=f"{settings.app_id}-in", session_expiry_s=60, leave_on_stop=True
    )
    reader = TopicReader(settings, DEVICE_REPORTS)
    try:
        with running(ingress.run):
            assert ingress.ready.wait(15), "ingress never subscribed"
            publish_all(broker.address, reports[:500])
            reader.read(lambda ms: len(report_ids(ms, pk)) >= 500, 60, "the first 500")
            broker.stop()
            wait_for(lambda: not ingress.ready.is_set(), 15, "ingress to notice the loss")
            broker.start()
            assert ingress.ready.wait(30), "ingress did not subscribe again"
            publish_all(broker.address, reports[500:])
            reader.read(lambda ms: len(set(report_ids(ms, pk))) >= 1000, 60, "all 1,000")
    finally:
        reader.close()
        broker.stop()
    assert set(report_ids(reader.messages, pk)) == {str(i) for i in range(1000)}


# --------------------------------------------------------------------------- egress


def produce_notifications(
    settings: Settings, pk: str, start: int, n: int, producer: Producer | None = None
) -> None:
    producer = producer or Producer(producer_config(settings, f"test-{uuid.uuid4().hex[:8]}"))
    topic = NOTIFICATIONS.full_name(settings)
    for i in range(start, start + n):
        dn = f"dev-{i % 500}"
        mqtt_download = i % 10 == 0
        firmware = {
            "firmware_id": f"fw-{i % 3}",
            "module": "MCU" if i % 4 == 0 else "default",
            "version": "2.0.0",
            "src_version": None,
            "is_diff": False,
            "size": 1024 + i,
            "sign_method": "Md5" if i % 5 == 0 else "SHA256",
            "sign": f"{i:064x}",
            "md5": None,
            "file_path": f"{pk}/fw-{i % 3}.bin",
            "download_protocol": "MQTT" if mqtt_download else "HTTPS",
        }
        record = {
            "product_key": pk,
            "device_name": dn,
            "kind": "PUSH",
            "reply_to": None,
            "task_id": f"task-{i}",
            "batch_id": "b1",
            "firmware": firmware,
            "ext_data": {"wave": str(i % 2)},
            "event_time": 1_700_000_000_000,  # released together: no pacing between them
        }
        key = device_key(pk, dn).encode()
        while True:
            try:
                producer.produce(topic, codec().encode("Notification", record), key)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0


def committed_at_end(settings: Settings, group_id: str) -> bool:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        topic = NOTIFICATIONS.full_name(settings)
        tps = [TopicPartition(topic, p) for p in range(NOTIFICATIONS.partition_count(settings))]
        committed = consumer.committed(tps, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return all(
            c.offset == end or (end == 0 and c.offset < 0)
            for c, end in zip(committed, ends, strict=True)
        )
    finally:
        consumer.close()


def test_egress_publishes_every_notification(stack: devstack.DevStack) -> None:
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    produce_notifications(settings, pk, 0, 5000)
    # One record that is not a Notification: dead-lettered, and offsets still advance.
    bad = Producer(producer_config(settings, "test-bad"))
    bad.produce(NOTIFICATIONS.full_name(settings), b"not an avro record", b"x/y")
    assert bad.flush(10) == 0
    subscriber = UpgradeSubscriber(pk)
    egress = EgressConnector(settings, signer, client_id=f"{settings.app_id}-out")
    dead = TopicReader(settings, DEAD_LETTERS)
    try:
        with mqtt_client(settings.mqtt) as client:
            subscriber.attach(client)
            with running(egress.run):
                started = time.monotonic()
                wait_for(lambda: subscriber.count() >= 5000, 120, "5,000 task ids")
                elapsed = time.monotonic() - started
                print(
                    f"\negress: 5,000 notifications Kafka -> MQTT in {elapsed:.2f}s "
                    f"({5000 / elapsed:,.0f}/s, consumer start included)"
                )
                wait_for(
                    lambda: committed_at_end(settings, egress.group_id),
                    30,
                    "offsets committed to the end",
                )
                letters = dead.read(lambda ms: len(ms) >= 1, 30, "the dead letter")
    finally:
        dead.close()
    assert subscriber.task_ids == {f"task-{i}" for i in range(5000)}
    letter = codec().decode_as("DeadLetter", letters[0].value())
    assert letter["raw"] == b"not an avro record"
    assert letter["source"].startswith(NOTIFICATIONS.full_name(settings) + "/")
    topic, message = subscriber.messages["task-1"]
    assert topic == f"/ota/device/upgrade/{pk}/dev-1"
    assert message == {
        "code": "1000",
        "id": 1_700_000_000_000,  # the release instant
        "message": "success",
        "data": {
            "size": 1025,
            "version": "2.0.0",
            "url": signer(f"{pk}/fw-1.bin"),
            "signMethod": "SHA256",
            "sign": f"{1:064x}",
            "extData": {"wave": "1"},
            "taskId": "task-1",
        },
    }
    mqtt_data = subscriber.messages["task-10"][1]["data"]
    assert mqtt_data["dProtocol"] == "mqtt" and "url" not in mqtt_data
    assert subscriber.messages["task-5"][1]["data"]["md5"] == f"{5:064x}"


# --------------------------------------------------------------------------- broker loss


def test_egress_survives_the_broker_going_away(
    stack: devstack.DevStack,
    tmp_path: Path,
) -> None:
    broker = PrivateMosquitto(tmp_path)
    broker.start()
    settings = make_settings(stack, broker.address)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    produce_notifications(settings, pk, 0, 2500)
    subscriber = UpgradeSubscriber(pk)
    egress = EgressConnector(
        settings, signer, client_id=f"{settings.app_id}-out", max_in_flight=500
    )
    try:
        # A persistent session: what is published while it reconnects waits for it.
        with mqtt_client(
            broker.address, client_id=f"{settings.app_id}-sub", clean_session=False
        ) as client:
            subscriber.attach(client)
            with running(egress.run):
                wait_for(lambda: subscriber.count() >= 1000, 60, "the first 1,000 offers")
                broker.stop()
                wait_for(lambda: not egress.ready.is_set(), 15, "egress to notice the loss")
                # Written while the broker is away: egress takes up to its bound, then pauses.
                produce_notifications(settings, pk, 2500, 2500)
                wait_for(lambda: egress.paused, 30, "egress to pause at its in-flight bound")
                assert subscriber.count() < 5000
                broker.start()
                wait_for(lambda: subscriber.count() >= 5000, 120, "all 5,000 task ids")
                wait_for(
                    lambda: committed_at_end(settings, egress.group_id),
                    30,
                    "offsets committed to the end",
                )
                assert egress.peak_in_flight <= 500 + 50
                print(
                    f"\negress across a broker restart: {subscriber.received} offers for "
                    f"5,000 tasks, peak in flight {egress.peak_in_flight}"
                )
    finally:
        broker.stop()
    assert subscriber.task_ids == {f"task-{i}" for i in range(5000)}


def test_egress_scale_out_publishes_each_offer_once(stack: devstack.DevStack) -> None:
    """A second connector joining the group while offers are in flight takes partitions
    over without duplicates: the first lets its in-flight offers be acknowledged and
    commits them before it gives the partitions up."""
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    total, step = 40_000, 1000
    subscriber = UpgradeSubscriber(pk)
    first = EgressConnector(settings, signer, client_id=f"{settings.app_id}-out1")
    second = EgressConnector(settings, signer, client_id=f"{settings.app_id}-out2")
    produced = threading.Event()

    def produce_steadily() -> None:  # in bursts, faster than one connector: a full window
        producer = Producer(producer_config(settings, "test-steady"))
        for start in range(0, total, step):
            produce_notifications(settings, pk, start, step, producer)
            produced.wait(0.05)
        produced.set()

    with mqtt_client(settings.mqtt) as client:
        subscriber.attach(client)
        with running(first.run):
            producer = threading.Thread(target=produce_steadily, daemon=True)
            producer.start()
            wait_for(lambda: subscriber.count() >= 500, 60, "the first 500 offers")
            with running(second.run):
                wait_for(lambda: second.published > 0, 60, "the second connector to publish")
                assert not produced.is_set(), "production ended before the rebalance"
                wait_for(lambda: subscriber.count() >= total, 120, "every task id")
                producer.join(30)
                wait_for(
                    lambda: committed_at_end(settings, first.group_id),
                    30,
                    "offsets committed to the end",
                )
    assert subscriber.task_ids == {f"task-{i}" for i in range(total)}
    assert first.published + second.published == total
    assert subscriber.received == total, f"{subscriber.received - total} duplicates"
