"""The partition's devices as one envelope sees them: read once, written once.

``EnvelopeStore`` is the partition engine's ``DeviceStore`` over one partition of the
``devices`` table (given as a getter and a prefix scan, so it holds no Kafka or Faust).
A device is held in one of two forms until the envelope ends:

- as a ``DeviceState``, for everything the engine decides on;
- as its new encoded state, for a plain device's version report applied in bytes
  (``otaflow.plain_reports``; most reports at fleet scale) or a fleet-wide START's
  outcome applied in bytes (``otaflow.start_splicer``).

A device is never in both: the byte path is taken only for a device with no object in
this envelope, and the engine loading a device turns its bytes into an object (so a
progress report after a version report of the same device, in one envelope, sees it).
Each device's records and effects keep their order; between devices the order can
differ from a run through objects only (a START's byte-path task events go out first,
and devices new in the envelope are met by a later scan in another order), which
nothing downstream relies on: events are keyed, and ordered, per device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from otaflow.device_avro import decode_device_state, encode_device_state
from otaflow.domain.devices import DeviceState
from otaflow.domain.scopes import Needles, passes
from otaflow.domain.start_by_kind import PlainStart
from otaflow.plain_reports import VersionReport, apply_version
from otaflow.start_splicer import StartSplicer

Getter = Callable[[bytes], bytes | None]
PrefixScan = Callable[[bytes], Iterable[tuple[bytes, bytes]]]


class EnvelopeStore:
    def __init__(self, stored: Getter, scan_stored: PrefixScan) -> None:
        self._stored = stored
        self._scan_stored = scan_stored
        self.states: dict[str, DeviceState | None] = {}
        self.dirty: set[str] = set()
        # Device key -> its new encoded state, from the byte path.
        self.spliced: dict[bytes, bytes] = {}
        # Task events the byte path wrote (a START's), to send before the engine's, and
        # its push-queue entries per batch (encoded QueuedTask records).
        self.task_events: list[dict[str, bytes]] = []
        self.queued: dict[str, list[bytes]] = {}

    # -- DeviceStore --------------------------------------------------------------------

    def load(self, key: str) -> DeviceState | None:
        if key in self.states:
            return self.states[key]
        key_bytes = key.encode()
        raw = self.spliced.pop(key_bytes, None)
        if raw is not None:
            self.dirty.add(key)  # changed in this envelope, not written yet
        else:
            raw = self._stored(key_bytes)
        state = decode_device_state(raw) if raw else None
        self.states[key] = state
        return state

    def put(self, state: DeviceState) -> None:
        self.states[state.key] = state
        self.dirty.add(state.key)

    def delete(self, key: str) -> None:
        self.spliced.pop(key.encode(), None)
        self.states[key] = None
        self.dirty.add(key)

    def scan(
        self, prefix: str, needles: Needles, start: PlainStart | None = None
    ) -> Iterator[DeviceState]:
        """The stored devices under ``prefix``; only candidates are decoded, none kept.

        With ``start`` (a START over the whole fleet), plain devices get its outcome in
        bytes (``otaflow.start_splicer``) and are not yielded; their task events are
        kept in ``task_events``.
        """
        # Rare (a batch start, a group change): the byte-path devices become objects
        # first, so the scan sees this envelope's changes in one form.
        for key_bytes in list(self.spliced):
            self.load(key_bytes.decode())
        splicer = StartSplicer(start) if start is not None else None
        seen: set[str] = set()
        for key_bytes, raw in self._scan_stored(prefix.encode()):
            key = key_bytes.decode()
            seen.add(key)
            if key in self.states:
                cached = self.states[key]
                if cached is not None:
                    yield cached
            elif not needles or passes(raw, needles):  # no needles: every device
                if splicer is not None:
                    new = splicer.apply(key, raw, key_bytes)
                    if new is not None:
                        if new is not raw:
                            self.spliced[key_bytes] = new
                        continue
                yield decode_device_state(raw)
        if splicer is not None:
            self.task_events += splicer.task_events
            if splicer.queued:
                self.queued.setdefault(splicer.start.batch.batch_id, []).extend(splicer.queued)
        for key, extra in list(self.states.items()):
            if extra is not None and key not in seen and key.startswith(prefix):
                yield extra  # created in this envelope, not in the table yet

    # -- the byte path ------------------------------------------------------------------

    def record_version(self, report: VersionReport) -> bool:
        """Apply a plain device's version report in bytes; False: take the object path
        (the device is an object in this envelope already, or its state is not plain)."""
        key = report[0]
        if self.states and key.decode() in self.states:
            return False
        stored = self.spliced.get(key)
        if stored is None:
            stored = self._stored(key)
        new = apply_version(stored, report)
        if new is None:
            return False
        self.spliced[key] = new
        return True

    # -- the envelope's end -------------------------------------------------------------

    def writes(self) -> list[tuple[bytes, bytes | None]]:
        """Every changed device once: its key and new encoded state (None: deleted)."""
        writes: list[tuple[bytes, bytes | None]] = list(self.spliced.items())
        for key in self.dirty:
            state = self.states[key]
            writes.append((key.encode(), None if state is None else encode_device_state(state)))
        return writes

    def clear(self) -> None:
        self.states.clear()
        self.dirty.clear()
        self.spliced.clear()
        self.task_events = []
        self.queued = {}
