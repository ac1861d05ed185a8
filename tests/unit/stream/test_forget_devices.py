"""Stage 2 stops expecting a device the config does not declare once it has been silent
for ``forget_undeclared_after``: a retired or swapped sensor no longer makes a
completeness-0 KPI every window forever. A declared device stays expected."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from climastream.contract import KpiValue, Quantity, Reading
from stream.config import StreamConfig, StreamConfigError
from stream.pipeline import Replay, replay
from stream.windows import DeviceWindows


@dataclass
class ZoneStatsBefore:
    """stream.zones.ZoneStats of the last release."""

    partials: int = 0
    stale_partials: int = 0
    stale_readings: int = 0
    replayed_partials: int = 0
    windows: int = 0
    kpis: int = 0
    skipped_windows: int = 0
    duplicates: int = 0


T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=10)


def config(**overrides: object) -> StreamConfig:
    base: dict[str, object] = {
        "window": "10m",
        "grace": "1m",
        "default_cadence": "10m",
        "forget_undeclared_after": "2h",
        "devices": {"declared": {"cadence": "10m", "zone": "centre"}},
        "kpis": ["completeness", "stat.mean"],
    }
    base.update(overrides)
    return StreamConfig.model_validate(base)


def readings(hours: int, *, retired_until: timedelta, back_at: timedelta | None) -> list[Reading]:
    """``keep`` reports every window; ``retired`` (undeclared) and ``declared`` stop after
    ``retired_until``; ``retired`` reports once more at ``back_at``."""
    out = []
    for n in range(hours * 6):
        at = T0 + n * WINDOW + timedelta(minutes=1)
        devices = ["keep"]
        if n * WINDOW < retired_until:
            devices += ["retired", "declared"]
        if back_at is not None and n * WINDOW == back_at:
            devices.append("retired")
        out += [
            Reading(
                device_id=d,
                gateway_id="gw1",
                seq=n,
                quantity=Quantity.TEMPERATURE,
                value=20.0,
                unit="Cel",
                event_time=at,
                ingest_time=at,
                zone="centre",
            )
            for d in devices
        ]
    return out


def completeness_windows(kpis: list[KpiValue], device: str) -> list[timedelta]:
    return sorted(
        k.window_start - T0 for k in kpis if k.kpi_id == "completeness" and k.device_id == device
    )


def zone_completeness(kpis: list[KpiValue], at: timedelta) -> float:
    [mean] = [
        k
        for k in kpis
        if k.kpi_id == "stat.mean" and k.device_id is None and k.window_start == T0 + at
    ]
    return mean.completeness


def test_an_undeclared_device_silent_for_long_is_no_longer_expected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stream.zones")
    run = Replay(config(), gateways={"gw1"})
    run.add(readings(8, retired_until=timedelta(hours=1), back_at=timedelta(hours=6)))
    kpis = run.finish().kpis
    retired = completeness_windows(kpis, "retired")
    # heard until 0:50-1:00, expected (completeness 0) for 2 h of silence, then not
    assert retired[: 6 + 12] == [n * WINDOW for n in range(18)]
    assert max(retired[:18]) == timedelta(hours=2, minutes=50)
    # heard again at 6:00: expected again from then on
    assert retired[18:] == [timedelta(hours=6) + n * WINDOW for n in range(12)]
    assert run.zones.stats.forgotten_devices == 1
    [line] = [r.getMessage() for r in caplog.records if "no longer expected" in r.getMessage()]
    assert "device retired" in line
    assert "2026-03-02T01:00:00+00:00" in line
    # a declared device stays expected, silent or not
    assert completeness_windows(kpis, "declared") == [n * WINDOW for n in range(48)]
    # the zone's completeness no longer counts the retired device: keep + declared
    assert zone_completeness(kpis, timedelta(hours=2, minutes=50)) == pytest.approx(1 / 3)
    assert zone_completeness(kpis, timedelta(hours=3)) == pytest.approx(1 / 2)


def test_forgetting_does_not_depend_on_how_the_readings_arrive() -> None:
    """The live worker closes windows as the watermark moves, ``kpi eval`` of an input it
    cannot rewind closes them all at the end: the same KPIs."""
    data = readings(8, retired_until=timedelta(hours=1), back_at=timedelta(hours=6))
    at_once = Replay(config(), gateways=None)
    at_once.add(data)
    incremental = replay(data, config())
    assert [k.model_dump() for k in at_once.finish().kpis] == [
        k.model_dump() for k in incremental.kpis
    ]


def test_never_forget_and_the_limit_is_checked() -> None:
    kpis = replay(
        readings(8, retired_until=timedelta(hours=1), back_at=None),
        config(forget_undeclared_after=None),
    ).kpis
    assert completeness_windows(kpis, "retired") == [n * WINDOW for n in range(48)]
    with pytest.raises(ValueError, match="forget_undeclared_after must be at least 1h"):
        config(forget_undeclared_after="10m")
    assert StreamConfig().forget_undeclared_after == timedelta(days=7)
    assert StreamConfigError  # the loader's error names the key (see test_config)


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_restored_checkpoint_keeps_forgetting(old_checkpoint: bool) -> None:
    """A checkpoint taken while the device is silent restores its silence; one from before
    this feature (no "heard") counts the silence from the first window closed after it."""
    cfg = config()
    data = readings(8, retired_until=timedelta(hours=1), back_at=None)
    cut = T0 + timedelta(hours=2)
    first = Replay(cfg, gateways={"gw1"})
    first.add([r for r in data if r.event_time < cut])
    s1, s2 = first.devices.snapshot(), first.zones.snapshot()
    if old_checkpoint:
        for state in s2["keys"].values():
            del state["heard"]
    second = Replay(cfg, gateways={"gw1"})
    second.devices = DeviceWindows(cfg.window, cfg.grace, gateways={"gw1"}, tz=cfg.tz)
    second.devices.restore(orjson.loads(orjson.dumps(s1)))
    second.zones.restore(orjson.loads(orjson.dumps(s2)))
    second.add([r for r in data if r.event_time >= cut])
    kpis = first.result.kpis + second.finish().kpis
    retired = completeness_windows(kpis, "retired")
    # the next window to close when the checkpoint was taken (the old one starts counting)
    resumed = next(iter(s2["keys"].values()))["next"]
    since = timedelta(hours=1) if not old_checkpoint else (
        datetime.fromtimestamp(resumed / 1e6, UTC) - T0
    )  # fmt: skip
    assert max(retired) == since + timedelta(hours=2) - WINDOW
    assert second.zones.stats.forgotten_devices == 1


def test_a_worker_of_the_last_release_restores_the_checkpoint() -> None:
    """A rolling upgrade hands an old worker a partition a new one checkpointed: it
    restores the stats whole (ZoneStats(**stats)), so a new counter there crashed it."""
    run = Replay(config(), gateways={"gw1"})
    run.add(readings(4, retired_until=timedelta(hours=1), back_at=None))
    snap = orjson.loads(orjson.dumps(run.zones.snapshot()))
    assert "forgotten_devices" not in snap["stats"]
    ZoneStatsBefore(**snap["stats"])  # what the last release's restore does
    again = Replay(config(), gateways={"gw1"})
    again.zones.restore(snap)
    assert again.zones.stats.forgotten_devices == 1
