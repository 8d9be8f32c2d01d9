"""The one progress reporter: the projection runner's catch-up reports and the command's lines."""

from __future__ import annotations

import pytest

from orchestrix.core.execution.progress import Progress, ProgressReporter, ProjectionProgress, duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (12.4, "12s"), (59.6, "1m00s"), (185, "3m05s"), (3725, "1h02m"), (90_000, "25h00m")],
)
def test_durations_read_as_hours_minutes_or_seconds(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_a_report_computes_rate_fraction_and_eta_from_positions() -> None:
    report = Progress("replay", position=1_100, target=2_100, events=400, seconds=4.0, start=100)
    assert (report.rate, report.fraction, report.eta) == (100.0, 0.5, 4.0)
    assert report.text() == "replay: 400 events read (100/s), 50%, ETA 4s"
    assert report.json() == {
        "kind": "progress",
        "count": 400,
        "rate": 100.0,
        "percent": 50.0,
        "eta_seconds": 4.0,
    }
    # A read past its target (events appended while it ran) is done, with nothing left.
    beyond = Progress("inspect", position=2_500, target=2_100, events=500, seconds=5.0, start=100)
    assert (beyond.fraction, beyond.eta) == (1.0, 0.0)


def test_a_report_without_a_way_to_go_gives_no_percentage_or_eta() -> None:
    nothing_read = Progress("verify", position=0, target=10, events=0, seconds=0.0)
    assert (nothing_read.rate, nothing_read.eta) == (0.0, None)
    assert nothing_read.text() == "verify: 0 events read (0/s), 0%"
    no_span = Progress("verify", position=5, target=0, events=5, seconds=1.0)
    assert no_span.text() == "verify: 5 events read (5/s)"
    assert (no_span.json()["percent"], no_span.json()["eta_seconds"]) == (None, None)


def test_a_projection_report_is_the_runners_log_line() -> None:
    going = ProjectionProgress("a, b", position=1_300, target=4_300, events=1_200, seconds=20.0, start=100)
    assert isinstance(going, Progress)
    assert going.text() == "projections a, b: catching up, 1200/4200 events (28.6%), 60 events/s, ETA 50s"
    done = ProjectionProgress(
        "a, b", position=4_300, target=4_300, events=4_200, seconds=70.0, start=100, done=True
    )
    assert done.text() == "projections a, b: caught up at position 4300, 4200 events in 1m10s (60 events/s)"
    unknown = ProjectionProgress("a", position=0, target=10, events=0, seconds=0.0)
    assert unknown.text().endswith("ETA unknown")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_reporter_reports_at_most_once_per_interval_and_once_at_the_end() -> None:
    clock, reports = Clock(), list[Progress]()
    reporter = ProgressReporter(
        "r", reports.append, record=Progress, start=0, target=100, every=2.0, clock=clock
    )
    for step in range(1, 6):
        clock.now += 1.0
        reporter.reached(10 * step, 10 * step)
    clock.now += 0.5
    reporter.finish(60, 60, target=50)  # a smaller target never shrinks the way
    assert [(r.position, r.events, r.seconds, r.done) for r in reports] == [
        (20, 20, 2.0, False),
        (40, 40, 4.0, False),
        (60, 60, 5.5, True),
    ]
    assert {r.target for r in reports} == {100}


def test_the_reporter_takes_a_grown_target_and_never_reports_a_position_past_it() -> None:
    clock, reports = Clock(), list[Progress]()
    reporter = ProgressReporter(
        "r", reports.append, record=Progress, start=0, target=10, every=0, clock=clock
    )
    reporter.reached(5, 5, target=40)
    reporter.reached(50, 50)
    assert [(r.position, r.target) for r in reports] == [(5, 40), (50, 50)]
