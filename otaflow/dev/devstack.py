"""The dev stack otaflow starts for itself: one real Kafka broker and one Mosquitto.

Nothing here needs Docker. Kafka 4.1.1 runs as a single KRaft node (broker and
controller in one JVM) from jars Maven fetches once into ``cache_dir()``;
Mosquitto runs from the distribution package (installed with apt when missing
and we are root). Both listen on loopback only, on the ports of
:mod:`otaflow.config`, and are detached from the caller so they outlive it.

Python API::

    stack = up()        # idempotent: reuses whatever already answers
    status()            # {"kafka": {...}, "mqtt": {...}}
    down()              # stops only what up() started
    prune()             # deletes what throwaway deployments left (tests, benchmarks)

CLI: ``python -m otaflow.dev.devstack up|down|status|prune [--deployment NAME]``.

Setting ``OTAFLOW_KAFKA_BOOTSTRAP`` / ``OTAFLOW_MQTT_URL`` points otaflow at
services someone else runs; ``up()`` then only checks they answer.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from otaflow import config, membership, topics
from otaflow.dev import system_packages
from otaflow.edge import broker as edge_broker

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.25.3"
# Kafka's published POMs still declare slf4j-api 1.7.x (the binary distribution
# ships 2.0.x). Maven's nearest-wins rule would pick 1.7, which cannot see the
# log4j-slf4j2 provider, and the broker would log nothing at all.
SLF4J_VERSION = "2.0.17"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
MIN_JAVA = 17

# A broker that was killed replays and indexes every partition's log before it answers;
# with thousands of partitions that takes minutes. We wait as long as the process lives.
KAFKA_START_TIMEOUT_S = 300.0
KAFKA_SLOW_START_NOTE_S = 20.0
MQTT_START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 30.0
MAVEN_TIMEOUT_S = 900.0

_log = logging.getLogger("otaflow.dev.devstack")


class DevstackError(RuntimeError):
    """The dev stack could not be provisioned, started or reached."""


@dataclass(frozen=True)
class DevStack:
    kafka_bootstrap: str
    mqtt_url: str
    # The authenticating listener (otaflow.edge.broker), logged in as the service
    # user; None when the running broker has none (started before it existed).
    mqtt_auth_url: str | None = None


# --------------------------------------------------------------------------- paths


def _stack_dir() -> Path:
    return config.cache_dir() / "devstack"


def _kafka_home() -> Path:
    return config.cache_dir() / f"kafka-{KAFKA_VERSION}"


def _kafka_libs() -> Path:
    return _kafka_home() / "libs"


def _kafka_data() -> Path:
    return config.cache_dir() / "kafka-data"


def _pid_file(service: str) -> Path:
    return _stack_dir() / f"{service}.pid"


def _out_file(service: str) -> Path:
    """stdout/stderr of the process (Mosquitto logs here too)."""
    return _stack_dir() / f"{service}.out"


def _kafka_server_log() -> Path:
    return _stack_dir() / "kafka-server.log"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise up()/down() across processes (parallel test sessions, two shells)."""
    _stack_dir().mkdir(parents=True, exist_ok=True)
    with open(_stack_dir() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- processes


def _split_hostport(address: str, default_port: int) -> tuple[str, int]:
    first = address.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, sep, port = first.rpartition(":")
    if not sep:
        return first or "127.0.0.1", default_port
    return host.strip("[]") or "127.0.0.1", int(port)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_state(pid: int) -> str | None:
    """Linux process state letter, or None when the pid does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"
    # The command name is in parentheses and may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process (not a zombie)? A child of ours is reaped first."""
    _reap(pid)
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


_SIGNATURES = {"kafka": "kafka.Kafka", "mqtt": "mosquitto"}


def _managed_pid(service: str) -> int | None:
    """The pid of the process we started for ``service``, if it is still that process."""
    pid_file = _pid_file(service)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid) and _SIGNATURES[service] in _cmdline(pid):
        return pid
    with contextlib.suppress(OSError):
        pid_file.unlink()
    return None


