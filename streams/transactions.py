"""A round in one Kafka transaction (``OTAFLOW_PROCESSING_GUARANTEE=exactly_once``).

``streams.checkpoint`` decides the order; this is its ``Transaction`` over one
confluent-kafka producer that the round's effects and changelog writers share. Its
transactional id is the worker instance's, so a worker restarted after a SIGKILL fences
its old producer and aborts the round it left open at once (``init_transactions``);
a round left open by a worker that does not come back is aborted after
``TRANSACTION_TIMEOUT_MS``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from confluent_kafka import Producer

from otaflow import instances
from otaflow.config import Settings
from streams.table_writer import round_producer_config

log = logging.getLogger("otaflow.transactions")

GUARANTEE_ENV = "OTAFLOW_PROCESSING_GUARANTEE"
AT_LEAST_ONCE = "at_least_once"
EXACTLY_ONCE = "exactly_once"
# How long a round a dead worker left open holds back read-committed readers of its
# partitions (Kafka's default is 60 s).
TRANSACTION_TIMEOUT_MS = 10_000


def processing_guarantee() -> str:
    value = os.environ.get(GUARANTEE_ENV, AT_LEAST_ONCE).strip().lower() or AT_LEAST_ONCE
    if value not in (AT_LEAST_ONCE, EXACTLY_ONCE):
        raise ValueError(f"{GUARANTEE_ENV} must be {AT_LEAST_ONCE} or {EXACTLY_ONCE}: {value!r}")
    return value


class KafkaTransaction:
    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        # Fences an earlier producer of the same id and aborts what it left open.
        producer.init_transactions(30)

    def begin(self) -> None:
        self.producer.begin_transaction()

    def commit(self) -> None:
        self.producer.commit_transaction(60)

    def abort(self) -> None:
        try:
            self.producer.abort_transaction(30)
        except Exception as exc:  # fatal: the producer is unusable; the agent crashes anyway
            log.warning("abort failed: %s", exc)


def _report_error(err: Any) -> None:
    log.warning("round producer: %s", err)


def round_transaction(settings: Settings) -> KafkaTransaction | None:
    if processing_guarantee() != EXACTLY_ONCE:
        return None
    from otaflow.kafka_partitions import CONFLUENT_PARTITIONER

    # A fatal error also fails the round's commit, which raises (the agent crashes and
    # the worker is restarted); the callback only reports.
    config = round_producer_config(settings, _report_error)
    # Gapless is implied by a transaction (all or nothing); librdkafka refuses both.
    config.pop("enable.gapless.guarantee", None)
    instance = instances.instance_name(settings, "worker")
    producer = Producer(
        {
            **config,
            "partitioner": CONFLUENT_PARTITIONER,
            "transactional.id": f"{settings.app_id}-rounds-{instance}",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        }
    )
    return KafkaTransaction(producer)
