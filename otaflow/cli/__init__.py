"""otaflow's command line: tooling around the runtime, never imported by it.

``main`` is the ``otaflow`` command (``python -m otaflow.cli`` runs it too); the other
modules are its sub-commands: ``ops`` (firmware, batch, task, device, group through the
OpenAPI), ``safe_rollout`` (abort rules, windows, ``explain``), ``watch`` (a batch's live
board), ``plan`` (what-if push schedules) and ``source`` (telemetry sources).
"""