def _spawn_detached(cmd: list[str], out_file: Path, cwd: Path) -> int:
    """Start ``cmd`` in its own session, re-parented away from us; return its pid.

    A throw-away ``sh`` backgrounds the command and exits, so the service is not
    our child: no zombie in a long-lived pytest process, no ResourceWarning, and
    it survives the caller's exit and Ctrl-C.
    """
    out_file.parent.mkdir(parents=True, exist_ok=True)
    script = 'out=$1; shift; "$@" >"$out" 2>&1 </dev/null & echo $!'
    result = subprocess.run(
        ["sh", "-c", script, "sh", str(out_file), *cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        raise DevstackError(f"could not start {cmd[0]}: {result.stderr.strip()}")
    return int(result.stdout.strip())


def _stop(service: str, timeout: float = STOP_TIMEOUT_S) -> bool:
    pid = _managed_pid(service)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        _log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", service, pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
    with contextlib.suppress(OSError):
        _pid_file(service).unlink()
    return True


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a log, indented, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"  (no {path})"
    return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:]) or f"  ({path} is empty)"


# --------------------------------------------------------------------------- Kafka


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise DevstackError(
            f"`java` not found: Kafka {KAFKA_VERSION} needs a JDK/JRE {MIN_JAVA}+ "
            "(Debian: apt-get install -y openjdk-17-jre-headless), "
            "or set OTAFLOW_KAFKA_BOOTSTRAP to a broker you run yourself."
        )
    return found


