"""The gateway panel after a gateway restart: a Pi without a real-time clock boots with
fake-hwclock's time (up to hours behind) and its buffered statuses arrive out of order,
yet the panel must show what the gateway says now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from climastream.contract import GatewayStatus, SourceState
from console.state import LiveState

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def status(
    time: datetime,
    uptime_s: float,
    *,
    depth: int = 0,
    source: SourceState = SourceState.UP,
    clock_synchronized: bool | None = None,
) -> GatewayStatus:
    return GatewayStatus(
        gateway_id="gw-1",
        time=time,
        software_version="1",
        uptime_s=uptime_s,
        buffer_depth=depth,
        buffer_bytes=depth * 100,
        buffer_capacity_bytes=1_000_000,
        sources={"radio": source},
        clock_synchronized=clock_synchronized,
    )


def row(state: LiveState) -> dict[str, object]:
    (only,) = state.snapshot("gateways")["gateways"]
    return only


def test_a_gateway_back_from_a_power_cut_with_its_clock_behind_is_shown_at_once() -> None:
    """Run A reports for a day; a power cut; three hours later run B boots with
    fake-hwclock's last save (30 min before the cut), NTP not yet synced: its clock is
    behind A's last status for hours. Its statuses are the gateway's news."""
    clock = Clock()
    state = LiveState(clock=clock)
    state.add_gateway_status(status(clock.now, 86_400.0, depth=0))
    clock.advance(3 * 3600)  # dark for three hours
    behind = NOW - timedelta(minutes=30) + timedelta(seconds=20)
    state.add_gateway_status(
        status(behind, 20.0, depth=5000, source=SourceState.DOWN, clock_synchronized=False)
    )
    shown = row(state)
    assert shown["buffer_depth"] == 5000
    assert shown["sources"] == {"radio": "down"}
    assert shown["stale"] is False
    # "last seen": when the console heard it, not the gateway's wrong clock
    assert shown["last_seen"] == clock.now.isoformat()
    assert shown["age_s"] == 0.0
    assert shown["clock_synchronized"] is False
    assert shown["uptime_s"] == 20.0
    clock.advance(30)
    state.add_gateway_status(status(behind + timedelta(seconds=30), 50.0, depth=4000))
    assert row(state)["buffer_depth"] == 4000


def test_statuses_buffered_before_the_restart_do_not_replace_the_current_run() -> None:
    """Statuses the gateway buffered during an uplink outage before a power cut are sent
    by the next run after its live ones: they are older, whatever their clocks say."""
    clock = Clock()
    state = LiveState(clock=clock)
    start_a = NOW - timedelta(days=1)
    state.add_gateway_status(status(NOW, 86_400.0))
    # the uplink fails: statuses of 30 s .. 10 min are buffered; fake-hwclock saves the
    # time at 5 min; the power is cut at 10 min and comes back 4 h later
    clock.advance(4 * 3600)
    behind = NOW + timedelta(minutes=5, seconds=15)  # run B's clock, not synced
    state.add_gateway_status(status(behind, 15.0, depth=7))
    assert row(state)["buffer_depth"] == 7
    for k in range(1, 21):
        old = NOW + timedelta(seconds=30 * k)
        clock.advance(0.1)
        state.add_gateway_status(status(old, (old - start_a).total_seconds(), depth=99))
        assert row(state)["buffer_depth"] == 7, k
    clock.advance(30)
    state.add_gateway_status(status(behind + timedelta(seconds=30), 45.0, depth=3))
    assert row(state)["buffer_depth"] == 3
    # ...and an older status of the current run (buffered too) never replaces a newer one
    state.add_gateway_status(status(behind + timedelta(seconds=10), 25.0, depth=6))
    assert row(state)["buffer_depth"] == 3


def test_within_one_run_the_newest_status_by_uptime_wins_when_ntp_steps_the_clock() -> None:
    """NTP steps an unsynchronized clock forward by hours mid-run; statuses buffered
    before the step arrive after the first ones after it and are older."""
    clock = Clock()
    state = LiveState(clock=clock)
    behind = NOW - timedelta(hours=2)
    state.add_gateway_status(status(behind, 100.0, depth=1, clock_synchronized=False))
    # synced: the same run, its clock now right
    state.add_gateway_status(status(NOW + timedelta(seconds=60), 160.0, depth=2))
    assert row(state)["buffer_depth"] == 2
    state.add_gateway_status(status(behind + timedelta(seconds=30), 130.0, depth=9))
    assert row(state)["buffer_depth"] == 2
    assert row(state)["last_seen"] == (NOW + timedelta(seconds=60)).isoformat()


def test_a_run_whose_clock_is_further_behind_than_the_last_run_lasted_is_shown_soon() -> None:
    """Run A lasted 10 min; run B's clock is a day behind, so by the clocks B started
    before A. It cannot be told from a status A buffered: B's is shown once A's latest has
    gone stale, and A's buffered statuses do not take its place back."""
    clock = Clock()
    state = LiveState(clock=clock)
    state.add_gateway_status(status(NOW, 600.0, depth=1))
    clock.advance(3600)
    behind = clock.now - timedelta(days=1)
    state.add_gateway_status(status(behind, 10.0, depth=2))
    assert row(state)["buffer_depth"] == 2  # A's latest is an hour old: stale
    for k in range(1, 4):
        clock.advance(30)
        state.add_gateway_status(status(behind + timedelta(seconds=30 * k), 10.0 + 30 * k))
    assert row(state)["buffer_depth"] == 0
    assert row(state)["uptime_s"] == 100.0
    assert row(state)["stale"] is False
    state.add_gateway_status(status(NOW - timedelta(seconds=30), 570.0, depth=8))
    assert row(state)["uptime_s"] == 100.0


