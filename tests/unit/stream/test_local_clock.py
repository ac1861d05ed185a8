"""Windows on the city's local clock where its UTC offset is not a whole number of hours.

Hour windows (the EAQI's, or a 1 h base window) used to be cut on the UTC grid: in Kolkata
(+05:30) they ran 10:30-11:30 local, where CPCB's hourly data, city staff and dashboards
use clock hours. Whole-hour zones keep the UTC grid exactly (the other stream tests).
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from climastream.contract import KpiValue, Quantity, Reading
from climastream.quantities import CANONICAL_UNITS
from stream.config import StreamConfig
from stream.grid import US, WindowGrid
from stream.pipeline import replay
from stream.windows import DeviceWindows, to_us
from stream.zones import ZoneWindows, routing_keys

KOLKATA = ZoneInfo("Asia/Kolkata")


def _config(timezone: str, **overrides: object) -> StreamConfig:
    base: dict[str, object] = {"timezone": timezone, "grace": "5s", "default_cadence": "1m"}
    base.update(overrides)
    return StreamConfig.model_validate(base)


def _every(
    start: datetime,
    minutes: int,
    quantity: str = "pm2_5",
    step: int = 1,
    value: Any = 10.0,
    device: str = "d1",
    zone: str = "z",
    gateway: str = "gw1",
) -> list[Reading]:
    q = Quantity(quantity)
    out = []
    for i in range(0, minutes, step):
        at = start + timedelta(minutes=i)
        level = value(at) if callable(value) else value
        out.append(
            Reading(device_id=device, gateway_id=gateway, seq=i, quantity=q, value=level,
                    unit=CANONICAL_UNITS[q], event_time=at, ingest_time=at, zone=zone)
        )  # fmt: skip
    return out


def _run(config: StreamConfig, readings: list[Reading]) -> list[KpiValue]:
    last = max(r.event_time for r in readings)
    return replay(readings, config, clock=lambda: last + timedelta(days=3)).kpis


def _local(kpis: list[KpiValue], kpi_id: str, tz: ZoneInfo, **scope: object) -> list[Any]:
    out = [k for k in kpis if k.kpi_id == kpi_id]
    for name, value in scope.items():
        out = [k for k in out if getattr(k, name) == value]
    return [
        (
            k.window_start.astimezone(tz).strftime("%d %H:%M"),
            k.window_end.astimezone(tz).strftime("%d %H:%M"),
            k.sample_count,
        )
        for k in out
    ]


def test_the_hourly_eaqi_in_kolkata_covers_clock_hours() -> None:
    # 00:00-03:00 UTC is 05:30-08:30 IST: half of the 05:00 hour, then whole hours
    readings = _every(datetime(2024, 7, 1, tzinfo=UTC), 180)
    kpis = _run(_config("Asia/Kolkata", window="1m", kpis=["eaqi"]), readings)
    assert _local(kpis, "eaqi", KOLKATA) == [
        ("01 05:00", "01 06:00", 30),
        ("01 06:00", "01 07:00", 60),
        ("01 07:00", "01 08:00", 60),
        ("01 08:00", "01 09:00", 30),
    ]
    # the records carry UTC times, now at :30 UTC
    assert kpis[1].window_start == datetime(2024, 7, 1, 0, 30, tzinfo=UTC)


def test_hour_base_windows_in_kolkata_and_the_days_and_lden_periods_they_feed() -> None:
    """With a 1 h base window the local days, nights and Lden periods are made of whole
    base windows: 23:30-00:30 local used to count in one day, 06:30-07:30 in the night."""
    tz = KOLKATA
    start = datetime(2024, 6, 30, 18, 30, tzinfo=UTC)  # 1 July 00:00 IST

    def noise(at: datetime) -> float:
        hour = at.astimezone(tz).hour
        return 60.0 if 7 <= hour < 19 else (55.0 if 19 <= hour < 23 else 50.0)

    def temperature(at: datetime) -> float:
        return 30.0 if at.astimezone(tz).day == 1 else 20.0

    day = 24 * 60
    readings = _every(start, 2 * day, "noise_laeq", step=10, value=noise, device="n")
    readings += _every(start, 2 * day, "temperature", step=10, value=temperature, device="t")
    readings.sort(key=lambda r: r.event_time)
    kpis = _run(_config("Asia/Kolkata", window="1h"), readings)
    means = _local(kpis, "stat.mean", tz, device_id="t")
    assert means[:2] == [("01 00:00", "01 01:00", 6), ("01 01:00", "01 02:00", 6)]
    status = [k for k in kpis if k.kpi_id == "heatwave.status"]
    assert _local(status, "heatwave.status", tz) == [
        ("01 00:00", "02 00:00", 144),
        ("02 00:00", "03 00:00", 144),
    ]
    assert [k.attributes["tmax"] for k in status] == ["30.00", "20.00"]
    lnight = [k for k in kpis if k.kpi_id == "noise.lnight" and k.device_id == "n"]
    assert _local(lnight, "noise.lnight", tz)[1] == ("01 23:00", "02 07:00", 48)
    assert lnight[1].value == pytest.approx(50.0)
    lden = next(k for k in kpis if k.kpi_id == "noise.lden" and k.device_id == "n")
    assert _local([lden], "noise.lden", tz) == [("01 07:00", "02 07:00", 144)]
    assert [lden.attributes[p] for p in ("lday", "levening", "lnight")] == [
        "60.00",
        "55.00",
        "50.00",
    ]


@pytest.mark.parametrize("window", ["15m", "30m", "1h"])
def test_windows_in_kathmandu_start_on_the_local_clock(window: str) -> None:
    tz = ZoneInfo("Asia/Kathmandu")  # +05:45: 30 min windows were at :15 and :45
    readings = _every(datetime(2024, 7, 1, 0, 15, tzinfo=UTC), 120)  # 06:00-08:00 local
    kpis = _run(_config("Asia/Kathmandu", window=window, kpis=["stat.count"]), readings)
    windows = _local(kpis, "stat.count", tz, device_id="d1")
    minutes = int(window[:-1]) * (60 if window.endswith("h") else 1)
    assert [(s[3:], n) for s, _, n in windows] == [
        (f"{6 + m // 60:02d}:{m % 60:02d}", minutes) for m in range(0, 120, minutes)
    ]


def _hours(kpis: list[KpiValue], tz: ZoneInfo) -> list[tuple[str, str, int, float]]:
    return [
        (
            k.window_start.astimezone(tz).strftime("%H:%M%z"),
            k.window_end.astimezone(tz).strftime("%H:%M%z"),
            k.sample_count,
            k.completeness,
        )
        for k in kpis
        if k.kpi_id == "stat.count" and k.device_id == "d1"
    ]


@pytest.mark.parametrize(
    ("timezone", "start", "expected"),
    [
        # spring: 02:00 +10:30 becomes 02:30 +11:00; the window across it ends there, the
        # next one runs to 03:00 (30 readings of its 30 minutes)
        ("Australia/Lord_Howe", datetime(2024, 10, 5, 14, 30, tzinfo=UTC), [
            ("01:00+1030", "02:30+1100", 60, 1.0),
            ("02:30+1100", "03:00+1100", 30, 1.0),
            ("03:00+1100", "04:00+1100", 60, 1.0),
        ]),
        # autumn: 02:00 +11:00 becomes 01:30 +10:30
        ("Australia/Lord_Howe", datetime(2024, 4, 6, 14, 0, tzinfo=UTC), [
            ("01:00+1100", "01:30+1030", 60, 1.0),
            ("01:30+1030", "02:00+1030", 30, 1.0),
            ("02:00+1030", "03:00+1030", 60, 1.0),
        ]),
        # Adelaide's and St John's whole-hour steps keep the half-hour shift: clock hours
        ("Australia/Adelaide", datetime(2024, 10, 5, 15, 30, tzinfo=UTC), [
            ("01:00+0930", "03:00+1030", 60, 1.0),
            ("03:00+1030", "04:00+1030", 60, 1.0),
            ("04:00+1030", "05:00+1030", 60, 1.0),
        ]),
        ("America/St_Johns", datetime(2024, 11, 3, 3, 30, tzinfo=UTC), [
            ("01:00-0230", "01:00-0330", 60, 1.0),
            ("01:00-0330", "02:00-0330", 60, 1.0),
            ("02:00-0330", "03:00-0330", 60, 1.0),
        ]),
    ],
)  # fmt: skip
def test_hour_windows_across_dst_changes_tile_time_and_follow_the_clock(
    timezone: str, start: datetime, expected: list[tuple[str, str, int, float]]
) -> None:
    tz = ZoneInfo(timezone)
    readings = _every(start, sum(n for _, _, n, _ in expected), quantity="temperature")
    kpis = _run(_config(timezone, window="1h", kpis=["stat.count"]), readings)
    hours = _hours(kpis, tz)
    assert hours == expected
    windows = [(k.window_start, k.window_end) for k in kpis if k.device_id == "d1"]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    assert sum(n for _, _, n, _ in hours) == len(readings)  # each reading in one window


@pytest.mark.parametrize("timezone", ["Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham"])
@pytest.mark.parametrize("minutes", [20, 30, 60, 120])
def test_the_grid_tiles_time_with_windows_no_longer_than_their_size(
    timezone: str, minutes: int
) -> None:
    grid = WindowGrid(minutes * 60 * US, ZoneInfo(timezone))
    t = grid.start(to_us(datetime(2024, 1, 1, tzinfo=UTC)))
    end = to_us(datetime(2025, 1, 1, tzinfo=UTC))
    while t < end:
        start, stop = grid.window(t)
        assert start == t
        assert 0 < stop - start <= minutes * 60 * US
        assert grid.window(stop - 1) == (start, stop)
        t = stop


@pytest.mark.parametrize("timezone", ["Europe/Brussels", "UTC", "America/New_York"])
@pytest.mark.parametrize("size", [timedelta(seconds=10), timedelta(minutes=1), timedelta(hours=1),
                                  timedelta(hours=2), timedelta(days=1)])  # fmt: skip
def test_whole_hour_zones_keep_the_utc_grid(timezone: str, size: timedelta) -> None:
    size_us = size // timedelta(microseconds=1)
    grid = WindowGrid(size_us, ZoneInfo(timezone))
    t = to_us(datetime(2024, 3, 31, tzinfo=UTC))  # across Europe's spring change
    for _ in range(500):
        assert grid.window(t) == (t - t % size_us, t - t % size_us + size_us)
        t += 7 * 60 * US + 13


# ------------------------------------------------------------------ upgrade from UTC windows


class _Job:
    """Stage 1 (one partition, "p0") feeding a zone stage, with checkpoints."""

    def __init__(self, config: StreamConfig, local: bool) -> None:
        self.config = config
        tz = config.tz if local else None
        self.stage1 = DeviceWindows(config.window, config.grace, zones={}, tz=tz)
        # a zone stage on the UTC grid: the engine as it was before (no local days used)
        zone_config = config if local else config.model_copy(update={"timezone": "UTC"})
        self.stage2 = ZoneWindows(zone_config, sources=1)
        self.kpis: list[KpiValue] = []

    def feed(self, readings: list[Reading]) -> None:
        for reading in readings:
            self.stage1.add([reading])
            # caught up: the wall clock closes the windows of a quiet gateway
            self.send(self.stage1.close(now=reading.ingest_time))

    def send(self, closed: list[dict[str, Any]]) -> None:
        for partial in closed:
            for key, reference in routing_keys(partial, self.config):
                self.stage2.add(key, partial, reference, "p0")
        horizon = self.stage1.horizon()
        if horizon is not None:
            self.stage2.advance("p0", horizon)
        self.kpis.extend(self.stage2.close())

    def finish(self) -> None:
        self.send(self.stage1.flush())
        self.kpis.extend(self.stage2.close(final=True, now=datetime(2030, 1, 1, tzinfo=UTC)))


@pytest.mark.parametrize("window", ["1m", "1h"])
@pytest.mark.parametrize(("cut", "replayed"), [(110, 0), (110, 7), (80, 20), (70, 0)])
def test_an_upgrade_in_kolkata_loses_and_double_counts_nothing(
    window: str, cut: int, replayed: int
) -> None:
    """A worker on UTC windows checkpoints after ``cut`` minutes and is upgraded.
    ``replayed``: it had gone on for that many minutes (sent on) before it stopped, so the
    new one replays them from its checkpoint. Gateway 2 is quiet from 10:10 to 10:45 IST
    (its hour closes by the wall clock). Every reading counts once; the hour open at the
    upgrade (10:30-11:30 IST) joins the clock hour that holds its last window so far,
    11:00-12:00 (90 minutes of readings: the one misaligned window); then clock hours."""
    config = _config("Asia/Kolkata", window=window, eaqi_period="1h", kpis=["stat.count", "eaqi"])
    start = datetime(2024, 7, 1, 4, 0, tzinfo=UTC)  # 09:30 IST
    quiet = (start + timedelta(minutes=40), start + timedelta(minutes=75))
    readings = sorted(
        _every(start, 300)
        + [r for r in _every(start, 300, device="d2", gateway="gw2")
           if not quiet[0] <= r.event_time < quiet[1]],
        key=lambda r: r.event_time,
    )  # fmt: skip
    at = [r.event_time for r in readings].index
    cut_at, resume_at = (
        at(start + timedelta(minutes=cut)),
        at(start + timedelta(minutes=cut + replayed)),
    )
    old = _Job(config, local=False)
    old.feed(readings[:cut_at])
    stage1_checkpoint = orjson.dumps(old.stage1.snapshot())
    old.feed(readings[cut_at:resume_at])
    stage2_checkpoint = orjson.dumps(old.stage2.snapshot())

    new = _Job(config, local=True)
    new.stage1.restore(orjson.loads(stage1_checkpoint))
    new.stage2.restore(orjson.loads(stage2_checkpoint))
    new.feed(readings[cut_at:])
    new.finish()

    kpis = old.kpis + new.kpis
    counts = [k for k in kpis if k.kpi_id == "stat.count" and k.device_id is None]
    assert sum(k.sample_count for k in counts) == len(readings)
    assert new.stage2.stats.stale_partials == 0
    assert new.stage1.stats.late == 0
    starts = Counter(k.window_start for k in counts)
    assert max(starts.values()) == 1
    hourly = _local([k for k in kpis if k.kpi_id == "eaqi"], "eaqi", KOLKATA)
    assert sum(n for _, _, n in hourly) == len(readings)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(hourly))  # no overlap
    assert hourly[0] == ("01 09:30", "01 10:30", 100)  # emitted before the upgrade
    if (cut, replayed) == (70, 0):
        # the zone stage had closed up to 10:30: a half hour to the clock, then hours
        assert hourly[1][:2] == ("01 10:30", "01 11:00")
    else:  # 10:30-12:00 (gateway 2 from 10:45), in the hour of the upgrade
        assert hourly[1] == ("01 11:00", "01 12:00", 165)
    assert [h[:2] for h in hourly[-3:]] == [
        ("01 12:00", "01 13:00"),
        ("01 13:00", "01 14:00"),
        ("01 14:00", "01 15:00"),
    ]
    if window == "1h":  # the base windows are the same hours
        assert [h[:2] for h in _local(counts, "stat.count", KOLKATA)] == [h[:2] for h in hourly]
    assert new.stage1.open_windows == 0
    assert new.stage2.snapshot()["keys"]["z"]["pending"] == []
