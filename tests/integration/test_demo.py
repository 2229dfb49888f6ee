"""``otaflow demo`` leaves the broker and the disk as it found them (issue 13 item 6).

A small demo runs as a user runs it (the CLI, a process of its own) against the real
dev Kafka and Mosquitto; afterwards none of its deployment's topics or consumer groups
is on the broker and its logs are gone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from otaflow import config, topics
from otaflow.dev import devstack
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration


def test_the_demo_deletes_its_topics_groups_and_logs(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.mktemp("demo-cache")
    packages = tmp_path_factory.mktemp("demo-packages")
    env = {
        **os.environ,
        "OTAFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "OTAFLOW_MQTT_URL": stack.mqtt_url,
        "OTAFLOW_CACHE": str(cache),
        "OTAFLOW_DATA": str(tmp_path_factory.mktemp("demo-data")),
        "OTAFLOW_PACKAGE_DIR": str(packages),
        "COLUMNS": "250",  # the header line with the deployment name stays on one line
    }
    run = subprocess.run(
        [sys.executable, "-m", "otaflow.cli", "demo", "--devices", "20", "--fail-ratio", "0"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    found = re.search(r"deployment (scratch\.demo-[0-9a-f]+)", output)
    assert found, output[-2000:]
    name = found.group(1)
    settings = replace(config.load(), topic_prefix=name + ".", app_id=name)

    groups = topics.consumer_groups_where(stack.kafka_bootstrap, topics.group_owner_of(settings))
    assert groups == [], output[-2000:]
    left = [t for t in topics_on(stack) if topics.owner_of(settings)(t)]
    assert left == []
    # Its logs (kept only when it fails) and its package are gone too.
    assert [p for p in (cache / "demo").glob("*/*")] == []
    assert [p for p in packages.rglob("*") if p.is_file()] == []


def topics_on(stack: devstack.DevStack) -> list[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    return sorted(admin.list_topics(timeout=30).topics)
