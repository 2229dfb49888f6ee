"""Write many keys of a Faust table at once: changelog via librdkafka, one RocksDB batch.

Faust's ``table[key] = value`` costs ~50 us per key here (its changelog send goes
through aiokafka one record at a time): it capped the device agent near 5k reports/s.
This writer keeps Faust's table (same RocksDB databases, same changelog topic and
partitions, so Faust's recovery and rebalancing work unchanged) and replaces only
the write path, in the three steps ``streams.checkpoint`` orders (it is a
``ChangelogTable``):

  ``send``  produce the changelog records with confluent-kafka (a C producer, ~2 us
            each), only the last of each produce round asking for its delivery report;
  ``flush`` wait until they are acknowledged (raise if not);
  ``store`` put the acknowledged keys into the partition's RocksDB in one ``WriteBatch``
            and record the last changelog offset as Faust's "persisted offset", so a
            restart on the same machine replays only what it has not got.

Faust's private store API is reached through ``streams.faust_private``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaException, Producer

from otaflow.config import Settings
from otaflow.kafka_security import kafka_client_config
from streams import faust_private
from streams.produce import produce_all

log = logging.getLogger("otaflow.table_writer")


class _KnownExperimentalNotice(logging.Filter):
    """Drops librdkafka's start-up notice that ``enable.gapless.guarantee`` is experimental.

    We set it on purpose (see ``TableWriter``); printed on every worker start it was noise
    that hid real warnings. Every other librdkafka log line passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("CONFWARN" in message and "enable.gapless.guarantee is experimental" in message)


# librdkafka's own log lines reach Python logging through this logger (served by poll).
librdkafka_log = logging.getLogger("otaflow.librdkafka")
librdkafka_log.addFilter(_KnownExperimentalNotice())


class ChangelogError(RuntimeError):
    pass


def round_producer_config(settings: Settings, on_error: Callable[[Any], None]) -> dict[str, Any]:
    """The producers of a device agent's round (changelogs, effects, the transaction):
    idempotent, large batches, and gaps made fatal."""
    return {
        **kafka_client_config(settings.kafka_bootstrap),
        "enable.idempotence": True,
        "linger.ms": 1,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Any failure that could leave a gap before a later record that is
        # delivered is a fatal error, which fails every record still queued,
        # the last of the write with them (see ``send``). Timeouts are not
        # covered; they come after message.timeout.ms (300 s), long past the
        # flush's own limit, which raises first. (librdkafka marks this setting
        # experimental; it is the documented way to make gaps fatal.)
        "enable.gapless.guarantee": True,
        "error_cb": on_error,
        "logger": librdkafka_log,
    }


def keep_fatal(errors: list[str], what: str) -> Callable[[Any], None]:
    """librdkafka's error callback for a round's producer: a fatal error stops it for
    good, so it is kept in ``errors`` (the next flush raises, the agent crashes, the
    worker is restarted and the envelope replayed); any other is logged."""

    def on_error(err: Any) -> None:
        if err.fatal():
            errors.append(f"fatal: {err}")
        else:
            log.warning("%s: %s", what, err)

    return on_error


class TableWriter:
    """A ``streams.checkpoint.ChangelogTable`` over one Faust table.

    ``producer``: a shared one (the round's transactional producer); by default its own.
    """

    def __init__(self, table: Any, settings: Settings, producer: Producer | None = None) -> None:
        self.table = table
        self.topic = table.changelog_topic.get_topic_name()
        self._errors: list[str] = []
        self.producer = producer or Producer(
            round_producer_config(settings, keep_fatal(self._errors, "changelog producer"))
        )
        self._persisted: dict[int, int] = {}
        # Sent, not yet stored: (partition, items), in order.
        self._pending: list[tuple[int, list[tuple[bytes, bytes | None]]]] = []
        self._acknowledged = False

    def _db(self, partition: int) -> Any:
        return faust_private.partition_db(self.table, partition)

    def reader(self, partition: int) -> Callable[[bytes], bytes | None]:
        """``get`` for one partition, looked up once (an envelope reads many keys)."""
        getter: Callable[[bytes], bytes | None] = self._db(partition).get
        return getter

    def send(self, partition: int, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        items = list(items)
        messages: list[dict[str, Any]] = [{"key": k, "value": v} for k, v in items]
        try:
            # One partition, idempotent and in order: when the last record queued is
            # delivered all are, and a failure before it fails it too (gapless, above).
            # A Python delivery report per record cost ~0.45 us each.
            produce_all(
                self.producer,
                self.topic,
                messages,
                None,
                partition,
                on_last_delivery=self._delivered,
            )
        except KafkaException as exc:
            raise ChangelogError(f"changelog record refused: {exc}") from exc
        self._pending.append((partition, items))
        self._acknowledged = False
        self.producer.poll(0)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
            return
        partition, offset = msg.partition(), msg.offset()
        if offset > self._persisted.get(partition, -1):
            self._persisted[partition] = offset

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every changelog record sent is acknowledged."""
        if not self._pending:
            return
        remaining = self.producer.flush(timeout)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            self._pending.clear()
            raise ChangelogError(f"changelog not acknowledged ({remaining} left): {errors[:3]}")
        self._acknowledged = True

    def store(self) -> None:
        """Write what was sent and acknowledged into the local store, with its offset."""
        if not self._pending:
            return
        if not self._acknowledged:
            raise ChangelogError("store() before the changelog was acknowledged")
        from rocksdict import WriteBatch

        for partition, items in self._pending:
            batch = WriteBatch(raw_mode=True)
            for key, value in items:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            self._db(partition).write(batch)
        self._pending.clear()
        for partition, offset in self._persisted.items():
            faust_private.set_persisted_offset(self.table, self.topic, partition, offset)
        self._persisted.clear()
