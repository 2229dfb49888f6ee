"""Faust's table manager without its fixed one-second pause at start-up.

``faust.tables.TableManager.on_start`` sleeps 1 s "for tables to be declared" before it
starts recovery. otaflow declares every table when ``streams.app`` is imported, long
before the worker starts, so the pause only delayed every start and restart (SIGKILL
recovery 7.5 s, of which this was one). Plugged in through Faust's documented
``TableManager`` setting; checked against faust-streaming 0.15.3 (the source of
``on_start`` is compared in ``tests/unit/test_table_manager.py``, which fails when Faust
changes it, so this is looked at again).
"""

from __future__ import annotations

from faust.tables.manager import TableManager


class PromptTableManager(TableManager):
    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()
