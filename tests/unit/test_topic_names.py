"""Topic naming: which topics a deployment owns, and the throwaway namespace."""

from __future__ import annotations

from dataclasses import replace

import pytest

from otaflow import topics
from otaflow.config import Settings


def test_scratch_settings_are_fresh_and_marked() -> None:
    one = topics.scratch_settings(Settings(), "test")
    two = topics.scratch_settings(Settings(), "test")
    assert one.topic_prefix != two.topic_prefix
    assert one.topic_prefix == one.app_id + "."
    assert topics.is_scratch(topics.DEVICE_REPORTS.full_name(one))
    assert topics.is_scratch(f"{one.app_id}-devices-changelog")
    assert not topics.is_scratch(topics.DEVICE_REPORTS.full_name(Settings()))
    assert not topics.is_scratch("otaflow-devices-changelog")


def test_names_from_before_the_mark_are_scratch_too() -> None:
    for name in (
        "t1a2b3c4d.ota.device.reports",
        "otaflow-t1a2b3c4d-devices-changelog",
        "bingest0a1b2c.otaflow.device-events",
        "otaflow-brollout0a1b2c-__assignor-__leader",
        "bench0123456789.ota.notifications",
        "demo20261127085900.ota.task.events",
    ):
        assert topics.is_scratch(name), name
    for name in ("telemetry.raw", "billing-events", "demo.ota.task.events"):
        assert not topics.is_scratch(name), name


def test_owned_topics_are_the_prefixed_and_the_app_id_ones() -> None:
    mine = topics.scratch_settings(Settings(), "test")
    other = topics.scratch_settings(Settings(), "test")
    names = [
        topics.TASK_EVENTS.full_name(mine),
        f"{mine.app_id}-devices-changelog",
        f"{mine.app_id}-__assignor-__leader",
        topics.TASK_EVENTS.full_name(other),
        f"{other.app_id}-devices-changelog",
        "ota.task.events",
        "otaflow-devices-changelog",
    ]
    assert sorted(filter(topics.owner_of(mine), names)) == sorted(names[:3])


def test_an_app_id_that_extends_another_is_not_confused_with_it() -> None:
    short = replace(Settings(), topic_prefix="scratch.a.", app_id="scratch.a")
    owns = topics.owner_of(short)
    assert not owns("scratch.ab-devices-changelog") and not owns("scratch.ab.x")


def test_the_unprefixed_deployment_owns_no_names() -> None:
    # Without a prefix every topic would match: refuse rather than delete a broker's worth.
    with pytest.raises(ValueError):
        topics.owner_of(Settings())
