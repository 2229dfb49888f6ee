"""``OTAFLOW_PROCESSING_GUARANTEE``: at-least-once unless exactly-once is asked for by name."""

from __future__ import annotations

import pytest

from otaflow import config
from streams import transactions


def test_at_least_once_is_the_default_and_opens_no_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(transactions.GUARANTEE_ENV, raising=False)
    assert transactions.processing_guarantee() == transactions.AT_LEAST_ONCE
    assert transactions.round_transaction(config.load()) is None


def test_exactly_once_is_read_whatever_its_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(transactions.GUARANTEE_ENV, " Exactly_Once ")
    assert transactions.processing_guarantee() == transactions.EXACTLY_ONCE


def test_an_unknown_guarantee_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(transactions.GUARANTEE_ENV, "at_most_once")
    with pytest.raises(ValueError, match="OTAFLOW_PROCESSING_GUARANTEE"):
        transactions.processing_guarantee()
