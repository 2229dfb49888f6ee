"""``streams.faust_private`` is the one place otaflow bends Faust; these fail when the
installed Faust no longer has (or no longer does) what it relies on, so the adapter is
looked at again rather than silently diverging."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from importlib.metadata import version
from typing import Any

from faust.stores.rocksdb import Store as RocksStore
from faust.tables.manager import TableManager
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams import faust_private
from streams.faust_private import PromptTableManager

# The source of faust-streaming 0.15.3's TableManager.on_start: sleep 1 s, then what
# PromptTableManager.on_start does.
FAUST_ON_START_SHA256 = "365dd25fbc0e068499c89e526516c638693a2d143b6ac249f84a60f5267fec9d"


def test_the_installed_faust_is_the_one_the_adapter_was_checked_against() -> None:
    # A new Faust: run this file, read the adapter's uses again, then move the constant.
    assert version("faust-streaming") == faust_private.FAUST_CHECKED


def test_faust_on_start_is_the_one_the_replacement_was_written_against() -> None:
    source = inspect.getsource(TableManager.on_start)
    assert "await self.sleep(1.0)" in source
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_ON_START_SHA256


def test_the_replacement_does_the_same_without_the_pause() -> None:
    ours = inspect.getsource(PromptTableManager.on_start)
    assert "sleep" not in ours
    assert "_update_channels()" in ours and "recovery.start()" in ours


def test_the_recovery_the_manager_builds_and_its_aborted_transaction_check() -> None:
    # PromptTableManager.recovery builds the same Recovery, with the app's view when
    # changelogs are transactional; Faust's recovery asks that view before it takes a
    # position at the highwater (a transaction marker) as caught up.
    from faust.tables import recovery

    built = inspect.getsource(TableManager.recovery.fget)  # type: ignore[attr-defined]
    assert "Recovery(\n                self.app, self, beacon=self.beacon, loop=self.loop" in built
    slurp = inspect.getsource(recovery.Recovery)
    assert "if timeout and self.app.in_transaction and timeout_count > 1:" in slurp
    assert "await detect_aborted_tx()" in slurp


def test_the_recovery_view_is_the_app_apart_from_the_transaction_flag() -> None:
    class App:
        in_transaction = False
        in_recovery = False

    app: Any = App()
    view: Any = faust_private.TransactionalRecoveryApp(app)
    view.in_recovery = True
    assert view.in_transaction is True and app.in_transaction is False
    assert app.in_recovery is True and view.in_recovery is True


def test_faust_still_has_the_seek_the_stream_positions_wrap() -> None:
    assert callable(getattr(Consumer, "perform_seek", None))
    assert "_committed_offset" in inspect.getsource(Consumer.__init__)


def test_the_rocksdb_store_has_the_partition_databases_and_offsets_written_to() -> None:
    assert callable(getattr(RocksStore, "_db_for_partition", None))
    assert callable(getattr(RocksStore, "set_persisted_offset", None))
    assert RocksStore.offset_key == faust_private.FAUST_OFFSET_KEY


def test_the_worker_consumer_reads_committed_only_when_faust_is_told_transaction() -> None:
    source = inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)
    assert "if self.consumer.in_transaction:" in source
    assert 'isolation_level = "read_committed"' in source


def test_read_committed_puts_the_flag_back() -> None:
    class FaustConsumer:
        in_transaction = False

    consumer: Any = FaustConsumer()
    seen = []
    with faust_private.read_committed_consumer(consumer):
        seen.append(consumer.in_transaction)
    assert seen == [True] and consumer.in_transaction is False


def test_the_seek_wrapper_runs_after_faust_once_per_consumer() -> None:
    calls: list[str] = []

    class FakeConsumer:
        async def perform_seek(self) -> None:
            calls.append("faust")

    async def after() -> None:
        calls.append("after")

    consumer: Any = FakeConsumer()
    faust_private.wrap_perform_seek(consumer, after)
    faust_private.wrap_perform_seek(consumer, after)
    asyncio.run(consumer.perform_seek())
    assert calls == ["faust", "after"]
