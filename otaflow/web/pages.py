"""The console's pages (Jinja2, autoescaped, in ``templates/``). Plain HTML and a little
script: the pages work without it; the script only keeps a batch page live (SSE)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

environment = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
