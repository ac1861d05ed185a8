"""Both stages' state stays flat over days of readings: what a window, a day or a dedupe
horizon needs is let go once it has passed, so a worker that runs for months holds what
it held after its first day (the KPIs' longest windows are days)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from climastream.contract import Quantity, Reading
from climastream.quantities import CANONICAL_UNITS
from stream.config import StreamConfig
from stream.windows import DeviceWindows, from_us
from stream.zones import ZoneWindows, routing_keys

T0 = datetime(2026, 7, 1, tzinfo=UTC)
DEVICES = {
    "th-ref": ("park", ["temperature", "relative_humidity"], 20.0),
    "th-1": ("centre", ["temperature", "relative_humidity"], 24.0),
    "pm-1": ("centre", ["pm2_5", "pm10"], 12.0),
    "no2-1": ("centre", ["no2"], 30.0),
    "noise-1": ("centre", ["noise_laeq"], 55.0),
    # a LoRaWAN node whose clock stands still: its numbers have gaps, its time never moves
    "lora-stuck": ("centre", ["temperature", "relative_humidity"], 21.0),
}


def config() -> StreamConfig:
    return StreamConfig.model_validate(
        {
            "window": "1m",
            "grace": "5s",
            "reference": {"device_id": "th-ref"},
            "zones": {"centre": {}, "park": {}},
            "devices": {
                d: {"cadence": "1m", "zone": z, "quantities": q} for d, (z, q, _) in DEVICES.items()
            },
            "kpis": ["heatwave.status", "uhi.daily_max", "uhi.night", "noise.lden", "eaqi"],
        }
    )


def sizes(s1: DeviceWindows, s2: ZoneWindows) -> dict[str, Any]:
    keys = s2._keys.values()
    return {
        "open_windows": s1.open_windows,
        "remembered": s1.remembered(),
        "arrival_order": sum(
            len(state[4]) for seen in s1._seen.values() for state in seen._state.values()
        ),
        "pending": sum(len(k["pending"]) for k in keys),
        "eaqi": sum(len(v) for k in keys for v in k["eaqi"].values()),
        "eaqi_means": sum(len(v) for k in keys for v in k["eaqi_means"].values()),
        "days": sum(len(k["days"]) for k in keys),
        "nights": sum(len(k["nights"]) for k in keys),
        "lden": sum(len(v) for k in keys for v in k["lden"].values()),
    }


def _step(
    cfg: StreamConfig, s1: DeviceWindows, s2: ZoneWindows, batch: list[Reading], now: datetime
) -> list[Any]:
    """One batch through both stages, the wall clock 30 s behind ``now``; the KpiValues
    stage 2 closes."""
    s1.add(batch)
    for partial in s1.close(now + timedelta(seconds=30)):
        for key, reference in routing_keys(partial, cfg):
            s2.add(key, orjson.loads(orjson.dumps(partial)), reference, "0")
    horizon = s1.horizon()
    assert horizon is not None
    s2.advance("0", horizon)
    return s2.close()


def test_state_and_checkpoints_stay_flat_over_days() -> None:
    cfg = config()
    s1 = DeviceWindows(cfg.window, cfg.grace, zones=cfg.device_zones)
    s2 = ZoneWindows(cfg, sources=1)
    seen: dict[int, tuple[dict[str, Any], int]] = {}
    kpis: list[str] = []
    for minute in range(6 * 1440):
        now = T0 + timedelta(minutes=minute)
        batch = []
        for device, (zone, quantities, base) in DEVICES.items():
            at = T0 if device == "lora-stuck" else now
            gateway = "gw-2" if device == "lora-stuck" else "gw-1"
            for i, quantity in enumerate(quantities):
                q = Quantity(quantity)
                batch.append(
                    Reading(
                        device_id=device, gateway_id=gateway, seq=minute * 256 + i, quantity=q,
                        value=base + (minute % 7), unit=CANONICAL_UNITS[q], event_time=at,
                        ingest_time=now, zone=zone,
                    )
                )  # fmt: skip
        kpis.extend(k.kpi_id for k in _step(cfg, s1, s2, batch, now))
        if minute % 1440 == 0 and minute:  # each midnight UTC
            snap = s1.snapshot()
            # the stuck node's, below (its gateway, which sends nothing newer than its
            # first day, is forgotten at every move of the wall clock after that)
            snap["seen"].pop("gw-2", None)
            ckpt = len(orjson.dumps(snap)) + len(orjson.dumps(s2.snapshot()))
            seen[minute // 1440] = (sizes(s1, s2), ckpt)
    # the daily KPIs were emitted (so their windows did close) ...
    assert kpis.count("heatwave.status") >= 2 * 4
    assert kpis.count("noise.lden") >= 2 * 4
    assert kpis.count("uhi.night") >= 4
    # ... and from the second midnight on, every structure is the size it was then
    # (EAQI's running PM means fill up over the first 24 periods), but for the stuck
    # node's dedupe memory, which the cap (4,096) keeps between half and whole (and its
    # arrival order within twice that)
    bounds = {"remembered": 4096 + 16, "arrival_order": 2 * 4096 + 1 + 16}
    for day, (state, _) in seen.items():
        for key, bound in bounds.items():
            assert state.pop(key) <= bound, (day, key)
    for day in (3, 4, 5):
        assert seen[day][0] == seen[2][0], day
        assert seen[day][1] < seen[2][1] * 1.05, day


def _gateway_state(s1: DeviceWindows) -> dict[str, int]:
    snap = s1.snapshot()
    return {
        "seen": len(snap["seen"]),
        "devices": sum(len(per_device) for per_device in snap["seen"].values()),
        "max_event": len(snap["max_event"]),
        "closed": len(snap["closed"]),
    }


def test_gateways_taken_out_of_service_are_forgotten() -> None:
    """A city replaces a gateway (and its sensors) every day; each serves two days, and
    behind a gateway that stays, a sensor is swapped every day. Stage 1 kept every
    gateway's watermark, closed-window mark and deduplication memory, and every device's,
    for good, in memory and in every checkpoint; now one silent for a day (by the wall
    clock) with no window open is let go, so the state stays the size of what is in
    service."""
    s1 = DeviceWindows(timedelta(minutes=1), timedelta(seconds=5))
    per_day: list[tuple[dict[str, int], int]] = []
    for minute in range(10 * 1440):
        now = T0 + timedelta(minutes=minute)
        day = minute // 1440
        batch = [
            Reading(device_id=f"th-{g}", gateway_id=f"gw-{g}", seq=minute * 256,
                    quantity=Quantity.TEMPERATURE, value=20.0, unit="Cel",
                    event_time=now, ingest_time=now, zone="centre")
            for g in (day - 1, day) if g >= 0
        ]  # fmt: skip
        batch.append(Reading(device_id=f"swapped-{day}", gateway_id="gw-main", seq=minute,
                             quantity=Quantity.TEMPERATURE, value=20.0, unit="Cel",
                             event_time=now, ingest_time=now, zone="centre"))  # fmt: skip
        assert s1.add(batch) == []
        s1.close(now + timedelta(seconds=30))
        if minute % 1440 == 1439:
            per_day.append((_gateway_state(s1), len(orjson.dumps(s1.snapshot()))))
    # three gateways in service, plus the one retired yesterday (silent for less than a
    # day), and behind gw-main today's sensor and yesterday's
    for day in range(2, 10):
        assert per_day[day][0] == {"seen": 4, "devices": 5, "max_event": 4, "closed": 4}, day
        assert per_day[day][1] < per_day[2][1] * 1.05, day


def test_a_forgotten_gateway_heard_again_counts_each_reading_once() -> None:
    """A retired gateway plugged in again: a redelivery of a reading it sent before it was
    forgotten is late (its window closed long ago), never counted a second time, and its
    new readings are taken as a new gateway's, including an old checkpoint's."""
    s1 = DeviceWindows(timedelta(minutes=1), timedelta(seconds=5))

    def reading(gateway: str, seq: int, at: datetime) -> Reading:
        return Reading(device_id=f"th-{gateway}", gateway_id=gateway, seq=seq,
                       quantity=Quantity.TEMPERATURE, value=20.0, unit="Cel",
                       event_time=at, ingest_time=at, zone="centre")  # fmt: skip

    old = reading("gw-old", 7, T0)
    assert s1.add([old]) == []
    before_forgetting = orjson.dumps(s1.snapshot())
    for minute in range(1, 2 * 1440):
        now = T0 + timedelta(minutes=minute)
        s1.add([reading("gw-live", minute, now)])
        s1.close(now + timedelta(seconds=30))
    assert "gw-old" not in s1.snapshot()["seen"]
    restored = DeviceWindows(timedelta(minutes=1), timedelta(seconds=5))
    restored.restore(orjson.loads(before_forgetting))
    restored.add([reading("gw-live", 1, T0 + timedelta(days=2))])
    closed = restored.close(T0 + timedelta(days=2, seconds=30))  # gw-old's window closes
    assert [p["g"] for p in closed] == ["gw-old"]
    restored.close(T0 + timedelta(days=2, seconds=90))  # and gw-old is forgotten here
    assert "gw-old" not in restored.snapshot()["seen"]
    now = T0 + timedelta(days=2, minutes=1)
    for engine in (s1, restored):
        added = engine.stats.added
        assert engine.add([old]) == [old]  # late, not added again
        fresh = reading("gw-old", 1, now)  # its counter restarted meanwhile
        assert engine.add([fresh]) == []
        assert engine.stats.added == added + 1
        assert engine.stats.duplicates == 0


def test_a_gateway_back_with_a_backlog_has_it_late_not_lost() -> None:
    """A gateway forgotten after a day offline comes back and delivers its buffer, oldest
    first: what is behind the wall clock is late. Its first reading set where its windows
    were closed but gave it no watermark, so the wall clock no longer moved that mark; a
    later backlog reading behind the wall opened a window the zone stage had already closed,
    which dropped it as a replayed window: counted neither in a KPI nor as late."""
    s1 = DeviceWindows(timedelta(minutes=1), timedelta(seconds=5))

    def reading(gateway: str, seq: int, at: datetime) -> Reading:
        return Reading(device_id=f"th-{gateway}", gateway_id=gateway, seq=seq,
                       quantity=Quantity.TEMPERATURE, value=20.0, unit="Cel",
                       event_time=at, ingest_time=at, zone="centre")  # fmt: skip

    assert s1.add([reading("gw-back", 1, T0)]) == []
    back = T0 + timedelta(hours=25)
    for minute in range(1, 25 * 60):
        now = T0 + timedelta(minutes=minute)
        s1.add([reading("gw-live", minute, now)])
        s1.close(now + timedelta(seconds=30))
    assert "gw-back" not in s1.snapshot()["seen"]  # forgotten
    buffered = reading("gw-back", 2, back - timedelta(hours=2))
    assert s1.add([buffered]) == [buffered]
    for minute in range(3):  # the wall moves on while the buffer drains
        now = back + timedelta(minutes=minute)
        s1.add([reading("gw-live", 3000 + minute, now)])
        s1.close(now + timedelta(seconds=30))
    horizon = s1.horizon()
    assert horizon is not None
    behind_wall = reading("gw-back", 3, from_us(horizon) - timedelta(seconds=30))
    assert s1.add([behind_wall]) == [behind_wall]  # late, as any reading behind the wall


def _run_minutes(
    cfg: StreamConfig,
    minutes: int,
    batch_at: Any,
    every: int = 1,
    on_midnight: Any = None,
) -> list[Any]:
    """Both stages over ``minutes`` of readings (``batch_at(minute, now)`` gives each
    ``every`` minutes' readings), the wall clock 30 s behind; returns the KpiValues."""
    s1 = DeviceWindows(cfg.window, cfg.grace, zones=cfg.device_zones, tz=cfg.tz)
    s2 = ZoneWindows(cfg, sources=1)
    kpis: list[Any] = []
    for minute in range(0, minutes, every):
        now = T0 + timedelta(minutes=minute)
        kpis.extend(_step(cfg, s1, s2, batch_at(minute, now), now))
        if on_midnight is not None and minute % 1440 == 0 and minute:
            on_midnight(minute // 1440, s2)
    return kpis


def _reading(device: str, zone: str | None, quantity: Quantity, value: float, seq: int,
             at: datetime) -> Reading:  # fmt: skip
    return Reading(device_id=device, gateway_id="gw-1", seq=seq, quantity=quantity,
                   value=value, unit=CANONICAL_UNITS[quantity], event_time=at,
                   ingest_time=at, zone=zone)  # fmt: skip


def test_retired_undeclared_devices_and_zones_leave_nothing_in_the_zone_stage() -> None:
    """Sensors the config does not declare are swapped: a LoRaWAN node behind a gateway
    without a default zone (keyed by its own id) every two hours, a noise sensor in a
    declared zone every two hours, and a site (an undeclared zone, with a PM sensor)
    every day. Each is forgotten after ``forget_undeclared_after``, but the zone stage
    kept the node's and the site's whole state (and the noise sensor's Lden scope) for
    good: in memory, in every checkpoint, and closed every window."""
    cfg = StreamConfig.model_validate(
        {
            "window": "10m",
            "grace": "5s",
            "default_cadence": "10m",
            "forget_undeclared_after": "1h",
            "zones": {"centre": {}},
            "kpis": ["completeness", "stat.mean", "noise.lden", "eaqi", "heatwave.status"],
        }
    )

    def batch_at(minute: int, now: datetime) -> list[Reading]:
        swap, day = minute // 120, minute // 1440
        return [
            _reading(f"lora-{swap}", None, Quantity.TEMPERATURE, 20.0, minute, now),
            _reading(f"noise-{swap}", "centre", Quantity.NOISE_LAEQ, 55.0, minute, now),
            _reading(f"pm-{day}", f"site-{day}", Quantity.PM2_5, 12.0, minute, now),
        ]

    per_day: dict[int, tuple[int, int, int]] = {}

    def on_midnight(day: int, s2: ZoneWindows) -> None:
        keys = s2._keys.values()
        scopes = sum(len(state["lden"]) for state in keys)
        per_day[day] = (len(s2._keys), scopes, len(orjson.dumps(s2.snapshot())))

    kpis = _run_minutes(cfg, 7 * 1440, batch_at, every=10, on_midnight=on_midnight)
    assert sum(k.kpi_id == "noise.lden" for k in kpis) >= 5
    assert sum(k.kpi_id == "eaqi" for k in kpis) >= 5 * 24
    # from the third midnight on (a site's running PM means last a day after it), the
    # zone stage holds what is in service and what is still to close, no more
    for day in (4, 5, 6):
        assert per_day[day][:2] == per_day[3][:2], (day, per_day)
        assert per_day[day][2] < per_day[3][2] * 1.05, (day, per_day)
    assert per_day[3][0] <= 4  # centre, today's node, today's site and yesterday's


def _forgetting_within_the_hour(kpi: str) -> StreamConfig:
    """10-minute windows in UTC, an undeclared device forgotten after an hour, one KPI."""
    return StreamConfig.model_validate(
        {
            "window": "10m",
            "grace": "5s",
            "timezone": "UTC",
            "default_cadence": "10m",
            "forget_undeclared_after": "1h",
            "zones": {"centre": {}},
            "kpis": [kpi],
        }
    )


def test_a_zone_back_the_next_day_keeps_its_heatwave_run() -> None:
    """An undeclared zone whose only sensor goes quiet in the evening (and is forgotten)
    and is back after midnight: its heatwave run goes on, as if the zone had been kept."""
    cfg = _forgetting_within_the_hour("heatwave.status")
    quiet = (2 * 1440 + 21 * 60, 3 * 1440 + 60)  # day 2 21:00 to day 3 01:00

    def batch_at(minute: int, now: datetime) -> list[Reading]:
        batch = [_reading("keep", "centre", Quantity.TEMPERATURE, 20.0, minute, now)]
        if not quiet[0] <= minute < quiet[1]:
            batch.append(_reading("hot-1", "hot", Quantity.TEMPERATURE, 31.0, minute, now))
        return batch

    kpis = _run_minutes(cfg, 5 * 1440, batch_at, every=10)
    runs = [k.attributes["consecutive_days"] for k in kpis
            if k.kpi_id == "heatwave.status" and k.zone == "hot"]  # fmt: skip
    assert runs == ["1", "2", "3", "4"]


def test_a_zone_back_within_a_day_keeps_its_running_pm_means() -> None:
    """An undeclared zone whose PM sensor is quiet for three hours (and forgotten) keeps
    the hourly means its 24-hour running mean still averages over."""
    cfg = _forgetting_within_the_hour("eaqi.pollutant")

    def batch_at(minute: int, now: datetime) -> list[Reading]:
        batch = [_reading("keep", "centre", Quantity.TEMPERATURE, 20.0, minute, now)]
        if not 10 * 60 <= minute < 13 * 60:
            batch.append(_reading("pm-1", "site", Quantity.PM2_5, 12.0, minute, now))
        return batch

    kpis = _run_minutes(cfg, 16 * 60, batch_at, every=10)
    after = [k.attributes["averaging"] for k in kpis
             if k.zone == "site" and k.window_end == T0 + timedelta(hours=14)]  # fmt: skip
    assert after == ["running mean of 11/24 periods"]
