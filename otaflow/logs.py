"""Logging of every otaflow process: one level, text or JSON lines.

``OTAFLOW_LOG_LEVEL`` (debug, info, warning, error; default info) sets otaflow's own
loggers; the libraries under it (Faust, mode, aiokafka) log at warning unless it is
debug, since at info they describe their own machinery, not the rollout.
``OTAFLOW_LOG_FORMAT=json`` writes one JSON object per line (``ts``, ``level``,
``logger``, ``component``, ``msg``, and ``exc`` with a traceback) for a log shipper;
the default is plain text without terminal colours.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson

LIBRARIES = ("faust", "mode", "aiokafka", "kafka", "asyncio", "aiohttp.access")


def level() -> int:
    name = os.environ.get("OTAFLOW_LOG_LEVEL", "info").upper()
    value = logging.getLevelName(name)
    return value if isinstance(value, int) else logging.INFO


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "component": self.component,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def formatter(component: str) -> logging.Formatter:
    if os.environ.get("OTAFLOW_LOG_FORMAT", "text").lower() == "json":
        return JsonFormatter(component)
    return logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s")


def setup(component: str) -> int:
    """Configure the root logger for ``component``; return the level."""
    chosen = level()
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(component))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(chosen)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(chosen if chosen <= logging.DEBUG else logging.WARNING)
    return chosen
