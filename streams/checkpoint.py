"""When a round's work becomes durable, and in which order: the one owner of commit order.

A round is one envelope of ``otaflow.device-events`` applied to one device partition
(``streams.device_agent``). It leaves four things behind, and a worker can die (SIGKILL)
between any two of them becoming durable. The order below is what makes a replay of the
envelope (Faust re-reads it when its input offset was not committed) lose nothing:

1. **Effects** (task events, offers to push, rate and control records, dead letters) are
   acknowledged first. The states written in step 2 record that these were sent (a task
   NOTIFIED, a release used); were the states durable first, a replay would find the
   tasks already there, decide nothing and send nothing: the effects would be lost.
   The other way round a replay sends them again (at-least-once; consumers key and
   de-duplicate by task id).
2. **Device states' changelog** acknowledged before the partition's progress. The
   progress (step 3) says which source offsets were applied; durable before the states
   they produced, a replay would skip those reports and their changes would be lost.
3. **Partition progress** (source offsets, watermark, the batches and groups it was
   told about), acknowledged.
4. **The local stores** (RocksDB, and the changelog offset they hold) are written only
   after their changelog is acknowledged: a local write ahead of its changelog, then a
   crash, leaves a store that has a change the changelog never got; the replay then
   finds nothing to change and another owner, recovering from the changelog, would
   never see it. (The round's own reads come from ``EnvelopeStore``, not the store.)
5. **The input offset** last: the agent returns, Faust acks the envelope and commits it
   within ``broker_commit_interval``. Everything it covers is durable by then.

With ``OTAFLOW_PROCESSING_GUARANTEE=exactly_once`` steps 1-3 are one Kafka transaction
on one producer (``Transaction``): nothing of the round is visible to a read-committed
reader until all of it is, and a killed worker's open round is aborted when it comes
back (same transactional id) or after ``transaction.timeout.ms``. The input offset of the
round is stored in the progress (3), inside the transaction, so a replayed envelope is
recognised and skipped: no task event or offer is sent twice. Step 4 still follows the
commit (an aborted round must not be in the store).

Upstream, the report batcher (``streams.batcher``, its own process) has its own order:
envelopes produced and acknowledged, then its source offsets committed. The envelopes it
sends again after a crash carry the same source offsets, and step 3's progress makes
the device agent skip them.

This module decides the order and nothing else: it holds no Kafka client and no Faust.
Its ports are the three small protocols below, implemented by ``streams.table_writer``
(changelogged tables), ``streams.effects`` (the effects' producer) and
``streams.transactions`` (the round's transaction).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

Writes = list[tuple[bytes, bytes | None]]


class Outbox(Protocol):
    """Records queued for sending; ``flush`` returns once all are acknowledged (or raises)."""

    def flush(self) -> None: ...


class ChangelogTable(Protocol):
    """A changelogged table written a partition at a time."""

    def send(self, partition: int, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Queue the changelog records of ``items`` (key, value; None deletes)."""

    def flush(self) -> None:
        """Return once every queued changelog record is acknowledged (or raise)."""

    def store(self) -> None:
        """Write the acknowledged items to the local store, with their changelog offset."""


class Transaction(Protocol):
    def begin(self) -> None: ...

    def commit(self) -> None:
        """Make every record sent since ``begin`` visible at once (or raise)."""

    def abort(self) -> None: ...


@dataclass
class Round:
    """What one round leaves behind, apart from the effects already queued on the outbox."""

    partition: int
    states: Writes = field(default_factory=list)
    progress: Writes = field(default_factory=list)


class Checkpoint:
    """Makes a round durable in the order of the module doc.

    ``begin`` before the round queues its first effect (it opens the transaction when
    there is one); ``commit`` at its end.
    """

    def __init__(
        self,
        effects: Outbox,
        states: ChangelogTable,
        progress: ChangelogTable,
        transaction: Transaction | None = None,
    ) -> None:
        self.effects = effects
        self.states = states
        self.progress = progress
        self.transaction = transaction
        self._open = False

    @property
    def exactly_once(self) -> bool:
        return self.transaction is not None

    def begin(self) -> None:
        if self.transaction is not None and not self._open:
            self.transaction.begin()
            self._open = True

    def commit(self, round_: Round) -> None:
        if self.transaction is not None:
            self._commit_in_transaction(round_)
            return
        # 1. effects before the states that record them
        self.effects.flush()
        # 2. states before the progress that says their reports were applied
        if round_.states:
            self.states.send(round_.partition, round_.states)
            self.states.flush()
        # 3. progress
        if round_.progress:
            self.progress.send(round_.partition, round_.progress)
            self.progress.flush()
        # 4. local stores only behind their acknowledged changelog
        self._store(round_)
        # 5. the input offset: Faust's, once the caller returns

    def _commit_in_transaction(self, round_: Round) -> None:
        assert self.transaction is not None
        self.begin()  # a round that queued nothing before its end
        try:
            # 1-3 in one transaction: the order inside it does not matter to a
            # read-committed reader, which sees all or none of it.
            if round_.states:
                self.states.send(round_.partition, round_.states)
            if round_.progress:
                self.progress.send(round_.partition, round_.progress)
            self.transaction.commit()
        except BaseException:
            self._open = False
            self.transaction.abort()
            raise
        self._open = False
        # The commit flushed and acknowledged every record: offsets are known now.
        self.effects.flush()
        self.states.flush()
        self.progress.flush()
        # 4. local stores only behind the committed changelog
        self._store(round_)

    def _store(self, round_: Round) -> None:
        if round_.states:
            self.states.store()
        if round_.progress:
            self.progress.store()
