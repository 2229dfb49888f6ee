"""Every use of Faust's private API in otaflow, in one place.

Checked against faust-streaming ``FAUST_CHECKED`` (over aiokafka 0.14). Nothing else in
otaflow may reach into Faust's internals: a module that needs one asks here, and
``tests/unit/test_faust_private.py`` fails when the installed Faust no longer has
what this module relies on (a renamed attribute, a changed method body), so the
adapter is looked at again instead of silently doing something else.

What is bent, and why (each is used by the commit path, ``streams.checkpoint``):

- ``partition_db``: the RocksDB database of one table partition. The device agent
  writes a round's states in one ``WriteBatch`` and scans one partition when a batch
  starts; Faust's ``table[key] = value`` (one changelog send through aiokafka per key)
  capped the agent near 5k reports/s.
- ``set_persisted_offset``: the changelog offset the local database holds, so a restart
  on the same machine replays only the changelog after it (Faust does this itself for
  writes through ``table[key]``).
- ``wrap_perform_seek`` / ``committed_offsets``: see ``streams.stream_positions``
  (uncommitted stream partitions read from their start after a rebalance).
- ``PromptTableManager``: Faust's table manager without its fixed 1 s pause at start,
  and, when rounds are transactions, a recovery that ends at a changelog's last
  transaction marker (``TransactionalRecoveryApp``).
- ``read_committed_consumer``: the worker's consumer skips aborted transactions (the
  changelogs and effects of a round a killed worker never committed) without turning
  on Faust's own exactly-once mode, which would route every send through aiokafka.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

FAUST_CHECKED = "0.15.3"

# The key Faust's RocksDB store keeps its persisted changelog offset under (in every
# partition's database, beside the table's own keys).
FAUST_OFFSET_KEY = b"__faust\0offset__"


def partition_db(table: Any, partition: int) -> Any | None:
    """The rocksdict ``Rdict`` of ``table``'s ``partition``; None for a memory store."""
    store = table.data
    if not hasattr(store, "_db_for_partition"):
        return None
    return store._db_for_partition(partition)


def set_persisted_offset(table: Any, topic: str, partition: int, offset: int) -> None:
    table.data.set_persisted_offset(TP(topic, partition), offset)


def committed_offsets(consumer: Any) -> dict[Any, Any]:
    """The offsets Faust read as committed for its assignment (after ``perform_seek``)."""
    return dict(consumer._committed_offset)


def wrap_perform_seek(consumer: Any, after: Callable[[], Awaitable[None]]) -> None:
    """Run ``after`` whenever Faust's consumer seeks to committed offsets; once per
    consumer however many rebalances call this."""
    if getattr(consumer, "_otaflow_seek_wrapped", False):
        return
    perform_seek = consumer.perform_seek

    async def perform_seek_then_after() -> None:
        await perform_seek()
        await after()

    consumer.perform_seek = perform_seek_then_after
    consumer._otaflow_seek_wrapped = True


class TransactionalRecoveryApp:
    """The app as Faust's table recovery sees it when rounds are transactions.

    A changelog written in transactions ends with a commit (or abort) marker: Faust's
    highwater is that marker's offset, which is never delivered, so recovery waited for
    it for ever ("No event received for active tp ... -changelog"). Faust's own
    exactly-once mode handles this: after two idle 5 s waits it takes a consumer position
    at the highwater as done (``detect_aborted_tx``), asked for through
    ``app.in_transaction``. This view says "in a transaction" to the recovery only;
    everything else, set or read, is the app's.
    """

    in_transaction = True

    def __init__(self, app: Any) -> None:
        object.__setattr__(self, "_app", app)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._app, name, value)


# Set by the worker before it starts (streams.worker) when rounds are transactions.
TRANSACTIONAL_CHANGELOGS = False


class PromptTableManager(TableManager):
    """``TableManager.on_start`` sleeps 1 s "for tables to be declared" before recovery.

    otaflow declares every table when ``streams.app`` is imported, long before the worker
    starts, so the pause only delayed every start and restart (SIGKILL recovery 7.5 s, of
    which this was one). Plugged in through Faust's documented ``TableManager`` setting.
    """

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            app: Any = TransactionalRecoveryApp(self.app) if TRANSACTIONAL_CHANGELOGS else self.app
            self._recovery = Recovery(app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


@contextmanager
def read_committed_consumer(consumer: Any) -> Iterator[None]:
    """While the worker's aiokafka consumer is created, say "in a transaction": Faust
    then creates it with ``isolation_level="read_committed"`` (the only use of the flag
    at that point) and the flag is put back, so Faust's own transactional sends stay off.
    """
    before = consumer.in_transaction
    consumer.in_transaction = True
    try:
        yield
    finally:
        consumer.in_transaction = before


def install_read_committed() -> None:
    """Every worker consumer Faust creates from now on reads committed records only, and
    table recovery ends at a changelog's last transaction marker."""
    global TRANSACTIONAL_CHANGELOGS
    TRANSACTIONAL_CHANGELOGS = True
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "_otaflow_read_committed", False):
        return

    def create_read_committed(self: Any, transport: Any) -> Any:
        with read_committed_consumer(self.consumer):
            return create(self, transport)

    create_read_committed._otaflow_read_committed = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_read_committed  # type: ignore[method-assign]
