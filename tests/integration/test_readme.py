"""The README's walkthrough runs as written (issue 13 item 6).

Blocks of README.md marked ``<!-- readme-test: GROUP -->`` (the line before the fence)
are run here against a deployment this test starts (worker, batcher, ingress, egress,
API, on the real Kafka and the dev Mosquitto), pointed at it only through the
environment variables the README names:

* ``sdk``: the Python blocks, in order, as one script;
* ``cli``: the shell blocks, in order, as one ``bash -euo pipefail`` script;
* ``file NAME``: written to ``NAME`` in the scripts' directory (``device.py``);
* ``offer``: the JSON example of an offer's ``data``, held against the real offer.

A marked block that fails fails the test, and each walkthrough must end with its
device's task SUCCEEDED, as the API (asked here, not by the README) lists it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from otaflow import config
from otaflow.api.client import OpsClient
from otaflow.dev import devstack
from tests.integration.conftest import REPO, Otaflow

pytestmark = pytest.mark.integration

README = REPO / "README.md"
MARK = re.compile(r"<!--\s*readme-test:\s*(?P<group>[^>]*?)\s*-->\s*\n```(?P<lang>[^\n]*)\n")
DONE = "README-TEST-DONE"


@dataclass(frozen=True)
class Block:
    group: str
    lang: str
    line: int
    code: str


def marked_blocks(text: str) -> list[Block]:
    blocks = []
    for found in MARK.finditer(text):
        end = text.index("\n```", found.end() - 1)
        line = text.count("\n", 0, found.end()) + 1
        code = text[found.end() : end + 1]
        blocks.append(Block(found["group"], found["lang"].strip(), line, code))
    return blocks


def script(blocks: list[Block], comment: str) -> str:
    """The blocks one after the other, each headed by where it is in the README."""
    return "".join(f"{comment} README.md line {b.line}\n{b.code}\n" for b in blocks)


def group(name: str) -> list[Block]:
    blocks = [b for b in marked_blocks(README.read_text()) if b.group == name]
    assert blocks, f"README.md has no block marked readme-test: {name}"
    return blocks


@pytest.fixture(scope="module")
def deployment(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Otaflow]:
    # Ticks every second, as `otaflow up` runs: the rate's windows and timeouts move.
    live = Otaflow(stack, tmp_path_factory.mktemp("readme"), tick_interval_s=1.0)
    live.start_all()
    deadline = time.monotonic() + 60
    while True:
        for name, proc in live.procs.items():
            assert proc.poll() is None, f"{name} exited:\n{live.log(name)}"
        try:
            requests.get(f"http://127.0.0.1:{live.settings.api_port}/", timeout=2)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "the API did not answer"
            time.sleep(0.2)
    try:
        yield live
    finally:
        live.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The directory the README's scripts run in, with its files (device.py) written."""
    for block in marked_blocks(README.read_text()):
        if block.group.startswith("file "):
            (tmp_path / block.group.removeprefix("file ").strip()).write_text(block.code)
    assert (tmp_path / "device.py").exists()
    return tmp_path


def readme_env(live: Otaflow, stack: devstack.DevStack) -> dict[str, str]:
    """What the README tells a reader to export, pointed at this test's deployment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTAFLOW_")}
    return {
        **env,
        "OTAFLOW_API_URL": f"http://127.0.0.1:{live.settings.api_port}",
        "OTAFLOW_ACCESS_KEY_ID": "testAK",
        "OTAFLOW_ACCESS_KEY_SECRET": "testSecret",
        # Devices log in themselves (device.py signs with its DeviceSecret): host and port.
        "DEVICE_MQTT_URL": "mqtt://{0.host}:{0.port}".format(
            config.MqttAddress.parse(stack.mqtt_url)
        ),
        # The README's PATH: the virtualenv's otaflow and python first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "COLUMNS": "80",
    }


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=280, check=False
    )
    output = done.stdout + done.stderr
    (cwd / f"{argv[-1]}.out").write_text(output)  # kept with pytest's temporary directories
    assert done.returncode == 0, (
        f"a README block failed (exit {done.returncode}):\n{output[-6000:]}"
    )
    return output


def finished_job(output: str) -> str:
    found = re.search(rf"{DONE} job=(\S+)", output)
    assert found, output[-3000:]
    return found.group(1)


def tasks_of(live: Otaflow, job_id: str) -> list[dict[str, Any]]:
    api = OpsClient(f"http://127.0.0.1:{live.settings.api_port}", "testAK", "testSecret")
    body = api.call("ListOTATaskByJob", {"JobId": job_id, "CurrentPage": 1, "PageSize": 10})
    tasks: list[dict[str, Any]] = body["Data"]["SimpleOTATaskInfo"]
    return tasks


def offer_printed(output: str) -> dict[str, Any]:
    found = re.search(r"^offered (\{.*\})$", output, re.MULTILINE)
    assert found, output[-3000:]
    offer: dict[str, Any] = json.loads(found.group(1))
    return offer


def test_the_sdk_walkthrough_updates_its_device(
    deployment: Otaflow, stack: devstack.DevStack, workdir: Path
) -> None:
    blocks = group("sdk")
    assert {b.lang for b in blocks} == {"python"}
    code = script(blocks, "#") + f'print("{DONE} job=" + job_id)\n'
    (workdir / "walkthrough_sdk.py").write_text(code)
    output = run([sys.executable, "walkthrough_sdk.py"], workdir, readme_env(deployment, stack))

    job_id = finished_job(output)
    [task] = tasks_of(deployment, job_id)
    assert (task["DeviceName"], task["TaskStatus"]) == ("lock-0001", "SUCCEEDED")
    assert re.search(r"^lock-0001 SUCCEEDED", output, re.MULTILINE), output[-3000:]

    # The README's example offer has the keys a real one has (values differ per run).
    [example] = group("offer")
    offer = offer_printed(output)
    try:
        shown = json.loads(example.code)
    except ValueError:
        shown = None
    assert isinstance(shown, dict) and set(shown) == set(offer), json.dumps(offer, indent=1)


def test_the_cli_walkthrough_updates_its_device(
    deployment: Otaflow, stack: devstack.DevStack, workdir: Path
) -> None:
    blocks = group("cli")
    assert {b.lang for b in blocks} == {"sh"}
    code = "set -euo pipefail\n" + script(blocks, "#") + f'echo "{DONE} job=$JOB"\n'
    (workdir / "walkthrough_cli.sh").write_text(code)
    output = run(["bash", "walkthrough_cli.sh"], workdir, readme_env(deployment, stack))

    job_id = finished_job(output)
    [task] = tasks_of(deployment, job_id)
    assert (task["DeviceName"], task["TaskStatus"]) == ("lock-0002", "SUCCEEDED")
    # `otaflow task list` printed it by name, on the task's own line, within 80 columns.
    listed = [line for line in output.splitlines() if task["TaskId"] in line]
    assert listed and "SUCCEEDED" in listed[-1]
    assert "lock-0002 updated to 2.0" in output


def test_a_failing_block_fails_the_walkthrough(tmp_path: Path) -> None:
    """The harness itself: a marked block that exits non-zero is reported, not ignored."""
    text = "<!-- readme-test: cli -->\n```sh\necho one\nfalse\necho never\n```\n"
    [block] = marked_blocks(text)
    (tmp_path / "w.sh").write_text("set -euo pipefail\n" + script([block], "#"))
    with pytest.raises(AssertionError, match="a README block failed"):
        run(["bash", "w.sh"], tmp_path, dict(os.environ))
