"""Stage-1 windows: a backlog consumed after a restart is not mistaken for late data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from climastream.contract import Quantity, Reading
from stream.windows import DeviceWindows, to_us

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def reading(seq: int, at: datetime, gateway: str = "gw-1") -> Reading:
    return Reading(
        device_id=f"th-{gateway}",
        gateway_id=gateway,
        seq=seq,
        quantity=Quantity.TEMPERATURE,
        value=20.0 + seq,
        unit="Cel",
        event_time=at,
        ingest_time=at,
        zone="centre",
    )


def test_backlog_far_behind_the_wall_clock_is_not_late_while_catching_up() -> None:
    windows = DeviceWindows(size=10 * S, grace=2 * S)
    for seq in range(30):  # readings made two minutes ago, consumed now
        assert windows.add([reading(seq, T0 + seq * S)]) == []
        windows.close(now=None)  # catching up: the wall clock does not count
    assert windows.stats.late == 0
    # the event-time watermark (29 s) closed [0,10) and [10,20); [20,30) waits for grace
    assert windows.stats.closed == 2
    caught_up = windows.close(now=T0 + 120 * S)  # caught up: the wall clock closes the rest
    assert [(p["ws"], sorted(p["q"]["temperature"])) for p in caught_up] == [
        (to_us(T0 + 20 * S), [20.0 + s for s in range(20, 30)])
    ]


def test_a_reading_after_its_window_closed_is_late_and_returned() -> None:
    windows = DeviceWindows(size=10 * S, grace=2 * S)
    windows.add([reading(0, T0), reading(1, T0 + 15 * S)])
    windows.close(now=None)
    late = windows.add([reading(2, T0 + 5 * S)])
    assert [r.seq for r in late] == [2]
    assert windows.stats.late == 1


def test_a_redelivered_reading_is_a_duplicate() -> None:
    windows = DeviceWindows(size=10 * S, grace=2 * S)
    windows.add([reading(0, T0), reading(1, T0 + S), reading(2, T0 + 2 * S)])
    windows.add([reading(1, T0 + S), reading(2, T0 + 2 * S)])  # at-least-once redelivery
    assert windows.stats.duplicates == 2
    assert windows.stats.counter_resets == 0
    assert windows.stats.added == 3


def test_a_restarted_device_counter_is_not_taken_for_duplicates() -> None:
    """A LoRaWAN rejoin sets fCnt to 0: the numbers repeat with newer event times."""
    windows = DeviceWindows(size=10 * S, grace=2 * S)
    windows.add([reading(40 + i, T0 + i * S) for i in range(5)])
    windows.add([reading(i, T0 + (5 + i) * S) for i in range(5)])  # after the rejoin
    assert windows.stats.counter_resets == 1
    assert windows.stats.duplicates == 0
    assert windows.stats.added == 10
    # and a redelivery after the reset is still a duplicate
    windows.add([reading(3, T0 + 8 * S)])
    assert windows.stats.duplicates == 1
    closed = windows.flush()
    values = sorted(v for p in closed for v in p["q"]["temperature"])
    assert values == sorted([20.0 + s for s in range(40, 45)] + [20.0 + s for s in range(5)])


def test_counter_reset_state_survives_a_checkpoint() -> None:
    windows = DeviceWindows(size=10 * S, grace=2 * S)
    windows.add([reading(30 + i, T0 + i * S) for i in range(3)])
    windows.add([reading(0, T0 + 4 * S)])
    again = DeviceWindows(size=10 * S, grace=2 * S)
    again.restore(windows.snapshot())
    assert again.stats.counter_resets == 1
    again.add([reading(0, T0 + 4 * S), reading(32, T0 + 2 * S)])  # both seen already
    assert again.stats.duplicates == 2
    again.add([reading(1, T0 + 5 * S)])
    assert again.stats.added == 5


def test_a_checkpoint_without_newest_times_keeps_treating_repeats_as_duplicates() -> None:
    windows = DeviceWindows(size=10 * S, grace=2 * S)
    windows.add([reading(seq, T0 + seq * S) for seq in range(3)])
    snap = windows.snapshot()
    snap["seen"] = {d: v[:2] for d, v in snap["seen"].items()}  # the older layout
    snap["stats"] = snap["stats"][:3]
    again = DeviceWindows(size=10 * S, grace=2 * S)
    again.restore(snap)
    again.add([reading(1, T0 + 9 * S)])
    assert again.stats.duplicates == 1
    again.add([reading(3, T0 + 10 * S), reading(1, T0 + 11 * S)])  # newest known again
    assert again.stats.counter_resets == 1
