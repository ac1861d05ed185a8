"""Windows on the city's local clock where its UTC offset is not a whole number of hours.

Hour windows (the EAQI's, or a 1 h base window) used to be cut on the UTC grid: in Kolkata
(+05:30) they ran 10:30-11:30 local, where CPCB's hourly data, city staff and dashboards
use clock hours. Whole-hour zones keep the UTC grid exactly (the other stream tests).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from climastream.contract import KpiValue, Quantity, Reading
from climastream.quantities import CANONICAL_UNITS
from stream.config import StreamConfig
from stream.grid import US, WindowGrid
from stream.pipeline import replay
from stream.windows import to_us

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
