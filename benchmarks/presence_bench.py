"""``otaflow bench presence``: devices connecting with authentication, and their presence.

An authenticating Mosquitto of its own (otaflow's plugin, on a free port; the dev
broker is left alone) with N registered devices; otaflow's worker and ingress logged in
as the service, presence on. N devices connect the way the official SDK does (one
connection each: client id, ``dn&pk``, HMAC-SHA1 password over their DeviceSecret)
and subscribe to their upgrade topic, which makes the broker publish "online". Figures:

- connects/s accepted by the broker: N / the time from the first CONNECT to the last
  SUBACK (CONNACK refused counts as a failure);
- presence records applied/s: N / the time from the first CONNECT until the worker has
  written the state of every device (each device is new, so one state per ONLINE), and
  how long after the last SUBACK that took (the pipeline's lag behind the broker).

The devices are raw asyncio MQTT 3.1.1 clients (paho's thread per client would measure
Python threads, not the broker), ``--concurrency`` connecting at once.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from benchmarks.deployment import BenchDeployment
from benchmarks.results import ScenarioResult
from benchmarks.scenarios import states_written, wait_progress, warm_up
from connectors.mqtt_publisher import connect_packet, encode_length
from otaflow.edge.broker import AuthSettings, service_url, start_broker, wait_for_listener
from otaflow.edge.credentials import device_login, device_secret

PRODUCT_KEY = "pkPresence"
HOST = "127.0.0.1"


def _subscribe_packet(topic: str, mid: int = 1) -> bytes:
    raw = topic.encode()
    body = mid.to_bytes(2, "big") + len(raw).to_bytes(2, "big") + raw + b"\x01"
    return b"\x82" + encode_length(len(body)) + body


async def _device(
    port: int, key: str, name: str, gate: asyncio.Semaphore, keep: list[asyncio.StreamWriter]
) -> bool:
    login = device_login(PRODUCT_KEY, name, device_secret(key, PRODUCT_KEY, name))
    async with gate:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(connect_packet(login.client_id, 300, login.username, login.password))
        connack = await reader.readexactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            writer.close()
            return False
        writer.write(_subscribe_packet(f"/ota/device/upgrade/{PRODUCT_KEY}/{name}"))
        suback = await reader.readexactly(5)
        keep.append(writer)  # stays connected (and online) until the run ends
        return suback[0] == 0x90 and suback[4] == 1


async def _connect_all(
    port: int, key: str, names: list[str], concurrency: int
) -> tuple[int, float, list[asyncio.StreamWriter]]:
    gate = asyncio.Semaphore(concurrency)
    keep: list[asyncio.StreamWriter] = []
    start = time.perf_counter()
    results = await asyncio.gather(*(_device(port, key, n, gate, keep) for n in names))
    return sum(results), time.perf_counter() - start, keep


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


PROBES = 60


def anonymous_connects(workdir: Path, names: list[str], concurrency: int) -> float:
    """Connects/s of the same clients to a Mosquitto without the plugin: what the
    plugin costs, measured beside it on the same machine at the same time."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = workdir / "anonymous.conf"
    conf.write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
    loop = asyncio.new_event_loop()
    try:
        wait_for_listener(HOST, port, proc, 10)
        accepted, seconds, writers = loop.run_until_complete(
            _connect_all(port, "any", names, concurrency)
        )
        for writer in writers:
            writer.close()
        loop.run_until_complete(asyncio.sleep(0.5))
        return accepted / seconds
    finally:
        loop.close()
        proc.terminate()
        proc.wait(10)


def presence(n: int, concurrency: int = 200) -> ScenarioResult:
    result = ScenarioResult("presence", {"devices": n, "concurrency": concurrency})
    d = BenchDeployment("presence")
    key, password = f"bench-{uuid.uuid4().hex}", uuid.uuid4().hex
    probes = [f"probe{i:03d}" for i in range(PROBES)]
    names = [f"dev{i:06d}" for i in range(n)]
    devices_file = d.root / "registered-devices"
    devices_file.parent.mkdir(parents=True, exist_ok=True)
    devices_file.write_text("".join(f"{PRODUCT_KEY}&{dn}\n" for dn in [*probes, *names]))
    port = _free_port()
    auth = AuthSettings(key, "otaflow-service", password, devices_file)
    broker = start_broker(d.root / "mosquitto", HOST, port, auth)
    url = service_url(HOST, port, auth)
    for env in (d.env, d.group.env):
        env.update({"OTAFLOW_MQTT_URL": url, "OTAFLOW_PRESENCE": "1"})
    loop = asyncio.new_event_loop()  # one loop: the devices stay connected between phases
    writers: list[asyncio.StreamWriter] = []
    try:
        warm_up(d, at=int(time.time() * 1000))
        d.group.start("ingress", ["-m", "connectors.ingress"])
        states = states_written(d)
        try:
            # The ingress has subscribed once a probe device's "online" comes through
            # (a status message before that reaches no one).
            for probe in probes:
                base = states()
                writers += loop.run_until_complete(_connect_all(port, key, [probe], 1))[2]
                try:
                    wait_progress("ingress ready", base + 1, states, timeout=2, interval=0.05)
                    break
                except TimeoutError:
                    continue
            else:
                raise TimeoutError("the ingress never reported a device online")
            base = states()
            accepted, connect_s, fleet = loop.run_until_complete(
                _connect_all(port, key, names, concurrency)
            )
            writers += fleet
            lag_s = wait_progress(
                f"presence of {n:,} devices", base + n, states, timeout=600, interval=0.05
            )
        finally:
            states.close()
        result.add("connects accepted", accepted, "devices", f"{n:,}", accepted == n)
        result.add(
            "connects/s accepted by the broker (CONNECT..SUBACK)", accepted / connect_s, "/s"
        )
        result.add(
            "presence records applied/s (first CONNECT..last state)", n / (connect_s + lag_s), "/s"
        )
        result.add("worker behind the broker after the last SUBACK", lag_s, "s")
        # The fleet goes first: both at once would need twice the file descriptors.
        for writer in writers:
            writer.close()
        writers.clear()
        loop.run_until_complete(asyncio.sleep(1))
        result.add(
            "connects/s to the same broker without the plugin (same clients)",
            anonymous_connects(d.root / "anonymous", names, concurrency),
            "/s",
        )
        return result
    finally:
        try:
            for writer in writers:
                writer.close()
            loop.close()
            d.close()
        finally:
            broker.terminate()  # ours: never left behind, whatever failed above
            broker.wait(10)
