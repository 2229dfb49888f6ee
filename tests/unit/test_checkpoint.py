"""The order in which ``streams.checkpoint`` makes a round durable (Faust-free fakes).

A worker can die between any two steps; each test shows what is durable when a step
fails, which is what a replay of the envelope then finds."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from streams.checkpoint import Checkpoint, Round

STATES = [(b"d1", b"s1"), (b"d2", None)]
PROGRESS = [(b"0/progress", b"p")]


class Failed(RuntimeError):
    pass


class Journal:
    def __init__(self, fail_at: str | None = None) -> None:
        self.steps: list[str] = []
        self.fail_at = fail_at

    def step(self, name: str) -> None:
        self.steps.append(name)
        if name == self.fail_at:
            raise Failed(name)


class FakeOutbox:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def flush(self) -> None:
        self.journal.step("effects acknowledged")


class FakeTable:
    def __init__(self, name: str, journal: Journal) -> None:
        self.name, self.journal = name, journal
        self.stored: list[tuple[bytes, bytes | None]] = []
        self._sent: list[tuple[bytes, bytes | None]] = []

    def send(self, partition: int, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        self._sent += list(items)
        self.journal.step(f"{self.name} sent")

    def flush(self) -> None:
        if self._sent:
            self.journal.step(f"{self.name} acknowledged")

    def store(self) -> None:
        self.journal.step(f"{self.name} stored")
        self.stored, self._sent = self._sent, []


class FakeTransaction:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def begin(self) -> None:
        self.journal.step("begin")

    def commit(self) -> None:
        self.journal.step("commit")

    def abort(self) -> None:
        self.journal.step("abort")


def checkpoint(journal: Journal, transactions: bool = False) -> Checkpoint:
    return Checkpoint(
        FakeOutbox(journal),
        FakeTable("states", journal),
        FakeTable("progress", journal),
        FakeTransaction(journal) if transactions else None,
    )


def test_at_least_once_effects_then_states_then_progress_then_the_stores() -> None:
    journal = Journal()
    cp = checkpoint(journal)
    cp.begin()
    cp.commit(Round(0, list(STATES), list(PROGRESS)))
    assert journal.steps == [
        "effects acknowledged",
        "states sent",
        "states acknowledged",
        "progress sent",
        "progress acknowledged",
        "states stored",
        "progress stored",
    ]


@pytest.mark.parametrize(
    ("fail_at", "never"),
    [
        # Effects not acknowledged: no state records them, the replay sends them again.
        ("effects acknowledged", {"states sent", "progress sent"}),
        # States not acknowledged: the progress does not say their reports were applied.
        ("states acknowledged", {"progress sent", "states stored"}),
        # Progress not acknowledged: no local store runs ahead of its changelog.
        ("progress acknowledged", {"states stored", "progress stored"}),
    ],
)
def test_a_step_that_fails_leaves_nothing_after_it_durable(fail_at: str, never: set[str]) -> None:
    journal = Journal(fail_at)
    cp = checkpoint(journal)
    with pytest.raises(Failed):
        cp.commit(Round(0, list(STATES), list(PROGRESS)))
    assert journal.steps[-1] == fail_at
    assert not never & set(journal.steps)


def test_exactly_once_is_one_transaction_and_the_stores_follow_its_commit() -> None:
    journal = Journal()
    cp = checkpoint(journal, transactions=True)
    cp.begin()  # before the round queues its effects
    cp.begin()  # once per round
    cp.commit(Round(0, list(STATES), list(PROGRESS)))
    assert journal.steps == [
        "begin",
        "states sent",
        "progress sent",
        "commit",
        "effects acknowledged",
        "states acknowledged",
        "progress acknowledged",
        "states stored",
        "progress stored",
    ]
    cp.commit(Round(1))  # the next round opens its own transaction
    assert journal.steps[-3:] == ["begin", "commit", "effects acknowledged"]


def test_a_commit_that_fails_is_aborted_and_nothing_is_stored() -> None:
    journal = Journal("commit")
    cp = checkpoint(journal, transactions=True)
    cp.begin()
    with pytest.raises(Failed):
        cp.commit(Round(0, list(STATES), list(PROGRESS)))
    assert journal.steps[-2:] == ["commit", "abort"]
    assert "states stored" not in journal.steps and "progress stored" not in journal.steps


def test_a_round_without_writes_stores_nothing() -> None:
    journal = Journal()
    checkpoint(journal).commit(Round(0))
    assert journal.steps == ["effects acknowledged"]


def test_the_checkpoint_holds_no_kafka_client_and_no_faust() -> None:
    source = Path("streams/checkpoint.py").read_text()
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m.split(".")[0] in {"faust", "confluent_kafka", "aiokafka"}}
