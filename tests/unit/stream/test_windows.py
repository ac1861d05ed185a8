"""Stage-1 windows: a backlog consumed after a restart is not mistaken for late data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from climastream.contract import Quantity, Reading
from stream.windows import DeviceWindows, Seen, SeenSeqs, to_us

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def reading(
    seq: int,
    at: datetime,
    gateway: str = "gw-1",
    device: str | None = None,
    value: float | None = None,
) -> Reading:
    return Reading(
        device_id=device or f"th-{gateway}",
        gateway_id=gateway,
        seq=seq,
        quantity=Quantity.TEMPERATURE,
        value=20.0 + seq if value is None else value,
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


def test_a_device_clock_running_ahead_does_not_make_its_neighbours_late() -> None:
    windows = DeviceWindows(size=60 * S, grace=5 * S)
    received = T0 + 600 * S
    fast = reading(0, received + 50 * 60 * S, device="fast").model_copy(
        update={"ingest_time": received}
    )
    windows.add([fast])
    windows.close(now=None)
    # same gateway, a correct clock: its window is open, as the gateway's own clock says
    assert windows.add([reading(0, received - S, device="ok")]) == []
    assert windows.stats.late == 0
    # the fast device's reading keeps its own (future) window; the wall clock closes it
    assert [p["d"] for p in windows.close(now=received + 52 * 60 * S)] == ["ok", "fast"]


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
    # the older layout (and the one before memories per gateway: {device: state})
    snap["seen"] = {d: v[:2] for d, v in snap["seen"]["gw-1"].items()}
    snap["stats"] = snap["stats"][:3]
    again = DeviceWindows(size=10 * S, grace=2 * S)
    again.restore(snap)
    again.add([reading(1, T0 + 9 * S)])
    assert again.stats.duplicates == 1
    again.add([reading(3, T0 + 10 * S), reading(1, T0 + 11 * S)])  # newest known again
    assert again.stats.counter_resets == 1


# ---------------------------------------------------------------- devices with own counters

L0 = datetime(2026, 1, 1, tzinfo=UTC)  # days of readings before it are still in the past


def uplink(counter: int, at: datetime, device: str = "lora-1", size: int = 4) -> list[Reading]:
    """One uplink as the edge numbers it: ``seq = counter * 256 + position in the frame``."""
    return [
        reading(counter * 256 + i, at, device=device, value=20.0 + (counter % 50) + i / 10)
        for i in range(size)
    ]


def test_counter_numbered_devices_keep_a_bounded_memory_and_checkpoint() -> None:
    """Four days of a LoRaWAN device (every 10 min, 4 readings, gaps between uplinks)."""
    windows = DeviceWindows(size=60 * S, grace=10 * S)
    for counter in range(600):
        windows.add(uplink(counter, L0 + counter * 600 * S))
        windows.close()
    assert windows.stats.added == 2400
    # only the newest uplink is inside one window plus grace of the newest reading
    assert windows.remembered() <= 4
    seen = windows.snapshot()["seen"]["gw-1"]["lora-1"]
    assert len(seen[1]) <= 4
    assert len(seen[4]) == len(seen[1])


def test_a_redelivery_older_than_the_horizon_is_still_a_duplicate() -> None:
    windows = DeviceWindows(size=60 * S, grace=10 * S)
    for counter in range(10):
        windows.add(uplink(counter, L0 + counter * 600 * S))
    again = DeviceWindows(size=60 * S, grace=10 * S)
    again.restore(windows.snapshot())
    for engine in (windows, again):
        # a gateway resend of uplink 2 (folded into the floor long ago) and of uplink 9
        assert engine.add(uplink(2, L0 + 1200 * S) + uplink(9, L0 + 5400 * S)) == []
        assert engine.stats.duplicates == 8
        assert engine.stats.added == 40


def test_a_lost_uplink_delivered_after_the_fold_counts_as_duplicate_as_documented() -> None:
    """Pins what SeenSeqs' docstring and the README say: a never-seen reading in a gap the
    floor was folded past counts as a duplicate (not routed late), while the same reading
    delivered within the horizon is late. In no KPI either way."""
    lost = uplink(1, L0 + 600 * S)
    soon, after_fold = DeviceWindows(size=60 * S, grace=10 * S), DeviceWindows(60 * S, 10 * S)
    for engine, counters in ((soon, (0, 2)), (after_fold, (0, 2, 3, 4))):
        for counter in counters:
            engine.add(uplink(counter, L0 + counter * 600 * S))
            engine.close()
    assert soon.add(lost) == lost
    assert (soon.stats.late, soon.stats.duplicates) == (4, 0)
    assert after_fold.add(lost) == []
    assert (after_fold.stats.late, after_fold.stats.duplicates) == (0, 4)


def test_a_checkpoint_without_seq_times_folds_them_one_horizon_later() -> None:
    windows = DeviceWindows(size=60 * S, grace=10 * S)
    windows.add(uplink(0, L0) + uplink(1, L0 + 30 * S))
    snap = windows.snapshot()
    # the layout before times (and before memories per gateway)
    snap["seen"] = {d: v[:4] for d, v in snap["seen"]["gw-1"].items()}
    again = DeviceWindows(size=60 * S, grace=10 * S)
    again.restore(snap)
    assert again.remembered() == 4  # 256..259, above the floor 3
    again.add(uplink(2, L0 + 200 * S))  # the restored ones are now past the horizon
    assert again.remembered() <= 4
    again.add(uplink(1, L0 + 30 * S))
    assert again.stats.duplicates == 4


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """(device, counter, event second) uplinks in counter order, some lost on the air,
    with at-least-once redeliveries of earlier ones mixed in (recent or hours old)."""
    out: list[tuple[int, int, int]] = []
    for device in range(draw(st.integers(1, 3))):
        t = 0
        for counter in range(draw(st.integers(1, 40))):
            t += draw(st.sampled_from([5, 20, 60, 600]))
            if draw(st.integers(0, 9)) == 0:
                continue  # lost: a gap in the numbers for good
            out.append((device, counter, t))
    for _ in range(draw(st.integers(0, 30))):
        if out:
            out.append(draw(st.sampled_from(out)))  # a redelivery
    return draw(st.permutations(out)) if draw(st.booleans()) else sorted(out, key=lambda u: u[2])


@given(deliveries())
@settings(max_examples=300, deadline=None)
def test_folding_old_numbers_never_changes_what_reaches_a_window(
    uplinks: list[tuple[int, int, int]],
) -> None:
    """Against a memory that keeps every seq forever: the same values in the same windows.

    Only the reason a skipped reading is counted may differ (a folded redelivery is a
    duplicate here, late there); every reading is either in a window or counted.
    """
    bounded = DeviceWindows(size=60 * S, grace=10 * S)
    unbounded = DeviceWindows(size=60 * S, grace=10 * S)
    unbounded.new_seen = lambda: SeenSeqs(cap=10**9, horizon_us=None)  # type: ignore[method-assign]
    for engine in (bounded, unbounded):
        for device, counter, t in uplinks:
            engine.add(uplink(counter, T0 + t * S, device=f"lora-{device}", size=3))
            engine.close()

    def windows_of(engine: DeviceWindows) -> list[tuple[str, int, list[float]]]:
        return sorted((p["d"], p["ws"], sorted(p["q"]["temperature"])) for p in engine.flush())

    stats = bounded.stats
    assert windows_of(bounded) == windows_of(unbounded)
    assert stats.added + stats.duplicates + stats.late == 3 * len(uplinks)
    assert stats.added == unbounded.stats.added


def test_a_window_checkpointed_before_seqs_were_kept_takes_more_readings() -> None:
    windows = DeviceWindows(size=10 * S, grace=2 * S)
    windows.add([reading(0, T0)])
    snap = windows.snapshot()
    for partial in snap["partials"]:  # the layout before "s" and "t"
        del partial["s"], partial["t"]
    again = DeviceWindows(size=10 * S, grace=2 * S)
    again.restore(snap)
    again.add([reading(1, T0 + S)])
    assert [p["q"]["temperature"] for p in again.flush()] == [[20.0, 21.0]]


def test_a_device_whose_clock_stands_still_keeps_a_bounded_memory() -> None:
    """A node with a dead RTC stamps every uplink with the same time: the horizon never
    folds its numbers, so the memory must stay bounded by the cap, arrival order included,
    whether its numbers have gaps (the cap raises the floor) or fill them late."""
    at = to_us(L0)
    gaps = SeenSeqs(cap=64, horizon_us=70 * 1_000_000)
    swapped = SeenSeqs(cap=64, horizon_us=70 * 1_000_000)
    for counter in range(1, 5_000):
        gaps.add("lora-1", counter * 256, at)
        # two readings per uplink, the second arriving first: each gap fills at once
        swapped.add("node-1", 2 * counter + 2, at)
        swapped.add("node-1", 2 * counter + 1, at)
    for seen, device in ((gaps, "lora-1"), (swapped, "node-1")):
        _, above, _, _, order = seen._state[device]
        assert len(above) <= 64
        assert len(order) <= 2 * 64 + 1
        assert {s for _, s in order if s in above} == above
    # what is remembered, or was raised or folded past, is still a duplicate
    assert gaps.add("lora-1", 4_999 * 256, at) is Seen.DUPLICATE
    assert gaps.add("lora-1", 10 * 256, at) is Seen.DUPLICATE
    assert swapped.add("node-1", 9_000, at) is Seen.DUPLICATE
    assert swapped.add("node-1", 10_001, at) is Seen.NEW


@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 3)),  # (seq, event second)
        max_size=400,
    )
)
@settings(max_examples=200, deadline=None)
def test_trimming_the_arrival_order_changes_no_verdict(adds: list[tuple[int, int]]) -> None:
    """The order is trimmed of entries the floor has passed, which the horizon would skip
    anyway: a memory whose order is never trimmed says the same of every reading."""
    trimmed = SeenSeqs(cap=4, horizon_us=2 * 1_000_000)
    untrimmed = SeenSeqs(cap=4, horizon_us=2 * 1_000_000)
    untrimmed._order_limit = 10**9
    for seq, second in adds:
        at = to_us(L0) + second * 1_000_000
        assert trimmed.add("d", seq, at) is untrimmed.add("d", seq, at)
        assert trimmed.snapshot() == untrimmed.snapshot()
    assert len(trimmed._state.get("d", [None] * 5)[4] or ()) <= 2 * 4 + 1


def test_a_checkpoint_of_a_wall_clock_close_restores_it_for_every_gateway() -> None:
    """The worker checkpoints (synced) after the wall clock moves, before it closes and
    sends the windows and the watermark downstream; nothing else may be checkpointed
    before a crash. The checkpoint held the gateways' closed marks from before the move,
    so the replay after the crash took a reading behind the wall, in a window the zone
    stage had closed as the watermark passed it: dropped there as a window sent again,
    so in no KPI and not counted late."""
    engine = DeviceWindows(timedelta(minutes=1), timedelta(seconds=5))
    assert engine.add([reading(1, T0)]) == []
    assert engine.close(T0 + timedelta(seconds=30)) == []
    assert engine.advance_wall(T0 + timedelta(hours=1, seconds=30))  # the worker stalled
    checkpoint = orjson.dumps(engine.snapshot())  # synced before anything acts on it
    assert [p["ws"] for p in engine.close()] == [to_us(T0)]
    horizon = engine.horizon()
    assert horizon == to_us(T0 + timedelta(hours=1))  # the zone stage closes up to here
    behind_wall = reading(2, T0 + timedelta(minutes=59, seconds=10))  # in the stall
    assert engine.add([behind_wall]) == [behind_wall]
    restored = DeviceWindows(timedelta(minutes=1), timedelta(seconds=5))
    restored.restore(orjson.loads(checkpoint))  # a crash: replayed from the checkpoint
    assert restored.add([behind_wall]) == [behind_wall]
    assert restored.horizon() == horizon
