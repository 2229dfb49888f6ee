"""Property-based: the device engine against a small reference model.

Hypothesis runs random sequences of reports (versions, progress, asks, presence),
pushes released by the rate agent, registrations and group changes, batch starts,
confirmations, re-upgrades, cancels, source-version and timeout updates, and ticks
of minutes to days, through the code the device agent runs (``EnvelopePartition``
below: every record encoded with the real codec and applied in its own envelope
through ``streams.envelope_store.EnvelopeStore`` over encoded states, with the byte
paths: a plain device's version report spliced in bytes, a fleet-wide START's plain
devices spliced in bytes; the real ``PartitionEngine``, needle-filtered scans, the
deadline heap) and through ``Model`` below, and requires the same task events,
notifications and push queue, device by device, after every step, and the same tasks
at the end. ``test_the_byte_paths_are_taken`` makes sure the byte paths do run.

The model is a direct transcription of the rules, written for obviousness, not
speed: it looks at every device on every tick and every scan, at every batch on
every match, keeps no index, and shares no code with the engine except the
expression evaluator of dynamic groups (tested on its own in test_groups) and the
task-id naming.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otaflow.codec import codec
from otaflow.device_avro import decode_device_state, encode_tasks_queued_from
from otaflow.device_keys import device_key
from otaflow.domain.batches import Batch, BatchKind, BatchScope, BatchStatus
from otaflow.domain.devices import DeviceState
from otaflow.domain.engine import KEEP_FINISHED_TASKS, Effects, make_task_id
from otaflow.domain.groups import compile_expression
from otaflow.domain.simulation import (
    DAY,
    HOUR,
    MINUTE,
    Partition,
    dynamic_batch,
    firmware,
    group_batch,
    make_batch,
)
from streams.device_envelopes import DevicePartition, EnvelopeRun
from streams.envelope_store import EnvelopeStore

CODEC = codec()

PK = "pk"
DEVICES = ("d0", "d1", "d2")
MODULES = ("default", "mcu")
VERSIONS = ("1.0", "1.1", "2.0", "3.0")
PENDING = ("CONFIRM", "QUEUED", "NOTIFIED")
ACTIVE = ("CONFIRM", "QUEUED", "NOTIFIED", "IN_PROGRESS")
REASONS = {
    -1: "update failed",
    -2: "download failed",
    -3: "verification failed",
    -4: "flashing failed",
}
EXPRESSIONS = (
    "province = 'zj'",
    "ota_module.name = 'default' and ota_module.version = '1.0'",
    "name in ('d0', 'd2')",
    "group_id = 'sg-sub' or city = 'hz'",
)
STATIC_PARENTS = {"sg": None, "sg-sub": "sg", "other": None}

TEMPLATES: dict[str, Batch] = {
    "V1": dynamic_batch(
        "V1",
        ["1.0"],
        fw=firmware("2.0", firmware_id="f-v1"),
        retry_interval_minutes=10,
        retry_count=2,
        timeout_minutes=30,
    ),
    "V2": dynamic_batch(
        "V2",
        ["1.0", "1.1"],
        fw=firmware("2.0", firmware_id="f-v2"),
        overwrite_mode=2,
        need_confirm=True,
    ),
    "G": group_batch(
        "G",
        "dg",
        fw=firmware("2.0", firmware_id="f-g"),
        retry_interval_minutes=0,
        retry_count=1,
        timeout_minutes=45,
    ),
    "G2": group_batch(
        "G2", "dg2", fw=firmware("3.0", module="mcu", firmware_id="f-g2"), multi_module=True
    ),
    "M": dynamic_batch(
        "M",
        ["1.0"],
        fw=firmware("2.0", module="mcu", firmware_id="f-m"),
        multi_module=True,
        timeout_minutes=60,
    ),
    "DM2": dynamic_batch(
        "DM2", ["1.1"], fw=firmware("3.0", firmware_id="f-dm2"), dynamic_mode=2, need_push=False
    ),
    "S": make_batch("S", fw=firmware("3.0", firmware_id="f-s"), need_push=False),
    "R": make_batch(
        "R",
        scope=BatchScope.REGIONAL,
        region="zj",
        fw=firmware("3.0", firmware_id="f-r"),
        overwrite_mode=2,
        retry_interval_minutes=60,
        retry_count=1,
        timeout_minutes=120,
    ),
    "SG": make_batch(
        "SG",
        scope=BatchScope.GROUP,
        group_id="sg",
        group_type="STATIC",
        fw=firmware("3.0", module="mcu", firmware_id="f-sg"),
    ),
    "SCH": make_batch("SCH", fw=firmware("3.0", firmware_id="f-sch")),
    "TGT": make_batch(
        "TGT", scope=BatchScope.TARGETED, fw=firmware("2.0", src_version="1.1", firmware_id="f-t")
    ),
}


def instantiate(name: str, now: int) -> Batch:
    batch = TEMPLATES[name].with_changes(created_at=now, updated_at=now)
    if name == "SCH":
        batch = batch.with_changes(
            schedule_start=now + HOUR, schedule_end=now + 3 * HOUR, status=BatchStatus.PLANNED
        )
    return batch


# -- the reference model ---------------------------------------------------------------------


@dataclass
class MTask:
    task_id: str
    batch_id: str
    module: str
    dest: str
    src: str | None
    status: str
    timeout: int | None
    retries_left: int
    progress: int = 0
    desc: str = ""
    first: int | None = None
    retry_at: int | None = None
    in_queue: bool = False


@dataclass
class MDevice:
    name: str
    online: bool = False
    last_seen: int = 0
    modules: dict[str, str] = field(default_factory=dict)
    tasks: list[MTask] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    matched: set[str] = field(default_factory=set)  # group batches matched since joining
    province: str | None = None
    city: str | None = None
    groups: list[str] = field(default_factory=list)
    registered: bool = False


class Model:
    def __init__(self) -> None:
        self.devices: dict[str, MDevice] = {}
        self.batches: dict[str, Batch] = {}
        self.expressions: dict[str, str] = {}
        self.events: list[tuple[Any, ...]] = []
        self.notes: list[tuple[Any, ...]] = []
        self.queue: deque[tuple[str, str, str]] = deque()  # (batch, task, device)

    # helpers
    def emit(self, dev: MDevice, t: MTask, now: int) -> None:
        self.events.append((dev.name, t.task_id, t.batch_id, t.status, t.progress, t.desc, now))

    def move(self, dev: MDevice, t: MTask, to: str, now: int, desc: str | None = None) -> None:
        t.status = to
        if desc is not None:
            t.desc = desc
        if to != "QUEUED":
            t.in_queue = False
        if to != "FAILED":
            t.retry_at = None
        self.emit(dev, t, now)

    def started(self, b: Batch, now: int) -> bool:
        return b.schedule_start is None or now >= b.schedule_start

    def ended(self, b: Batch, now: int) -> bool:
        return b.schedule_end is not None and now >= b.schedule_end

    def takes_new(self, b: Batch, now: int) -> bool:
        if b.kind is BatchKind.DYNAMIC:
            return b.status is BatchStatus.IN_PROGRESS and b.strategy_active
        return b.status in (BatchStatus.PLANNED, BatchStatus.IN_PROGRESS) and not self.ended(b, now)

    def accepts(self, b: Batch, version: str | None) -> bool:
        if version is None or version == b.firmware.version:
            return False
        if b.firmware.is_diff:
            return version == b.firmware.src_version
        return not b.src_versions or version in b.src_versions

    def push_if_possible(self, dev: MDevice, t: MTask, now: int) -> None:
        b = self.batches.get(t.batch_id)
        if (
            t.status == "QUEUED"
            and not t.in_queue
            and dev.online
            and b is not None
            and b.need_push
            and self.started(b, now)
        ):
            t.in_queue = True
            self.queue.append((t.batch_id, t.task_id, dev.name))

    def admit(self, dev: MDevice, b: Batch, may_cancel: bool = True) -> list[MTask] | None:
        act = [t for t in dev.tasks if t.status in ACTIVE]
        if b.multi_module:
            same = [t for t in act if t.module == b.module]
            if any(t.status == "IN_PROGRESS" for t in same):
                return None
            if len({t.module for t in act if t.module != b.module}) >= 5:
                return None
            cancels = [t for t in same if t.status in PENDING]
        else:
            if any(t.status == "IN_PROGRESS" for t in act):
                return None
            cancels = [t for t in act if t.status in PENDING]
            if cancels and b.overwrite_mode != 2:
                return None
        if cancels and not may_cancel:
            return None
        return cancels

    def has_active(self, dev: MDevice, batch_id: str) -> bool:
        return any(t.batch_id == batch_id and t.status in ACTIVE for t in dev.tasks)

    def timer(self, t: MTask) -> int | None:
        if t.status == "FAILED" and t.retry_at is not None:
            return t.retry_at
        if t.status in ("QUEUED", "NOTIFIED", "IN_PROGRESS"):
            return self.deadline(t)
        return None

    def deadline(self, t: MTask) -> int | None:
        # One timeout per task, from its first progress report: retries do not restart it.
        return t.first + t.timeout * MINUTE if t.timeout and t.first is not None else None

    # time
    def advance(self, dev: MDevice, now: int) -> None:
        for t in dev.tasks:
            b = self.batches.get(t.batch_id)
            if b is not None and t.status in PENDING and self.ended(b, now):
                self.move(dev, t, "CANCELED", now, "schedule ended before the update started")
        due = []
        for i, t in enumerate(dev.tasks):
            at = self.timer(t)
            if at is not None and at <= now:
                due.append((at, i))
        for _, i in sorted(due):
            t = dev.tasks[i]
            if t.status == "FAILED":
                t.retry_at = None
                b = self.batches.get(t.batch_id)
                deadline = self.deadline(t)
                if (
                    b is None
                    or self.ended(b, now)
                    or (deadline is not None and now >= deadline)
                    or self.has_active(dev, b.batch_id)
                    or self.admit(dev, b, may_cancel=False) is None
                ):
                    continue
                t.retries_left -= 1
                t.progress = 0
                self.move(dev, t, "QUEUED", now, "retry")
            else:
                self.move(dev, t, "FAILED", now, "timeout")
        for t in dev.tasks:
            self.push_if_possible(dev, t, now)

    # matching
    def device_view(self, dev: MDevice) -> DeviceState:
        return DeviceState(
            PK,
            dev.name,
            modules=dict(dev.modules),
            province=dev.province,
            city=dev.city,
            groups=list(dev.groups),
        )

    def create(self, dev: MDevice, b: Batch, now: int) -> None:
        cancels = self.admit(dev, b)
        if cancels is None:
            return
        for old in cancels:
            self.move(dev, old, "CANCELED", now, f"overridden by batch {b.batch_id}")
        for old in dev.tasks:
            if old.batch_id == b.batch_id:
                old.retry_at = None
        number = 1
        if b.kind is BatchKind.DYNAMIC:
            number = dev.counts.get(b.batch_id, 0) + 1
            dev.counts[b.batch_id] = number
            if b.scope is BatchScope.GROUP:
                dev.matched.add(b.batch_id)
        t = MTask(
            task_id=make_task_id(b.batch_id, f"{PK}/{dev.name}", number),
            batch_id=b.batch_id,
            module=b.module,
            dest=b.firmware.version,
            src=dev.modules.get(b.module),
            status="CONFIRM" if b.need_confirm else "QUEUED",
            timeout=b.timeout_minutes,
            retries_left=b.retry_count if b.retry_interval_minutes is not None else 0,
        )
        dev.tasks.append(t)
        self.emit(dev, t, now)
        self.push_if_possible(dev, t, now)

    def match_dynamic(
        self, dev: MDevice, now: int, version_module: str | None, only: Batch | None = None
    ) -> None:
        group_batches = [
            b
            for b in self.batches.values()
            if b.kind is BatchKind.DYNAMIC
            and b.scope is BatchScope.GROUP
            and self.takes_new(b, now)
        ]
        live = {b.group_id for b in group_batches}
        view = self.device_view(dev)
        member = {
            g
            for g in live
            if g in self.expressions and compile_expression(self.expressions[g])(view)
        }
        for batch_id in list(dev.matched):
            b = self.batches[batch_id]
            if b.group_id in live and b.group_id not in member:
                dev.matched.discard(batch_id)  # left the group: a rejoin matches again
        if only is not None:
            modules = [only.module]
        else:
            wanted = {b.module for b in group_batches if b.group_id in member}
            if version_module is not None:
                wanted.add(version_module)
            modules = sorted(wanted)
        for module in modules:
            found = []
            for b in self.batches.values():
                if b.kind is not BatchKind.DYNAMIC or b.module != module:
                    continue
                if not self.takes_new(b, now) or not self.accepts(b, dev.modules.get(module)):
                    continue
                if b.dynamic_mode == 2 and now < b.created_at:
                    continue
                if self.has_active(dev, b.batch_id):
                    found.append(b)
                elif b.scope is BatchScope.GROUP:
                    if b.group_id in member and b.batch_id not in dev.matched:
                        found.append(b)
                elif module == version_module and dev.counts.get(b.batch_id, 0) < 10:
                    found.append(b)
            if not found:
                continue
            top = max(found, key=lambda b: (b.scope is BatchScope.GROUP, b.created_at, b.batch_id))
            if only is not None and top.batch_id != only.batch_id:
                continue
            if not self.has_active(dev, top.batch_id):
                self.create(dev, top, now)

    def subtree(self, group_id: str) -> set[str]:
        out = {group_id}
        changed = True
        while changed:
            changed = False
            for g, parent in STATIC_PARENTS.items():
                if parent in out and g not in out:
                    out.add(g)
                    changed = True
        return out

    def offer_static(self, dev: MDevice, b: Batch, now: int) -> None:
        if (
            self.takes_new(b, now)
            and not any(t.batch_id == b.batch_id for t in dev.tasks)
            and self.accepts(b, dev.modules.get(b.module))
        ):
            self.create(dev, b, now)

    def in_scope(self, dev: MDevice, b: Batch) -> bool:
        if b.scope is BatchScope.ALL:
            return True
        if b.scope is BatchScope.REGIONAL:
            return dev.province == b.region and (b.city is None or dev.city == b.city)
        if b.scope is BatchScope.GROUP:
            tree = self.subtree(b.group_id or "")
            return any(g in tree for g in dev.groups)
        return False

    def current(self, dev: MDevice, module: str, now: int) -> MTask | None:
        for t in reversed(dev.tasks):
            b = self.batches.get(t.batch_id)
            if (
                t.module == module
                and t.status in ("QUEUED", "NOTIFIED", "IN_PROGRESS")
                and b is not None
                and self.started(b, now)
            ):
                return t
        return None

    # records
    def report(self, name: str, kind: str, now: int, module: str = "default", **f: Any) -> None:
        dev = self.devices.setdefault(name, MDevice(name))
        self.advance(dev, now)
        was_online = dev.online
        dev.last_seen = max(dev.last_seen, now)
        if kind == "OFFLINE":
            if now >= dev.last_seen:  # an older OFFLINE is stale
                dev.online = False
            dev.last_seen = max(dev.last_seen, now)
            return
        dev.last_seen = max(dev.last_seen, now)
        dev.online = True
        if kind == "VERSION":
            version = f["version"]
            dev.modules[module] = version
            for t in dev.tasks:
                busy = t.status in ("QUEUED", "NOTIFIED", "IN_PROGRESS")
                if t.module == module and busy and version == t.dest:
                    t.progress = 100
                    self.move(dev, t, "SUCCEEDED", now, "")
            self.match_dynamic(dev, now, version_module=module)
        elif kind == "PROGRESS":
            task = self.current(dev, module, now)
            if task is not None:
                step = f["step"]
                if task.first is None:
                    task.first = now
                if step < 0:
                    self.move(dev, task, "FAILED", now, REASONS[step])
                    interval = self.batches[task.batch_id].retry_interval_minutes
                    deadline = self.deadline(task)
                    if (
                        interval is not None
                        and task.retries_left > 0
                        and (deadline is None or now + interval * MINUTE < deadline)
                    ):
                        task.retry_at = now + interval * MINUTE
                elif task.status == "IN_PROGRESS":
                    if min(step, 100) != task.progress:
                        task.progress = min(step, 100)
                        self.emit(dev, task, now)
                else:
                    task.progress = min(step, 100)
                    self.move(dev, task, "IN_PROGRESS", now)
        elif kind == "FIRMWARE_GET":
            asked = self.current(dev, module, now)
            if asked is None:
                self.notes.append((name, "PULL_REPLY", None))
            else:
                if asked.status == "QUEUED":
                    self.move(dev, asked, "NOTIFIED", now)
                self.notes.append((name, "PULL_REPLY", asked.task_id))
        if kind == "ONLINE" or (not was_online and kind == "VERSION"):
            self.offer_again(dev, now, ("NOTIFIED", "IN_PROGRESS"), None)
        elif kind == "VERSION":
            self.offer_again(dev, now, ("NOTIFIED",), module)
        self.advance(dev, now)

    def offer_again(
        self, dev: MDevice, now: int, statuses: tuple[str, ...], module: str | None
    ) -> None:
        """Pushed tasks wait for a push slot again (metered like a first push)."""
        for t in dev.tasks:
            of = self.batches.get(t.batch_id)
            if t.status not in statuses or t.in_queue or (module and t.module != module):
                continue
            if of is not None and of.need_push and self.started(of, now):
                t.in_queue = True
                self.queue.append((t.batch_id, t.task_id, dev.name))

    def release(self, name: str, now: int) -> None:
        mine = sorted((q for q in self.queue if q[2] == name), key=lambda q: q[0])
        self.queue = deque(q for q in self.queue if q[2] != name)
        for _, task_id, _ in mine:
            dev = self.devices.get(name)
            if dev is None:
                continue
            self.advance(dev, now)
            t = next((t for t in dev.tasks if t.task_id == task_id), None)
            releasable = ("QUEUED", "NOTIFIED", "IN_PROGRESS")
            if t is None or t.status not in releasable or not t.in_queue:
                continue
            t.in_queue = False
            b = self.batches.get(t.batch_id)
            if not dev.online or b is None or not self.started(b, now):
                continue
            if t.status == "QUEUED":
                self.move(dev, t, "NOTIFIED", now)
            self.notes.append((name, "PUSH", t.task_id))

    def tick(self, now: int) -> None:
        for name in sorted(self.devices):
            self.advance(self.devices[name], now)

    def start(self, b: Batch, now: int) -> None:
        self.batches[b.batch_id] = b
        if b.kind is BatchKind.STATIC:
            if b.scope is BatchScope.TARGETED or not self.takes_new(b, now):
                return
            for name in sorted(self.devices):
                dev = self.devices[name]
                self.advance(dev, now)
                if self.in_scope(dev, b):
                    self.offer_static(dev, b, now)
            return
        if b.dynamic_mode == 2 or not self.takes_new(b, now):
            return
        for name in sorted(self.devices):
            self.advance(self.devices[name], now)
            self.match_dynamic(self.devices[name], now, b.module, only=b)

    def update(self, b: Batch, now: int) -> None:
        old = self.batches[b.batch_id]
        self.batches[b.batch_id] = b
        added = set(b.src_versions) - set(old.src_versions)
        if b.scope is BatchScope.GROUP or b.dynamic_mode == 2 or not self.takes_new(b, now):
            return
        for name in sorted(self.devices):
            dev = self.devices[name]
            if dev.modules.get(b.module) in added:
                self.advance(dev, now)
                self.match_dynamic(dev, now, b.module, only=b)

    def cancel_tasks(self, b: Batch, statuses: list[str], now: int) -> None:
        self.batches[b.batch_id] = b
        for name in sorted(self.devices):
            dev = self.devices[name]
            if not any(t.batch_id == b.batch_id for t in dev.tasks):
                continue
            self.advance(dev, now)
            for t in dev.tasks:
                if t.batch_id != b.batch_id:
                    continue
                if t.status in statuses and t.status in ACTIVE:
                    self.move(dev, t, "CANCELED", now, "canceled by operator")
                elif t.status == "FAILED" and t.retry_at is not None and "QUEUED" in statuses:
                    t.retry_at = None

    def group_expression(self, group_id: str, expression: str, now: int) -> None:
        changed = self.expressions.get(group_id) != expression
        self.expressions[group_id] = expression
        if not changed or not any(
            b.group_id == group_id and b.kind is BatchKind.DYNAMIC and self.takes_new(b, now)
            for b in self.batches.values()
        ):
            return
        for name in sorted(self.devices):
            self.advance(self.devices[name], now)
            self.match_dynamic(self.devices[name], now, None)

    def register(self, name: str, now: int, province: str | None, groups: list[str]) -> None:
        dev = self.devices.setdefault(name, MDevice(name))
        self.advance(dev, now)
        dev.registered = True
        dev.province = province
        dev.city = "hz" if province == "zj" else None
        dev.groups = list(groups)
        self.match_dynamic(dev, now, None)
        self.advance(dev, now)

    def delete(self, name: str, now: int) -> None:
        dev = self.devices.pop(name, None)
        if dev is None:
            return
        self.advance(dev, now)
        for t in dev.tasks:
            if t.status in ACTIVE:
                self.move(dev, t, "CANCELED", now, "device deleted")

    def command(self, action: str, name: str, batch_id: str, now: int) -> None:
        dev = self.devices.get(name)
        if dev is None:
            return
        self.advance(dev, now)
        for t in list(dev.tasks):
            if t.batch_id != batch_id:
                continue
            if action == "CONFIRM" and t.status == "CONFIRM":
                self.move(dev, t, "QUEUED", now, "")
            elif action == "CANCEL" and t.status in ("QUEUED", "NOTIFIED", "IN_PROGRESS"):
                self.move(dev, t, "CANCELED", now, "canceled by operator")
            elif action == "REUPGRADE" and t.status in ("FAILED", "CANCELED"):
                b = self.batches.get(batch_id)
                if (
                    b is None
                    or self.ended(b, now)
                    or self.has_active(dev, batch_id)
                    or self.admit(dev, b, may_cancel=False) is None
                ):
                    continue
                t.progress = 0
                t.first = None
                t.retry_at = None
                t.retries_left = b.retry_count if b.retry_interval_minutes is not None else 0
                # A batch that needs the app's confirmation asks again, like a new task.
                self.move(dev, t, "CONFIRM" if b.need_confirm else "QUEUED", now, "reupgrade")
        self.advance(dev, now)

    def target(self, name: str, batch_id: str, now: int) -> None:
        dev = self.devices.get(name)
        b = self.batches.get(batch_id)
        if dev is None or b is None:
            return
        self.advance(dev, now)
        self.offer_static(dev, b, now)


# -- driving both ---------------------------------------------------------------------------

device = st.sampled_from(DEVICES)
module = st.sampled_from(MODULES)
template = st.sampled_from(sorted(TEMPLATES))
VERSION = st.tuples(st.just("version"), device, module, st.sampled_from(VERSIONS))
PROGRESS = st.tuples(
    st.just("progress"), device, module, st.sampled_from([-4, -3, -2, -1, 1, 50, 100])
)
PRESENCE = st.one_of(
    st.tuples(st.just("ask"), device, module),
    st.tuples(st.just("online"), device),
    st.tuples(st.just("offline"), device),
)
RELEASE = st.one_of(st.tuples(st.just("release"), device), st.just(("release_all",)))
TICK = st.tuples(st.just("tick"), st.sampled_from([MINUTE, 10 * MINUTE, 31 * MINUTE, HOUR, DAY]))
# Steps resolved against the current state: the k-th device with a pushed task reports
# progress on it, or the version it was updating to.
WORK = st.one_of(
    st.tuples(st.just("work"), st.integers(0, 5), st.sampled_from([-4, -2, -1, 1, 30, 100])),
    st.tuples(st.just("succeed"), st.integers(0, 5)),
)
# A scheduled batch from creation to its end: held, started, pushed, partly begun, ended.
SCHEDULE = st.tuples(st.just("schedule"), st.integers(0, 5))
# A device failing over and over: fail its pushed task, let time pass, report its
# version again (a rematch), get pushed again: retries, the match cap, timeouts.
CYCLE = st.tuples(
    st.just("cycle"),
    st.integers(0, 5),
    st.sampled_from([3, 11]),
    st.sampled_from([0, 11 * MINUTE, 61 * MINUTE]),
    st.sampled_from([-1, 1]),
    st.booleans(),  # the connection flaps after each progress report
)
CONTROL = st.one_of(
    st.tuples(st.just("start"), template),
    st.tuples(st.just("target"), device),
    st.tuples(
        st.just("command"), st.sampled_from(["CONFIRM", "REUPGRADE", "CANCEL"]), device, template
    ),
    st.tuples(
        st.just("cancel_tasks"),
        template,
        st.lists(st.sampled_from(ACTIVE), min_size=1, max_size=4, unique=True),
    ),
    st.tuples(st.just("cancel_strategy"), st.sampled_from(["V1", "V2", "G", "M", "DM2"])),
    st.tuples(st.just("add_version"), st.sampled_from(["1.1", "2.0", "3.0"])),
    st.tuples(st.just("timeout"), st.sampled_from([None, 5, 90])),
    st.tuples(
        st.just("register"),
        device,
        st.sampled_from(["zj", "js", None]),
        st.lists(st.sampled_from(sorted(STATIC_PARENTS)), max_size=2, unique=True),
    ),
    st.tuples(st.just("expression"), st.sampled_from(["dg", "dg2"]), st.sampled_from(EXPRESSIONS)),
    st.tuples(st.just("delete"), device),
)
# Pushes, progress, versions and the passing of time dominate, as in a real rollout.
OPS = st.one_of(
    *[RELEASE] * 2,
    *[WORK] * 3,
    PROGRESS,
    *[VERSION] * 2,
    *[TICK] * 3,
    PRESENCE,
    *[CONTROL] * 2,
    CYCLE,
)
# A fleet to start from: each device's versions, region, groups and presence.
FLEET = st.lists(
    st.tuples(
        st.sampled_from(["1.0", "1.1"]),
        st.sampled_from(["1.0", "1.1", None]),
        st.sampled_from(["zj", "js", None]),
        st.lists(st.sampled_from(sorted(STATIC_PARENTS)), max_size=2, unique=True),
        st.sampled_from([True, True, False]),
    ),
    min_size=len(DEVICES),
    max_size=len(DEVICES),
)
STARTS = st.lists(template, min_size=1, max_size=5, unique=True)


class EnvelopePartition(Partition):
    """``Partition`` run as the device agent runs a partition (``streams.device_agent``'s
    ``EnvelopeRun``): each record encoded, in an envelope of its own, through an
    ``EnvelopeStore`` over the partition's encoded states, and its writes stored as bytes.

    Each record goes through the agent's own ``streams.device_envelopes.EnvelopeRun``, so a
    version report takes the byte path exactly where the agent's does (its gate and
    cache, not a copy of them). A START's byte-path task events
    come before the engine's, as the agent sends them. ``byte_paths`` counts both.
    """

    def __init__(self, keep_finished: int = KEEP_FINISHED_TASKS) -> None:
        super().__init__(keep_finished)
        self.table: dict[bytes, bytes] = {}
        self.byte_paths: Counter[str] = Counter()

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        # RocksDB's prefix scan: in key order.
        return iter([(k, v) for k, v in sorted(self.table.items()) if k.startswith(prefix)])

    def apply(self, name: str, record: dict[str, Any]) -> Effects:
        store = EnvelopeStore(self.table.get, self._scan)
        view = DevicePartition(
            0,
            self.batches,
            self.groups,
            {},
            0,
            deadlines=self.deadlines,
            open_tasks=self.open_tasks,
        )
        run = EnvelopeRun(view, store, lambda key, value: None, self.keep_finished)
        engine = run.engine
        run.apply(CODEC.encode(name, record), -1, -1)
        assert not run.dead
        fx = run.fx
        if name == "DeviceReport" and store.spliced:
            self.byte_paths["version report"] += 1
        self.deadlines = engine.deadlines
        started = [CODEC.decode_as("TaskEvent", e["value"]) for e in store.task_events]
        self.byte_paths["start"] += len(started)
        for batch_id, entries in store.queued.items():
            # The byte path's push-queue entries, read back as the rate agent reads them.
            queued = CODEC.decode_as("RateEvent", encode_tasks_queued_from(batch_id, entries, 0))
            self.push_queue.extend((batch_id, t) for t in queued["body"][1]["tasks"])
        for written, raw in store.writes():
            if raw is None:
                self.table.pop(written, None)
            else:
                self.table[written] = raw
        store.clear()
        self.events += started
        self.events.extend(e for _, e in fx.task_events)
        self.notifications.extend(n for _, n in fx.notifications)
        for batch_id, tasks in fx.queued.items():
            self.push_queue.extend((batch_id, t) for t in tasks)
        self.succeeded.update(fx.succeeded)
        self.last_effects = fx
        return fx

    def state(self, dn: str, pk: str = PK) -> DeviceState:
        return decode_device_state(self.table[device_key(pk, dn).encode()])

    def has_device(self, dn: str, pk: str = PK) -> bool:
        return device_key(pk, dn).encode() in self.table


class Both:
    """Applies each step to the engine and the model at the same event time."""

    def __init__(self) -> None:
        self.engine = EnvelopePartition(keep_finished=10_000)
        self.model = Model()
        self.now = 1_000_000_000
        self.started: dict[str, Batch] = {}
        for gid, parent in STATIC_PARENTS.items():
            self.engine.group(gid, self.now, parent_id=parent)
        for gid, expression in (("dg", EXPRESSIONS[0]), ("dg2", EXPRESSIONS[3])):
            self.engine.group(gid, self.now, expression=expression)
            self.model.expressions[gid] = expression
        self.seen_events = 0
        self.seen_notes = 0
        self.seen_model_events = 0
        self.seen_model_notes = 0

    def tick_both(self) -> None:
        self.engine.tick(self.now)
        self.model.tick(self.now)

    def step(self, op: tuple[Any, ...]) -> None:
        self.now += 1
        e, m, now = self.engine, self.model, self.now
        kind = op[0]
        if kind == "version":
            e.version(op[1], op[3], now, module=op[2])
            m.report(op[1], "VERSION", now, module=op[2], version=op[3])
        elif kind == "progress":
            e.progress(op[1], op[3], now, module=op[2])
            m.report(op[1], "PROGRESS", now, module=op[2], step=op[3])
        elif kind == "ask":
            e.ask(op[1], now, module=op[2])
            m.report(op[1], "FIRMWARE_GET", now, module=op[2])
        elif kind in ("online", "offline"):
            e.report(op[1], kind.upper(), now)
            m.report(op[1], kind.upper(), now)
        elif kind == "release":
            self.release(op[1])
        elif kind == "release_all":
            for name in DEVICES:
                self.release(name)
        elif kind == "schedule":
            for sub in [
                ("start", "SCH"),
                ("tick", HOUR),
                ("release_all",),
                ("work", op[1], 30),
                ("tick", HOUR),
                ("tick", HOUR),
            ]:
                self.step(sub)
        elif kind in ("work", "succeed", "cycle"):
            busy = [
                (name, t)
                for name, dev in sorted(m.devices.items())
                for t in dev.tasks
                if t.status in ("NOTIFIED", "IN_PROGRESS")
            ]
            if not busy:
                return
            name, task = busy[op[1] % len(busy)]
            if kind == "cycle":
                for _ in range(op[2]):
                    self.step(("work", op[1], op[4]))
                    if op[5]:
                        self.step(("offline", name))
                        self.step(("online", name))
                    self.step(("tick", op[3]))
                    if task.src is not None:
                        self.step(("version", name, task.module, task.src))
                    self.step(("release", name))
                return
            if kind == "work":
                self.step(("progress", name, task.module, op[2]))
            else:
                self.step(("version", name, task.module, task.dest))
        elif kind == "tick":
            self.now += op[1]
            self.tick_both()
        elif kind == "start":
            if op[1] in self.started:
                return
            batch = self.started[op[1]] = instantiate(op[1], now)
            self.tick_both()
            e.start(batch, now)
            m.start(batch, now)
        elif kind == "target":
            e.target("TGT", op[1], now)
            m.target(op[1], "TGT", now)
        elif kind == "command":
            e.command(op[1], op[2], now, batch_id=op[3])
            m.command(op[1], op[2], op[3], now)
        elif kind == "cancel_tasks":
            if op[1] not in self.started:
                return
            self.tick_both()
            e.control("CANCEL_TASKS", self.started[op[1]], now, statuses=op[2])
            m.cancel_tasks(self.started[op[1]], op[2], now)
        elif kind == "cancel_strategy":
            if op[1] not in self.started:
                return
            batch = self.started[op[1]] = self.started[op[1]].with_changes(
                status=BatchStatus.CANCELED, strategy_active=False
            )
            self.tick_both()
            e.control("CANCEL_STRATEGY", batch, now)
            m.batches[batch.batch_id] = batch
        elif kind in ("add_version", "timeout"):
            if "V1" not in self.started:
                return
            old = self.started["V1"]
            if kind == "add_version":
                batch = old.with_changes(src_versions=(*old.src_versions, op[1]))
            else:
                batch = old.with_changes(timeout_minutes=op[1])
            self.started["V1"] = batch
            self.tick_both()
            e.control("UPDATE", batch, now)
            m.update(batch, now)
        elif kind == "register":
            city = "hz" if op[2] == "zj" else None
            e.register(op[1], now, province=op[2], city=city, groups=op[3])
            m.register(op[1], now, op[2], op[3])
        elif kind == "expression":
            self.tick_both()
            e.group(op[1], now, expression=op[2])
            m.group_expression(op[1], op[2], now)
        elif kind == "delete":
            e.register(op[1], now, action="DELETE")
            m.delete(op[1], now)

    def release(self, name: str) -> None:
        e = self.engine
        # Batch by batch (each batch has its own queue; the order across them is free).
        mine = sorted((q for q in e.push_queue if q[1]["device_name"] == name), key=lambda q: q[0])
        e.push_queue = deque(q for q in e.push_queue if q[1]["device_name"] != name)
        for batch_id, task in mine:
            e.apply("TaskRelease", {"batch_id": batch_id, "event_time": self.now, **task})
        self.model.release(name, self.now)

    def check(self, where: str) -> None:
        e, m = self.engine, self.model
        for name in DEVICES:
            engine_events = [
                (
                    ev["device_name"],
                    ev["task_id"],
                    ev["batch_id"],
                    ev["status"],
                    ev["progress"],
                    ev["desc"],
                    ev["event_time"],
                )
                for ev in e.events
                if ev["device_name"] == name
            ]
            model_events = [ev for ev in m.events if ev[0] == name]
            assert engine_events == model_events, f"{where}: task events of {name} differ"
            engine_notes = [
                (n["device_name"], n["kind"], n["task_id"])
                for n in e.notifications
                if n["device_name"] == name
            ]
            model_notes = [n for n in m.notes if n[0] == name]
            assert engine_notes == model_notes, f"{where}: notifications of {name} differ"
            # Each batch has its own push queue (the rate agent meters batches apart):
            # the order within a batch matters, not across batches.
            engine_queue = sorted(
                ((b, t["task_id"]) for b, t in e.push_queue if t["device_name"] == name),
                key=lambda q: q[0],
            )
            model_queue = sorted(((b, t) for b, t, dn in m.queue if dn == name), key=lambda q: q[0])
            assert engine_queue == model_queue, f"{where}: push queue of {name} differs"
        # Each device's stored state too: the byte paths write it without the engine.
        self.check_states(where)

    def check_states(self, where: str = "at the end") -> None:
        for name in DEVICES:
            dev = self.model.devices.get(name)
            if dev is None:
                assert not self.engine.has_device(name)
                continue
            state = self.engine.state(name)
            assert state.online == dev.online, f"{where}: presence of {name} differs"
            assert state.modules == dev.modules, f"{where}: modules of {name} differ"
            assert state.last_seen == dev.last_seen, f"{where}: last_seen of {name} differs"
            assert state.registered == dev.registered, f"{where}: registration of {name} differs"
            assert (state.province, state.city) == (dev.province, dev.city), where
            assert state.groups == dev.groups, f"{where}: groups of {name} differ"
            engine_tasks = [
                (
                    t.task_id,
                    t.status.value,
                    t.progress,
                    t.desc,
                    t.first_progress_at,
                    t.retry_at,
                    t.retries_left,
                    t.in_push_queue,
                )
                for t in state.tasks
            ]
            model_tasks = [
                (
                    t.task_id,
                    t.status,
                    t.progress,
                    t.desc,
                    t.first,
                    t.retry_at,
                    t.retries_left,
                    t.in_queue,
                )
                for t in dev.tasks
            ]
            assert engine_tasks == model_tasks, f"{where}: tasks of {name} differ"
            assert state.match_counts == dev.counts
            assert set(state.group_matches) <= set(dev.matched) | set(state.group_matches)


def prelude(both: Both, fleet: list[tuple[Any, ...]], starts: list[str]) -> list[tuple[Any, ...]]:
    steps: list[tuple[Any, ...]] = []
    for name, (default, mcu, province, groups, online) in zip(DEVICES, fleet, strict=True):
        steps.append(("register", name, province, groups))
        steps.append(("version", name, "default", default))
        if mcu is not None:
            steps.append(("version", name, "mcu", mcu))
        if not online:
            steps.append(("offline", name))
    steps.extend(("start", name) for name in starts)
    return steps


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FLEET, STARTS, st.lists(OPS, min_size=20, max_size=150))
def test_engine_matches_the_reference_model(
    fleet: list[tuple[Any, ...]], starts: list[str], ops: list[tuple[Any, ...]]
) -> None:
    both = Both()
    for i, op in enumerate(prelude(both, fleet, starts) + ops):
        both.step(op)
        both.check(f"after step {i} {op}")
    both.now += 1
    both.tick_both()
    both.check("final tick")
    both.check_states()


# Plain devices (one module, no region, no group) and batches that decide nothing on a
# version report: the fleet the byte paths are for, so that they run in most examples.
PLAIN_FLEET = st.lists(
    st.tuples(
        st.sampled_from(["1.0", "1.1"]),
        st.none(),
        st.none(),
        st.just(list[str]()),
        st.sampled_from([True, True, False]),
    ),
    min_size=len(DEVICES),
    max_size=len(DEVICES),
)
STATIC_STARTS = st.lists(st.sampled_from(["S", "SCH", "TGT"]), max_size=3, unique=True)
PLAIN_VERSION = st.tuples(st.just("version"), device, st.just("default"), st.sampled_from(VERSIONS))
PLAIN_OPS = st.one_of(*[PLAIN_VERSION] * 3, OPS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLAIN_FLEET, STATIC_STARTS, st.lists(PLAIN_OPS, min_size=20, max_size=100))
def test_the_byte_paths_match_the_reference_model(
    fleet: list[tuple[Any, ...]], starts: list[str], ops: list[tuple[Any, ...]]
) -> None:
    test_engine_matches_the_reference_model.hypothesis.inner_test(fleet, starts, ops)  # type: ignore[attr-defined]


def test_the_byte_paths_are_taken() -> None:
    """Plain devices: their version reports and a fleet-wide START go through bytes, and
    the outcome is still the model's."""
    both = Both()
    steps = prelude(both, [("1.0", None, None, [], True)] * len(DEVICES), [])
    steps += [("version", name, "default", "1.1") for name in DEVICES]
    steps += [("offline", "d1"), ("start", "S"), ("tick", HOUR), ("start", "V1")]
    for op in steps:
        both.step(op)
        both.check(str(op))
    both.check_states()
    assert both.engine.byte_paths == {"version report": len(DEVICES), "start": len(DEVICES)}


def test_the_model_and_engine_agree_on_a_hand_written_rollout() -> None:
    """A readable example of the property: a day of a small rollout, step by step."""
    both = Both()
    script: list[tuple[Any, ...]] = [
        ("register", "d0", "zj", ["sg-sub"]),
        ("version", "d0", "default", "1.0"),
        ("version", "d1", "default", "1.0"),
        ("version", "d2", "mcu", "1.0"),
        ("start", "V1"),
        ("start", "G"),
        ("start", "M"),
        ("release", "d1"),
        ("progress", "d1", "default", 10),
        ("tick", 31 * MINUTE),
        ("tick", 10 * MINUTE),
        ("release", "d1"),
        ("progress", "d1", "default", -2),
        ("tick", HOUR),
        ("version", "d0", "default", "2.0"),
        ("start", "SCH"),
        ("tick", HOUR),
        ("release", "d2"),
        ("tick", DAY),
    ]
    for op in script:
        both.step(op)
        both.check(str(op))
    both.check_states()
    assert {ev[3] for ev in both.model.events} >= {"QUEUED", "NOTIFIED", "FAILED", "SUCCEEDED"}