def test_a_console_that_starts_mid_way_skips_a_replaced_run_s_buffered_statuses() -> None:
    """The console's first status of the gateway is run B's; statuses run A buffered come
    next. Run A started earlier by the clocks and B's status is fresh: B stays."""
    clock = Clock()
    state = LiveState(clock=clock)
    behind = NOW - timedelta(hours=3)  # run B's clock
    state.add_gateway_status(status(behind, 300.0, depth=4))
    clock.advance(1)
    state.add_gateway_status(status(behind - timedelta(minutes=2), 7_200.0, depth=99))
    assert row(state)["buffer_depth"] == 4


def test_a_new_run_that_looks_like_an_older_status_of_the_last_one_shows_once_stale() -> None:
    """Run B's clock is behind by just how long run A had run: by the clocks both started
    at once, and B's statuses look like old ones of A. They show once A's is stale."""
    clock = Clock()
    state = LiveState(clock=clock)
    state.add_gateway_status(status(NOW, 86_400.0, depth=1))
    clock.advance(30)
    start_a = NOW - timedelta(seconds=86_400)
    state.add_gateway_status(status(start_a + timedelta(seconds=40), 40.0, depth=2))
    assert row(state)["buffer_depth"] == 1  # an old status of run A, as far as anyone can see
    clock.advance(60)
    state.add_gateway_status(status(start_a + timedelta(seconds=100), 100.0, depth=3))
    assert row(state)["buffer_depth"] == 3


def test_a_gateway_older_than_clock_synchronized_gives_its_wrong_clock_away() -> None:
    """It does not say whether its clock is synchronized, but its new run's time is before
    its last run's last status plus its uptime: the row says its clock is not synced and
    "last seen" is when the console heard it, for that run, until NTP steps the clock."""
    clock = Clock()
    state = LiveState(clock=clock)
    state.add_gateway_status(status(NOW, 86_400.0))
    clock.advance(3 * 3600)
    behind = NOW - timedelta(minutes=30)
    state.add_gateway_status(status(behind, 20.0, depth=9))
    assert (row(state)["clock_synchronized"], row(state)["last_seen"]) == (
        False,
        clock.now.isoformat(),
    )
    clock.advance(30)
    state.add_gateway_status(status(behind + timedelta(seconds=30), 50.0))
    assert row(state)["clock_synchronized"] is False
    # NTP steps the clock: a later start by the clocks, judged anew
    clock.advance(30)
    state.add_gateway_status(status(clock.now, 80.0))
    assert (row(state)["clock_synchronized"], row(state)["last_seen"]) == (
        None,
        clock.now.isoformat(),
    )
    assert row(state)["reported_time"] == clock.now.isoformat()


def test_a_restart_with_the_clock_right_shows_the_gateway_s_own_time() -> None:
    clock = Clock()
    state = LiveState(clock=clock)
    state.add_gateway_status(status(NOW, 86_400.0))
    clock.advance(90)
    state.add_gateway_status(status(clock.now - timedelta(seconds=2), 5.0))
    shown = row(state)
    assert shown["clock_synchronized"] is None
    assert shown["last_seen"] == (clock.now - timedelta(seconds=2)).isoformat()


def test_a_second_power_cut_restoring_the_same_clock_is_not_stuck_stale() -> None:
    """Two power cuts within an hour restore the same fake-hwclock save: the second run
    starts, by the gateway's clock, when the first did before NTP stepped it. The panel
    kept the first run's last status, stale, for as long as the second run's clock was not
    synchronized, though the gateway was sending."""
    clock = Clock()
    state = LiveState(clock=clock)
    saved = NOW - timedelta(minutes=40)
    state.add_gateway_status(status(clock.now, 86_400.0, clock_synchronized=True))
    clock.advance(300)  # the first cut
    state.add_gateway_status(status(saved, 0.0, clock_synchronized=False))
    clock.advance(30)
    state.add_gateway_status(status(clock.now, 30.0, clock_synchronized=True))  # NTP
    clock.advance(3600)  # the second cut, and a long wait for NTP
    for uptime in (0.0, 30.0, 60.0):
        state.add_gateway_status(
            status(saved + timedelta(seconds=uptime), uptime, source=SourceState.DOWN,
                   clock_synchronized=False)
        )  # fmt: skip
        clock.advance(30)
    shown = row(state)
    assert shown["stale"] is False
    assert shown["uptime_s"] == 60.0
    assert shown["sources"] == {"radio": "down"}
