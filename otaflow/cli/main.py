"""The ``otaflow`` command.

otaflow up                 dev stack (unless URLs are given) + every process, foreground
otaflow demo               the main job: a rollout to 1,000 simulated devices, live
otaflow devstack up|down|status|prune
otaflow worker|ingress|egress|api|console   run one component (scale out by running more)
otaflow plan ...           what-if push schedule for a rate configuration
otaflow source check|try|peek FILE   a telemetry topic mapped onto version reports
otaflow firmware|batch|task|device|group ...   operate through the OpenAPI
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import time
from typing import Any

from otaflow import config, topics
from otaflow.cli import plan, source
from otaflow.dev import devstack
from otaflow.processes import COMPONENTS, ProcessGroup
from otaflow.supervision import Supervisor


def cmd_up(args: argparse.Namespace) -> int:
    from otaflow.web.console import console_port

    logging.basicConfig(level=logging.INFO, format="%(asctime)s otaflow up: %(message)s")
    stack = devstack.up()
    settings = config.load()
    env = {"OTAFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "OTAFLOW_MQTT_URL": stack.mqtt_url}
    # On the dev broker, otaflow runs on the registry's listener: devices log in with
    # their DeviceSecret and must be registered (a deleted one is refused), the broker
    # reports presence, otaflow's processes log in as the service (docs/edge.md). A
    # broker given in OTAFLOW_MQTT_URL is the operator's: presence as OTAFLOW_PRESENCE says.
    registry = not settings.mqtt_from_env
    if registry:
        if stack.mqtt_auth_url is None:
            print(
                "otaflow up: the dev broker has no registry listener (it was started "
                "before there was one): `otaflow devstack down` and try again",
                file=sys.stderr,
            )
            return 2
        env.update({"OTAFLOW_MQTT_URL": stack.mqtt_auth_url, "OTAFLOW_PRESENCE": "1"})
    topics.ensure_topics(stack.kafka_bootstrap, settings)
    mqtt = config.MqttAddress.parse(env["OTAFLOW_MQTT_URL"]).url
    presence = (
        "on"
        if registry or settings.presence
        else "off (a device counts as online from its last message)"
    )
    print(
        f"otaflow up · Kafka {stack.kafka_bootstrap} · MQTT {mqtt} · "
        f"API http://127.0.0.1:{settings.api_port} · packages {settings.package_base_url} · "
        f"console http://127.0.0.1:{console_port()} · presence {presence}"
    )
    print("Ctrl-C stops everything.", flush=True)
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with ProcessGroup(env) as group:
        # A component that exits is started again on its own (with backoff), never
        # taking the others down with it (otaflow.supervision).
        commands = {}
        names = list(COMPONENTS)
        if registry:
            names.append("registry-sync")
            commands["registry-sync"] = [
                "-m",
                "otaflow.edge.registry_sync",
                "--file",
                str(devstack.edge_devices_file()),
            ]
        supervisor = Supervisor(group, names, commands=commands)
        supervisor.start_all()
        while not stopping:
            supervisor.check()
            time.sleep(0.2)
        print("otaflow up: stopping", flush=True)
    return 0


def cmd_component(args: argparse.Namespace) -> int:
    module = importlib.import_module(COMPONENTS[args.component][1])
    if args.component in ("ingress", "egress", "file-download"):
        module.main(args.rest)  # they take their own options (--client-id, ...)
        return 0
    return int(module.main() or 0)


def cmd_devstack(args: argparse.Namespace) -> int:
    return devstack.main(args.rest)


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks import run

    return run.main([args.scenario, *args.rest])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otaflow", description="OTA update batches over Kafka")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the dev stack and every otaflow process (foreground)")
    # What --edge did is the default now; still taken so older instructions work.
    up.add_argument("--edge", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    for name in COMPONENTS:
        component = sub.add_parser(name, help=f"run the {name} process")
        component.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        component.set_defaults(func=cmd_component, component=name)
    stack = sub.add_parser("devstack", help="provision and start Kafka and Mosquitto on loopback")
    stack.add_argument("rest", nargs=argparse.REMAINDER, help="up | down | status [--json]")
    stack.set_defaults(func=cmd_devstack)
    plan.add_parser(sub)
    source.add_parser(sub)
    bench = sub.add_parser("bench", help="run a benchmark scenario (all, smoke, ingest, ...)")
    bench.add_argument("scenario")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="--devices N, --out DIR")
    bench.set_defaults(func=cmd_bench)
    from otaflow.dev import demo

    demo.add_parser(sub)
    try:
        ops = importlib.import_module("otaflow.cli.ops")
    except ImportError:
        pass
    else:
        ops.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
