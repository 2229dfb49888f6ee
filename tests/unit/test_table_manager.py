"""``streams.table_manager`` replaces one Faust method; this fails when Faust changes it,
so the replacement is looked at again rather than silently diverging."""

from __future__ import annotations

import hashlib
import inspect

from faust.tables.manager import TableManager

from streams.table_manager import PromptTableManager

# The source of faust-streaming 0.15.3's TableManager.on_start: sleep 1 s, then what
# PromptTableManager.on_start does.
FAUST_ON_START_SHA256 = "365dd25fbc0e068499c89e526516c638693a2d143b6ac249f84a60f5267fec9d"


def test_faust_on_start_is_the_one_the_replacement_was_written_against() -> None:
    source = inspect.getsource(TableManager.on_start)
    assert "await self.sleep(1.0)" in source
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_ON_START_SHA256


def test_the_replacement_does_the_same_without_the_pause() -> None:
    ours = inspect.getsource(PromptTableManager.on_start)
    assert "sleep" not in ours
    assert "_update_channels()" in ours and "recovery.start()" in ours
