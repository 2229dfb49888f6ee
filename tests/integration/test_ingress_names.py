"""Issue 16: device names outside the platform's rule reach the dead-letter topic
through the real ingress and Mosquitto (before: a 60,000-character or non-ASCII name
became a device, and a name with '/' vanished without a trace)."""

from __future__ import annotations

import uuid

import pytest

from connectors.ingress import IngressConnector
from otaflow.codec import codec
from otaflow.dev import devstack
from otaflow.topics import DEAD_LETTERS, DEVICE_REPORTS
from tests.integration.connector_support import TopicReader, make_settings, publish_all, running

pytestmark = pytest.mark.integration


def test_ingress_dead_letters_names_outside_the_platform_rule(stack: devstack.DevStack) -> None:
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    version = b'{"id": "1", "params": {"version": "1.0"}}'
    bad = [
        f"/ota/device/inform/{pk}/" + "x" * 60_000,
        f"/ota/device/inform/{pk}/dévice-01",
        f"/ota/device/inform/{pk}/dev/ice",
        f"/ota/device/progress/{pk}/abc",
        f"/sys/{pk}/dev/ice/thing/ota/firmware/get",
    ]
    good = f"/ota/device/inform/{pk}/dev-ok-1"
    ingress = IngressConnector(
        settings, client_id=f"{settings.app_id}-in", session_expiry_s=60, leave_on_stop=True
    )
    dead = TopicReader(settings, DEAD_LETTERS)
    reports = TopicReader(settings, DEVICE_REPORTS)
    try:
        with running(ingress.run):
            assert ingress.ready.wait(15), "ingress never subscribed"
            publish_all(settings.mqtt, [(t, version) for t in [*bad, good]])
            letters = dead.read(
                lambda ms: sum(pk in (m.key() or b"").decode() for m in ms) >= len(bad),
                60,
                "a dead letter per bad name",
            )
            got = reports.read(
                lambda ms: any(pk in (m.key() or b"").decode() for m in ms), 30, "the good one"
            )
    finally:
        dead.close()
        reports.close()
    mine = [
        codec().decode_as("DeadLetter", m.value())
        for m in letters
        if pk in (m.key() or b"").decode()
    ]
    assert sorted(letter["source"] for letter in mine) == sorted(bad)
    assert all(letter["reason"] for letter in mine)
    keys = [(m.key() or b"").decode() for m in got if pk in (m.key() or b"").decode()]
    assert keys == [f"{pk}/dev-ok-1"]