def _java_major(java: str) -> int:
    result = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=60, check=False
    )
    text = result.stderr + result.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise DevstackError(f"could not tell the version of {java}: {text.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    return major


def _check_java() -> str:
    java = _java()
    major = _java_major(java)
    if major < MIN_JAVA:
        raise DevstackError(
            f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+ "
            "(set JAVA_HOME to a newer JDK)."
        )
    return java


def _pom() -> str:
    deps = [
        ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
        ("org.apache.kafka", "kafka-tools", KAFKA_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
        ("org.slf4j", "slf4j-api", SLF4J_VERSION),
    ]
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by otaflow.dev.devstack: the runtime classpath of a Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.otaflow</groupId>
  <artifactId>otaflow-devstack-kafka</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def _libs_complete(marker_text: str) -> bool:
    libs = _kafka_libs()
    marker = libs / ".complete"
    try:
        if marker.read_text() != marker_text:
            return False
    except OSError:
        return False
    return (libs / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").is_file()


def ensure_kafka_jars() -> Path:
    """Fetch the broker's jars once with Maven; later calls return at once."""
    pom = _pom()
    marker_text = hashlib.sha256(pom.encode()).hexdigest() + "\n"
    libs = _kafka_libs()
    if _libs_complete(marker_text):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise DevstackError(
            f"`mvn` not found: it fetches the Kafka {KAFKA_VERSION} jars once into {libs} "
            "(Debian: apt-get install -y maven), "
            "or set OTAFLOW_KAFKA_BOOTSTRAP to a broker you run yourself."
        )
    home = _kafka_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(pom)
    staging = home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    print(
        f"devstack: fetching Kafka {KAFKA_VERSION} jars with Maven into {libs} ...",
        file=sys.stderr,
        flush=True,
    )
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(home / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    try:
        result = subprocess.run(
            cmd, cwd=home, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DevstackError(f"Maven did not finish in {MAVEN_TIMEOUT_S:.0f}s: {cmd}") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-30:]
        raise DevstackError(
            f"Maven could not fetch the Kafka jars (exit {result.returncode}):\n  "
            + "\n  ".join(output)
        )
    if not (staging / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").is_file():
        raise DevstackError(f"Maven succeeded but {staging} has no Kafka jar")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (libs / ".complete").write_text(marker_text)
    return libs


def _server_properties(host: str, port: int) -> str:
    ctrl = config.DEFAULT_KAFKA_CONTROLLER_PORT
    mib = 1024 * 1024
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{ctrl}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctrl}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(_kafka_data()),
        "num.partitions": str(config.DEFAULT_PARTITIONS),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": str(config.DEFAULT_PARTITIONS),
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": str(config.DEFAULT_PARTITIONS),
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        # Disk stays bounded: a day of data at most, 128 MiB per partition at
        # most, in 32 MiB segments so retention can actually drop something.
        "log.retention.hours": "24",
        "log.retention.bytes": str(128 * mib),
        "log.segment.bytes": str(32 * mib),
        "log.roll.hours": "6",
        "log.retention.check.interval.ms": "60000",
        "log.cleaner.dedupe.buffer.size": str(32 * mib),
        "num.network.threads": "3",
        "num.io.threads": "8",
        "num.recovery.threads.per.data.dir": "2",
    }
    lines = ["# Generated by otaflow.dev.devstack; rewritten on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _log4j2_xml() -> str:
    log = escape(str(_kafka_server_log()))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by otaflow.dev.devstack. -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="file" fileName="{log}" filePattern="{log}.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="10 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def _kafka_uuid() -> str:
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _format_storage(java: str, libs: Path, props: Path, log4j: Path) -> None:
    if (_kafka_data() / "meta.properties").is_file():
        return
    _kafka_data().mkdir(parents=True, exist_ok=True)
    cmd = [
        java,
        "-Xmx256m",
        "-cp",
        f"{libs}/*",
        f"-Dlog4j2.configurationFile={log4j}",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _kafka_uuid(),
        "-c",
        str(props),
        "--ignore-formatted",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise DevstackError(
            f"formatting Kafka storage in {_kafka_data()} failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr).strip()}\n"
            f"If that directory holds a broken or foreign log, delete it and run up again."
        )


def _admin_answers(bootstrap: str, timeout: float) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("otaflow.dev.devstack.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": quiet,  # keep librdkafka's connection chatter off stderr
        "socket.timeout.ms": 5000,
    }
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def _kafka_running(bootstrap: str, timeout: float = 5.0) -> bool:
    host, port = _split_hostport(bootstrap, config.DEFAULT_KAFKA_PORT)
    return _port_open(host, port) and _admin_answers(bootstrap, timeout)


def _partition_dirs() -> int:
    try:
        return sum(1 for entry in os.scandir(_kafka_data()) if entry.is_dir())
    except OSError:
        return 0


def _wait_kafka(bootstrap: str, pid: int | None, timeout: float) -> None:
    host, port = _split_hostport(bootstrap, config.DEFAULT_KAFKA_PORT)
    started = time.monotonic()
    deadline = started + timeout
    noted = False
    while time.monotonic() < deadline:
        if not noted and time.monotonic() - started > KAFKA_SLOW_START_NOTE_S:
            noted = True
            print(
                f"devstack: Kafka is still loading its logs ({_partition_dirs():,} partition "
                f"directories in {_kafka_data()}); waiting up to {timeout:.0f}s. "
                "`otaflow devstack prune` removes what killed test runs left behind.",
                file=sys.stderr,
                flush=True,
            )
        if pid is not None and not pid_alive(pid):
            raise DevstackError(
                f"Kafka (pid {pid}) exited while starting.\n"
                f"{_out_file('kafka')}:\n{log_tail(_out_file('kafka'))}\n"
                f"{_kafka_server_log()}:\n{log_tail(_kafka_server_log())}"
            )
        if _port_open(host, port, timeout=1.0):
            left = max(1.0, min(5.0, deadline - time.monotonic()))
            if _admin_answers(bootstrap, left):
                return
        time.sleep(0.25)
    raise DevstackError(
        f"Kafka did not answer on {bootstrap} within {timeout:.0f}s.\n"
        f"{_out_file('kafka')}:\n{log_tail(_out_file('kafka'))}\n"
        f"{_kafka_server_log()}:\n{log_tail(_kafka_server_log())}"
    )


def _up_kafka(settings: config.Settings) -> str:
    bootstrap = settings.kafka_bootstrap
    if settings.kafka_from_env:
        if not _kafka_running(bootstrap, timeout=15.0):
            raise DevstackError(
                f"OTAFLOW_KAFKA_BOOTSTRAP={bootstrap} is set, but no Kafka answers there "
                "(unset it to let the dev stack start its own broker)."
            )
        return bootstrap
    pid = _managed_pid("kafka")
    if pid is not None:  # ours, maybe still starting (another up() died half-way)
        _wait_kafka(bootstrap, pid, KAFKA_START_TIMEOUT_S)
        return bootstrap
    host, port = _split_hostport(bootstrap, config.DEFAULT_KAFKA_PORT)
    if _port_open(host, port):
        if _admin_answers(bootstrap, 10.0):
            return bootstrap  # someone else's broker: use it, don't own it
        raise DevstackError(
            f"port {port} on {host} is taken by something that does not speak Kafka; "
            "stop it or set OTAFLOW_KAFKA_BOOTSTRAP to a broker."
        )

    ctrl = config.DEFAULT_KAFKA_CONTROLLER_PORT
    if _port_open(host, ctrl):
        raise DevstackError(
            f"the Kafka controller port {ctrl} on {host} is taken by another process; "
            "stop it (a leftover broker? see `ss -ltnp`) and run up again."
        )
    java = _check_java()
    libs = ensure_kafka_jars()
    stack = _stack_dir()
    props = stack / "server.properties"
    log4j = stack / "kafka-log4j2.xml"
    stack.mkdir(parents=True, exist_ok=True)
    props.write_text(_server_properties(host, port))
    log4j.write_text(_log4j2_xml())
    _format_storage(java, libs, props, log4j)
    cmd = [
        java,
        "-Xms256m",
        "-Xmx512m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={stack}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props),
    ]
    pid = _spawn_detached(cmd, _out_file("kafka"), cwd=stack)
    _pid_file("kafka").write_text(f"{pid}\n")
    try:
        _wait_kafka(bootstrap, pid, KAFKA_START_TIMEOUT_S)
    except DevstackError:
        _stop("kafka", timeout=10)
        raise
    # We just started the broker, so no throwaway deployment can be running against it:
    # whatever they left is garbage, and it would slow every later start.
    pruned = topics.prune_scratch_topics(bootstrap)
    if pruned:
        _log.info("deleted %d topics left by earlier test and benchmark runs", pruned)
    return bootstrap


# --------------------------------------------------------------------------- Mosquitto


def _ensure_programs() -> None:
    try:
        system_packages.ensure()
    except system_packages.SystemPackageError as exc:
        raise DevstackError(str(exc)) from exc


def _ensure_mosquitto() -> str:
    _ensure_programs()
    found = system_packages.find("mosquitto")
    if not found:
        raise DevstackError("no mosquitto binary was found after installing it")
    return found


def _edge_devices_file() -> Path:
    """The registered devices the authenticating listener lets in (registry_sync)."""
    return _stack_dir() / "edge-devices"


def _mosquitto_conf(host: str, port: int) -> str:
    # Logs go to stderr, which we redirect into a file we own: a root-started
    # mosquitto drops to the `mosquitto` user, which could not open a file in
    # root's home directory. With the auth plugin (also in root's cache) it stays
    # root: a loopback dev broker only. No listener takes anonymous clients: devices
    # log in with their DeviceSecret, otaflow's processes as the service user; the
    # registry's listener also wants the device registered (otaflow.edge.broker).
    plugin = edge_broker.build_plugin()
    # Each listener loads its own copy of the plugin: one file loaded twice is one
    # instance (the dynamic loader shares it), and the plugin keeps its options in
    # globals.
    registry_plugin = plugin.with_name(plugin.stem + "-registry.so")
    if not registry_plugin.exists():
        partial = registry_plugin.with_suffix(".tmp")
        shutil.copy2(plugin, partial)
        partial.replace(registry_plugin)
    shared = edge_broker.dev_auth_settings(None)
    registry = edge_broker.dev_auth_settings(_edge_devices_file())
    user = "user root\n" if os.geteuid() == 0 else ""
    return f"""# Generated by otaflow.dev.devstack; rewritten on every start.
{user}per_listener_settings true
{edge_broker.dev_listener_conf(host, port, shared, plugin)}
{edge_broker.dev_listener_conf(host, edge_broker.dev_auth_port(), registry, registry_plugin)}
persistence false
max_queued_messages 100000
max_inflight_messages 1000
log_dest stderr
log_type error
log_type warning
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


def _mqtt_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """A real MQTT 3.1.1 CONNECT/CONNACK, so any TCP listener does not pass."""
    client_id = f"otaflow-devstack-probe-{os.getpid()}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    packet = b"\x10" + bytes([len(body)]) + body  # body < 128 bytes
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(packet)
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            # 4/5: bad credentials / not authorized: an MQTT broker that wants a login.
            return reply[0] == 0x20 and reply[3] in (0, 4, 5)
    except OSError:
        return False


def _wait_mqtt(host: str, port: int, pid: int | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not pid_alive(pid):
            raise DevstackError(
                f"mosquitto (pid {pid}) exited while starting.\n"
                f"{_out_file('mqtt')}:\n{log_tail(_out_file('mqtt'))}"
            )
        if _port_open(host, port, timeout=0.5) and _mqtt_answers(host, port):
            return
        time.sleep(0.1)
    raise DevstackError(
        f"mosquitto did not answer on {host}:{port} within {timeout:.0f}s.\n"
        f"{_out_file('mqtt')}:\n{log_tail(_out_file('mqtt'))}"
    )


def _up_mqtt(settings: config.Settings) -> str:
    host, port = settings.mqtt.host, settings.mqtt.port
    url = settings.mqtt.connect_url  # with the service login: handed to otaflow's processes
    if settings.mqtt_from_env:
        # A TLS broker is only checked for an open port (the probe speaks plain MQTT).
        answers = (
            _port_open(host, port, timeout=5.0)
            if settings.mqtt.tls
            else _mqtt_answers(host, port, timeout=5.0)
        )
        if not answers:
            raise DevstackError(
                f"OTAFLOW_MQTT_URL={url} is set, but no MQTT broker "
                "answers there (unset it to let the dev stack start its own Mosquitto)."
            )
        return os.environ["OTAFLOW_MQTT_URL"]  # whole: with its user name and password
    pid = _managed_pid("mqtt")
    if pid is not None:
        _wait_mqtt(host, port, pid, MQTT_START_TIMEOUT_S)
        return url
    if _port_open(host, port):
        if _mqtt_answers(host, port):
            return url
        raise DevstackError(
            f"port {port} on {host} is taken by something that does not speak MQTT; "
            "stop it or set OTAFLOW_MQTT_URL to a broker."
        )
    mosquitto = _ensure_mosquitto()
    stack = _stack_dir()
    stack.mkdir(parents=True, exist_ok=True)
    conf = stack / "mosquitto.conf"
    conf.write_text(_mosquitto_conf(host, port))
    conf.chmod(0o644)
    pid = _spawn_detached([mosquitto, "-c", str(conf)], _out_file("mqtt"), cwd=stack)
    _pid_file("mqtt").write_text(f"{pid}\n")
    try:
        _wait_mqtt(host, port, pid, MQTT_START_TIMEOUT_S)
    except DevstackError:
        _stop("mqtt", timeout=5)
        raise
    return url


# --------------------------------------------------------------------------- public API


def up() -> DevStack:
    """Make sure Kafka and MQTT answer; start the ones that don't. Idempotent."""
    settings = config.load()
    with _locked():
        # Every program the tests and benchmarks call, even with brokers given in the
        # environment (the egress benchmark's mosquitto_sub is needed either way).
        _ensure_programs()
        kafka = _up_kafka(settings)
        mqtt = _up_mqtt(settings)
        edge_broker.build_plugin()  # make setup builds it, whichever broker runs
    return DevStack(kafka_bootstrap=kafka, mqtt_url=mqtt, mqtt_auth_url=_mqtt_auth_url(settings))


def _mqtt_auth_url(settings: config.Settings) -> str | None:
    """The authenticating listener of the dev broker, if it has one."""
    host, port = settings.mqtt.host, edge_broker.dev_auth_port()
    if settings.mqtt_from_env or not _port_open(host, port):
        return None
    auth = edge_broker.dev_auth_settings(_edge_devices_file())
    return edge_broker.service_url(host, port, auth)


def edge_devices_file() -> Path:
    return _edge_devices_file()


def down() -> None:
    """Stop what up() started (never a broker it merely found or was pointed at)."""
    with _locked():
        _stop("kafka")
        _stop("mqtt")


def prune() -> int:
    """Delete the topics of throwaway deployments (tests, benchmarks, the demo) that runs
    killed before their clean-up left behind. Only run it when none of them is running."""
    settings = config.load()
    with _locked():
        bootstrap = _up_kafka(settings)
        deleted = topics.prune_scratch_topics(bootstrap)
        topics.delete_groups_where(bootstrap, topics.is_scratch)
        return deleted


def prune_deployment(name: str) -> tuple[int, list[str], list[str]]:
    """Delete one deployment's topics and consumer groups and nothing else; return (topics
    deleted, groups deleted, groups still in use). Stop its processes first: a group with
    live members stays."""
    settings = config.deployment_settings(config.load(), name)
    bootstrap = settings.kafka_bootstrap
    if not settings.kafka_from_env:
        with _locked():
            bootstrap = _up_kafka(settings)
    deleted_topics = topics.delete_deployment_topics(bootstrap, settings)
    # A worker stopped a moment ago is still a (static) member for one session timeout.
    patience = 2 * membership.session_timeout_s() + 2
    groups, busy = topics.delete_groups_where(
        bootstrap, topics.group_owner_of(settings), patience_s=patience
    )
    return deleted_topics, groups, busy


def status() -> dict[str, dict[str, object]]:
    """What answers where: ``{"kafka": {...}, "mqtt": {...}}``.

    Each entry has ``running`` (it answers its protocol), ``address``, ``pid``
    (of the process up() started, else None), ``managed`` (up() started it),
    ``from_env`` (address came from the environment) and ``log``.
    """
    settings = config.load()
    kafka_pid = _managed_pid("kafka")
    mqtt_pid = _managed_pid("mqtt")
    return {
        "kafka": {
            "running": _kafka_running(settings.kafka_bootstrap),
            "address": settings.kafka_bootstrap,
            "pid": kafka_pid,
            "managed": kafka_pid is not None,
            "from_env": settings.kafka_from_env,
            "log": str(_kafka_server_log()),
        },
        "mqtt": {
            "running": _mqtt_answers(settings.mqtt.host, settings.mqtt.port),
            "address": settings.mqtt.url,
            "pid": mqtt_pid,
            "managed": mqtt_pid is not None,
            "from_env": settings.mqtt_from_env,
            "log": str(_out_file("mqtt")),
        },
    }


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="devstack", description="Start, stop or inspect otaflow's dev Kafka and Mosquitto."
    )
    parser.add_argument("command", choices=("up", "down", "status", "prune"))
    parser.add_argument("--json", action="store_true", help="print machine-readable output")
    parser.add_argument(
        "--deployment",
        metavar="NAME",
        help="prune: delete this deployment's topics and consumer groups (OTAFLOW_DEPLOYMENT)",
    )
    args = parser.parse_args(argv)
    if args.deployment and args.command != "prune":
        parser.error("--deployment goes with prune")
    try:
        if args.command == "up":
            started = time.monotonic()
            stack = up()
            elapsed = time.monotonic() - started
            if args.json:
                print(
                    json.dumps(
                        {
                            "kafka_bootstrap": stack.kafka_bootstrap,
                            "mqtt_url": config.MqttAddress.parse(stack.mqtt_url).url,
                            "seconds": round(elapsed, 2),
                        }
                    )
                )
            else:
                print(f"kafka  {stack.kafka_bootstrap}")
                print(f"mqtt   {config.MqttAddress.parse(stack.mqtt_url).url}")
                print(f"ready in {elapsed:.1f}s")
            return 0
        if args.command == "down":
            down()
            if not args.json:
                print("dev stack stopped")
            return 0
        if args.command == "prune" and args.deployment:
            try:
                count, groups, busy = prune_deployment(args.deployment)
            except ValueError as exc:
                print(f"devstack: {exc}", file=sys.stderr)
                return 2
            if args.json:
                print(json.dumps({"deleted_topics": count, "deleted_groups": groups, "busy": busy}))
            else:
                print(f"deployment {args.deployment}: deleted {count} topics, {len(groups)} groups")
                for group in busy:
                    print(f"group {group} still has members: stop its processes and prune again")
            return 1 if busy else 0
        if args.command == "prune":
            deleted = prune()
            print(
                json.dumps({"deleted_topics": deleted})
                if args.json
                else f"deleted {deleted} topics"
            )
            return 0
        report = status()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for name, info in report.items():
                state = "running" if info["running"] else "down"
                owner = (
                    f"pid {info['pid']}"
                    if info["pid"]
                    else ("external" if info["running"] else "-")
                )
                print(f"{name:<6} {state:<8} {info['address']:<24} {owner}")
        return 0 if all(info["running"] for info in report.values()) else 1
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
