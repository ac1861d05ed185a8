"""Stage 2 expects a device it learns from the readings (one the config does not declare)
from its first window with data on, never before.

It learns a device when the device's first window *arrives*, and windows before it may
still be open then: a backlog fetched in one go, a lagging partition, or ``kpi eval``
closing everything at the end. Expecting the device there made completeness-0 KPIs for
windows before it existed (and lowered the zone's completeness), so the same readings gave
different KPIs depending on how they arrived.
"""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from climastream.contract import KpiValue, Quantity, Reading
from stream.pipeline import Replay
from tests.unit.stream.test_forget_devices import T0, WINDOW, completeness_windows, config

FIRST = 12  # the new device's first window (2:00)


def readings(quantity: Quantity = Quantity.TEMPERATURE, skip: int | None = None) -> list[Reading]:
    """``keep`` in each of 3 h of 10-minute windows; ``newbie`` from 2:00 on, but not in
    window ``skip``."""
    out = []
    for n in range(18):
        at = T0 + n * WINDOW + timedelta(minutes=1)
        devices = ["keep"] + (["newbie"] if n >= FIRST and n != skip else [])
        out += [
            Reading(
                device_id=d,
                gateway_id="gw1",
                seq=n,
                quantity=quantity,
                value=20.0,
                unit="Cel" if quantity is Quantity.TEMPERATURE else "ug/m3",
                event_time=at,
                ingest_time=at,
                zone="centre",
            )
            for d in devices
        ]
    return out


def arrivals(data: list[Reading], **overrides: object) -> dict[str, list[KpiValue]]:
    """The KPIs of ``data`` arriving one reading at a time, in one batch, and as ``kpi
    eval`` of an input it cannot rewind takes it (every window closed at the end)."""
    cfg = config(devices={}, **overrides)
    one_by_one = Replay(cfg, gateways={"gw1"})
    for reading in data:
        one_by_one.add([reading])
    batch = Replay(cfg, gateways={"gw1"})
    batch.add(data)
    at_end = Replay(cfg, gateways=None)
    at_end.add(data)
    return {
        "one by one": one_by_one.finish().kpis,
        "one batch": batch.finish().kpis,
        "closed at the end": at_end.finish().kpis,
    }


def dumped(kpis: list[KpiValue]) -> list[str]:
    return sorted(k.model_dump_json() for k in kpis)


def zone_mean_completeness(kpis: list[KpiValue], window: int) -> float:
    start = T0 + window * WINDOW
    [mean] = [
        k
        for k in kpis
        if k.kpi_id == "stat.mean" and k.device_id is None and k.window_start == start
    ]
    return mean.completeness


def test_a_new_device_is_expected_from_its_first_window_however_the_readings_arrive() -> None:
    runs = arrivals(readings(skip=15))
    reference = dumped(runs["one by one"])
    for how, kpis in runs.items():
        assert dumped(kpis) == reference, how
        # no completeness KPI before 2:00; 0 for the window it missed after
        assert completeness_windows(kpis, "newbie") == [n * WINDOW for n in range(FIRST, 18)]
        [missed] = [
            k
            for k in kpis
            if k.kpi_id == "completeness"
            and k.device_id == "newbie"
            and k.window_start == T0 + 15 * WINDOW
        ]
        assert missed.value == 0.0
        # the zone: only keep was expected before 2:00, both after
        assert zone_mean_completeness(kpis, FIRST - 1) == 1.0
        assert zone_mean_completeness(kpis, FIRST) == 1.0
        assert zone_mean_completeness(kpis, 15) == pytest.approx(0.5)


def test_a_period_before_a_new_device_does_not_expect_it() -> None:
    """EAQI periods (1 h) close after the base windows in them: the 0:00 and 1:00 periods
    do not expect a device first heard at 2:00, the 2:00 period expects it all along."""
    runs = arrivals(readings(Quantity.NO2), kpis=["eaqi.pollutant"])
    reference = dumped(runs["one by one"])
    for how, kpis in runs.items():
        assert dumped(kpis) == reference, how
        periods = {
            k.window_start - T0: k.completeness for k in kpis if k.kpi_id == "eaqi.pollutant"
        }
        assert periods == {timedelta(hours=h): 1.0 for h in range(3)}


def test_a_checkpoint_from_before_restores_and_learns_new_devices() -> None:
    """A checkpoint without "since" (from the last release) restores; a device learnt
    after it is not expected before its first window."""
    cfg = config(devices={})
    data = readings()
    cut = T0 + timedelta(hours=1)
    first = Replay(cfg, gateways={"gw1"})
    first.add([r for r in data if r.event_time < cut])
    snap = orjson.loads(orjson.dumps(first.zones.snapshot()))
    for state in snap["keys"].values():
        assert state.pop("since") == {"keep": int(T0.timestamp()) * 1_000_000}
    second = Replay(cfg, gateways={"gw1"})
    second.devices = first.devices
    second.zones.restore(snap)
    second.add([r for r in data if r.event_time >= cut])
    kpis = second.finish().kpis
    assert completeness_windows(kpis, "newbie") == [n * WINDOW for n in range(FIRST, 18)]
    # "keep" came from the old checkpoint: expected everywhere, as before
    assert completeness_windows(first.result.kpis + kpis, "keep") == [n * WINDOW for n in range(18)]


def test_a_device_declared_after_the_checkpoint_is_expected_everywhere() -> None:
    """Learnt from the readings, then declared in the config: restored from a checkpoint
    taken while its earlier windows were still open, it is expected in every one of them,
    as a declared device is."""
    data = [r for r in readings() if r.event_time < T0 + timedelta(hours=2, minutes=30)]
    first = Replay(config(devices={}), gateways=None)  # every window open until finish
    first.add(data)
    snap = orjson.loads(orjson.dumps(first.zones.snapshot()))
    declared = config(devices={"newbie": {"cadence": "10m", "zone": "centre"}})
    second = Replay(declared, gateways=None)
    second.devices = first.devices
    second.zones.restore(snap)
    kpis = second.finish().kpis
    assert completeness_windows(kpis, "newbie") == [n * WINDOW for n in range(15)]
