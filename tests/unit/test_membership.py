"""Static group membership: one id per state directory, the same after every restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from otaflow import membership


def test_the_id_is_made_once_and_kept_in_the_state_directory(tmp_path: Path) -> None:
    first = membership.instance_id(tmp_path / "w", "worker")
    assert first.startswith("worker-")
    assert membership.instance_id(tmp_path / "w", "worker") == first
    assert (tmp_path / "w" / "group-instance-id").read_text().strip() == first[len("worker-") :]


def test_two_state_directories_are_two_members(tmp_path: Path) -> None:
    assert membership.instance_id(tmp_path / "a", "worker") != membership.instance_id(
        tmp_path / "b", "worker"
    )


def test_roles_sharing_a_directory_keep_their_own_prefix(tmp_path: Path) -> None:
    worker = membership.instance_id(tmp_path, "worker")
    batcher = membership.instance_id(tmp_path, "batcher")
    assert worker.split("-", 1)[1] == batcher.split("-", 1)[1]
    assert worker != batcher


def test_sessions_are_seconds_and_heartbeats_a_third_or_less(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = membership.librdkafka_group_settings(tmp_path, "batcher")
    assert settings["session.timeout.ms"] == 6000
    assert settings["heartbeat.interval.ms"] == 1000
    assert str(settings["group.instance.id"]).startswith("batcher-")
    monkeypatch.setenv("OTAFLOW_GROUP_SESSION_TIMEOUT", "2.4")
    dynamic = membership.librdkafka_group_settings(None, "egress")
    assert dynamic == {"session.timeout.ms": 2400, "heartbeat.interval.ms": 800}
