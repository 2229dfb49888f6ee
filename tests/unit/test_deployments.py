"""One deployment name (OTAFLOW_DEPLOYMENT) namespaces every name a deployment uses."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from otaflow import config, instances, topics
from otaflow.config import Settings


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("OTAFLOW_DEPLOYMENT", "OTAFLOW_TOPIC_PREFIX", "OTAFLOW_APP_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return config.load()


def test_the_deployment_name_prefixes_topics_changelogs_and_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _load(monkeypatch, OTAFLOW_DEPLOYMENT="blue")
    assert settings.deployment == "blue"
    assert topics.DEVICE_REPORTS.full_name(settings) == "blue.ota.device.reports"
    assert settings.app_id == "blue"  # Faust group, changelogs blue-<table>-changelog, state


def test_without_a_name_the_default_deployment_keeps_its_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _load(monkeypatch)
    assert (settings.topic_prefix, settings.app_id) == ("", "otaflow")


def test_a_topic_prefix_alone_no_longer_shares_the_default_app_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two deployments told apart by their prefix only shared the consumer group
    # "otaflow": the second one's worker was handed nothing to do.
    one = _load(monkeypatch, OTAFLOW_TOPIC_PREFIX="one.")
    two = _load(monkeypatch, OTAFLOW_TOPIC_PREFIX="two.")
    assert one.app_id == "one" and two.app_id == "two"
    explicit = _load(monkeypatch, OTAFLOW_TOPIC_PREFIX="one.", OTAFLOW_APP_ID="legacy")
    assert explicit.app_id == "legacy"


@pytest.mark.parametrize(
    "name", ["a.b", "a-b", "", "Blue", "scratch", "ota", "otaflow", "x" * 49, "_a"]
)
def test_names_that_could_be_confused_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    with pytest.raises(ValueError, match="deployment name"):
        config.deployment_settings(Settings(), name)
    if name:
        with pytest.raises(ValueError, match="deployment name"):
            _load(monkeypatch, OTAFLOW_DEPLOYMENT=name)


def test_a_deployment_owns_its_topics_and_groups_and_no_one_elses() -> None:
    blue = config.deployment_settings(Settings(), "blue")
    topic_names = [
        "blue.ota.device.reports",
        "blue-devices-changelog",
        "blue_green.ota.device.reports",
        "blue_green-devices-changelog",
        "ota.device.reports",
        "otaflow-devices-changelog",
        "bluefin.ota.task.events",
    ]
    assert list(filter(topics.owner_of(blue), topic_names)) == topic_names[:2]
    group_names = [
        "blue",
        "blue-batcher",
        "blue-egress",
        "blue-api-view-1234",
        "blue_green",
        "blue_green-batcher",
        "otaflow",
        "otaflow-batcher",
        "bluefin",
    ]
    assert list(filter(topics.group_owner_of(blue), group_names)) == group_names[:4]


def test_copies_on_one_host_take_distinct_slots_and_a_restart_takes_its_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTAFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(instances, "_held", {})
    settings = config.deployment_settings(Settings(), "blue")
    # This process holds slot 0; a second process (a second copy) gets slot 1.
    assert instances.slot(settings, "ingress") == 0
    name = instances.instance_name(settings, "ingress")
    assert name == f"blue-ingress-{socket.gethostname()}-0"
    probe = (
        "from otaflow import config, instances; from otaflow.config import Settings; "
        "print(instances.slot(config.deployment_settings(Settings(), 'blue'), 'ingress'))"
    )
    second = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert second.stdout.strip() == "1"
    # That copy has exited: its slot is free again, as after a restart.
    again = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert again.stdout.strip() == "1"
    other = subprocess.run(
        [sys.executable, "-c", probe.replace("'blue'", "'green'")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == "0"  # another deployment counts its own copies
