"""The ``otaflow`` command.

otaflow up                 dev stack (unless URLs are given) + every process, foreground
otaflow demo               the main job: a rollout to 1,000 simulated devices, live
otaflow devstack up|down|status|prune
otaflow worker|ingress|egress|api|console   run one component (scale out by running more)
otaflow plan ...           what-if push schedule for a rate configuration
otaflow firmware|batch|task|device|group ...   operate through the OpenAPI
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from typing import Any

from otaflow import config, devstack, plan_cli, topics
from otaflow.processes import COMPONENTS, ProcessGroup


def cmd_up(args: argparse.Namespace) -> int:
    from otaflow.web.console import console_port

    stack = devstack.up()
    settings = config.load()
    env = {"OTAFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "OTAFLOW_MQTT_URL": stack.mqtt_url}
    topics.ensure_topics(stack.kafka_bootstrap, settings)
    print(
        f"otaflow up · Kafka {stack.kafka_bootstrap} · MQTT {stack.mqtt_url} · "
        f"API http://127.0.0.1:{settings.api_port} · packages {settings.package_base_url}"
        f" · console http://127.0.0.1:{console_port()}"
    )
    print("Ctrl-C stops everything.", flush=True)
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with ProcessGroup(env) as group:
        for name in COMPONENTS:
            group.start(name)
        while not stopping:
            exited = group.exited()
            if exited:
                print(f"otaflow up: a process stopped: {exited}; stopping the rest", flush=True)
                return 1
            time.sleep(0.5)
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
    up.set_defaults(func=cmd_up)
    for name in COMPONENTS:
        component = sub.add_parser(name, help=f"run the {name} process")
        component.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        component.set_defaults(func=cmd_component, component=name)
    stack = sub.add_parser("devstack", help="provision and start Kafka and Mosquitto on loopback")
    stack.add_argument("rest", nargs=argparse.REMAINDER, help="up | down | status [--json]")
    stack.set_defaults(func=cmd_devstack)
    plan_cli.add_parser(sub)
    bench = sub.add_parser("bench", help="run a benchmark scenario (all, smoke, ingest, ...)")
    bench.add_argument("scenario")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="--devices N, --out DIR")
    bench.set_defaults(func=cmd_bench)
    from otaflow import demo

    demo.add_parser(sub)
    try:
        ops_cli = importlib.import_module("otaflow.ops_cli")
    except ImportError:
        pass
    else:
        ops_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
