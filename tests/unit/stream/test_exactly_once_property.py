"""Property: over random readings (gateways silent for hours or a day and back with a
backlog, zones whose offsets are not whole hours and change by half an hour), the live
stages with wall-clock closes and crashes that restore stage 1's last checkpoint count
every reading once, in a KPI or as late, and agree with ``kpi eval`` when none is late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from climastream.contract import KpiValue, Quantity, Reading
from stream.config import StreamConfig
from stream.pipeline import replay
from stream.windows import DeviceWindows
from stream.zones import ZoneWindows, routing_keys

ZONES = ["Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham", "Europe/Brussels"]
T0 = datetime(2024, 4, 6, 10, 0, tzinfo=UTC)  # Lord Howe's and Chatham's April changes
END = datetime(2030, 1, 1, tzinfo=UTC)


@st.composite
def scenarios(draw: Any) -> tuple[str, str, timedelta, list[Reading], list[str], list[int]]:
    timezone = draw(st.sampled_from(ZONES))
    window = draw(st.sampled_from(["1m", "30m", "1h"]))
    retention = timedelta(hours=draw(st.sampled_from([2, 24])))
    n = draw(st.integers(1, 40))
    readings, seqs = [], {}
    at = T0 + timedelta(minutes=draw(st.integers(-600, 600)))
    for _ in range(n):
        at += timedelta(seconds=draw(st.sampled_from([0, 1, 61, 1800, 3600, 23 * 3600, 25 * 3600])))
        gateway = draw(st.sampled_from(["g1", "g2", "g3"]))
        device = gateway + draw(st.sampled_from(["a", "b"]))
        seqs[device] = seq = seqs.get(device, 0) + 1
        behind = timedelta(seconds=draw(st.sampled_from([0, 0, 5, 100, 4000, 23 * 3600])))
        readings.append(
            Reading(device_id=device, gateway_id=gateway, seq=seq, quantity=Quantity.TEMPERATURE,
                    value=float(seq), unit="Cel", event_time=at - behind, ingest_time=at,
                    zone="z")
        )  # fmt: skip
    ops = draw(st.lists(st.sampled_from(["close", "close", "crash", "-"]), min_size=n, max_size=n))
    delays = draw(st.lists(st.sampled_from([0, 10, 120, 3700]), min_size=n, max_size=n))
    return timezone, window, retention, readings, ops, delays


def _counts(kpis: list[KpiValue]) -> list[tuple[Any, ...]]:
    return sorted(
        (k.window_start, k.window_end, k.device_id or "", k.sample_count, k.value)
        for k in kpis
        if k.kpi_id == "stat.count"
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_live_stages_with_crashes_count_every_reading_once(
    scenario: tuple[str, str, timedelta, list[Reading], list[str], list[int]],
) -> None:
    timezone, window, retention, readings, ops, delays = scenario
    config = StreamConfig.model_validate(
        {"timezone": timezone, "window": window, "grace": "5s", "default_cadence": "1m",
         "kpis": ["stat.count"]}
    )  # fmt: skip

    def stage1() -> DeviceWindows:
        return DeviceWindows(config.window, config.grace, tz=config.tz, retention=retention)

    s1, s2 = stage1(), ZoneWindows(config, sources=1)
    kpis: list[KpiValue] = []
    late: set[tuple[str, int]] = set()  # routed late by any run

    def send(closed: list[Any]) -> None:
        for partial in closed:
            for key, reference in routing_keys(partial, config):
                s2.add(key, partial, reference, "p0")
        horizon = s1.horizon()
        if horizon is not None:
            s2.advance("p0", horizon)
        kpis.extend(s2.close())

    # as the worker: a synced checkpoint after a wall-clock move, another after a close
    checkpoint, resume = orjson.dumps(s1.snapshot()), 0
    crashed: set[int] = set()
    i = 0
    while i < len(readings):
        reading, op, delay = readings[i], ops[i], delays[i]
        late.update((r.device_id, r.seq) for r in s1.add([reading]))
        i += 1
        if op == "close":
            if s1.advance_wall(reading.ingest_time + timedelta(seconds=delay)):
                checkpoint, resume = orjson.dumps(s1.snapshot()), i
            closed = s1.close()
            send(closed)
            if closed:
                checkpoint, resume = orjson.dumps(s1.snapshot()), i
        elif op == "crash" and i not in crashed:
            crashed.add(i)
            s1 = stage1()
            s1.restore(orjson.loads(checkpoint))
            i = resume  # the records after the checkpoint are read again
    send(s1.flush())
    kpis.extend(s2.close(final=True, now=END))
    counted = sum(k.sample_count for k in kpis if k.kpi_id == "stat.count" and k.device_id is None)
    dropped = s1.stats.duplicates + s2.stats.stale_readings + s2.stats.duplicates
    assert counted + len(late) + dropped == len(readings)
    if not late and not s2.stats.stale_readings:
        assert _counts(kpis) == _counts(replay(readings, config, clock=lambda: END).kpis)
