"""The console's pure parts: pushes per minute achieved and planned, and its pages'
escaping (names come from devices and operators)."""

from __future__ import annotations

from otaflow.web.console import PushSamples, planned_per_minute
from otaflow.web.pages import environment


def test_pushes_are_counted_per_whole_minute_since_watching_began() -> None:
    samples = PushSamples(started=0.0)
    for at, pushed in ((0.0, 10), (30.0, 40), (59.0, 70), (61.0, 75), (150.0, 200)):
        samples.samples.append((at, pushed))
    # minute 0: 10 -> 70; minute 1: 70 -> 75 (none later in it); minute 2: 75 -> 200
    assert samples.per_minute() == [(0, 60), (1, 5), (2, 125)]
    assert samples.last_minute() == 125  # 200 at 150 s against 75 as of 90 s


def test_the_plan_is_what_otaflow_plan_predicts_for_the_batch() -> None:
    assert planned_per_minute({"MaximumPerMinute": 100}, 250) == [(0, 100), (1, 100), (2, 50)]
    variable = {
        "MaximumPerMinute": 40,
        "RateType": "variable",
        "BaseRatePerMinute": 10,
        "IncrementalFactor": "2.00",
        "RateIncreaseThreshold": 10,
        "RateIncreaseCondition": "pushed",
    }
    per_minute = [n for _, n in planned_per_minute(variable, 100)]
    # `otaflow plan --base-rate 10 --factor 2 --max-rate 40 --threshold 10 --devices 100`:
    # 10 a minute, 20 from minute 1.00, 40 from minute 1.50 (a rate is a speed: each step
    # lasts its time); 4 minutes in all, the last device at minute 3.50.
    assert per_minute == [10, 30, 40, 20]
    assert planned_per_minute({}, 100) == []  # no rate: devices pull, nothing planned


def test_pages_escape_what_devices_and_operators_name() -> None:
    html = environment.get_template("device.html").render(
        who="AK",
        product_key="pk",
        device_name="<script>alert(1)</script>",
        versions=[],
        history=[],
    )
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
