"""The two-stage engine (as ``kpi eval`` runs it): windows, lateness, dedupe, zone KPIs."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from climastream.contract import KpiValue, Quantity, Reading
from climastream.quantities import CANONICAL_UNITS
from stream.config import StreamConfig
from stream.pipeline import Replay, replay
from stream.windows import DeviceWindows, to_us
from stream.zones import ZoneWindows, routing_keys

T0 = datetime(2024, 7, 1, 10, 0, tzinfo=UTC)  # 12:00 in Brussels (CEST)


class Seq:
    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def reading(
        self,
        device: str,
        quantity: str,
        value: float,
        at: datetime,
        zone: str | None = "centre",
        gateway: str = "gw1",
    ) -> Reading:
        seq = self.next.get(device, 0)
        self.next[device] = seq + 1
        q = Quantity(quantity)
        return Reading(
            device_id=device, gateway_id=gateway, seq=seq, quantity=q, value=value,
            unit=CANONICAL_UNITS[q], event_time=at, ingest_time=at, zone=zone,
        )  # fmt: skip


def cfg(**overrides: object) -> StreamConfig:
    base: dict[str, object] = {"window": "10s", "grace": "2s", "default_cadence": "5s"}
    base.update(overrides)
    return StreamConfig.model_validate(base)


def pick(kpis: list[KpiValue], kpi_id: str, **scope: object) -> list[KpiValue]:
    out = [k for k in kpis if k.kpi_id == kpi_id]
    for name, value in scope.items():
        out = [k for k in out if getattr(k, name) == value]
    return out


def test_device_window_late_and_duplicates() -> None:
    s = Seq()
    engine = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2))
    first = s.reading("d1", "temperature", 20.0, T0 + timedelta(seconds=1))
    assert engine.add([first, first]) == []
    assert engine.stats.duplicates == 1
    engine.add([s.reading("d1", "temperature", 22.0, T0 + timedelta(seconds=13))])
    closed = engine.close()
    assert [p["q"]["temperature"] for p in closed] == [[20.0]]  # 13 s >= 10 + 2 grace
    late = s.reading("d1", "temperature", 69.0, T0 + timedelta(seconds=5))
    assert engine.add([late]) == [late]
    assert engine.stats.late == 1


def test_quiet_sensor_window_closes_on_wall_clock() -> None:
    s = Seq()
    engine = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2))
    engine.add([s.reading("d1", "temperature", 20.0, T0 + timedelta(seconds=1))])
    assert engine.close(now=T0 + timedelta(seconds=11.9)) == []
    closed = engine.close(now=T0 + timedelta(seconds=12))
    assert len(closed) == 1
    assert engine.horizon() == int((T0 + timedelta(seconds=10)).timestamp()) * 1_000_000


def test_snapshot_restore_round_trip() -> None:
    s = Seq()
    engine = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2))
    first = s.reading("d1", "temperature", 20.0, T0)
    engine.add([first])
    copy = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2))
    copy.restore(engine.snapshot())
    assert copy.add([first]) == []
    assert copy.stats.duplicates == 1
    assert copy.flush()[0]["q"] == {"temperature": [20.0]}


def test_stats_completeness_and_silent_device() -> None:
    s = Seq()
    config = cfg(devices={"d1": {"cadence": "5s", "zone": "centre"},
                          "quiet": {"cadence": "5s", "zone": "centre",
                                    "quantities": ["temperature"]}})  # fmt: skip
    readings = [
        s.reading("d1", "temperature", 20.0, T0),  # 2 expected in 10 s at 5 s cadence
        s.reading("d1", "temperature", 24.0, T0 + timedelta(seconds=5)),
        s.reading("d2", "temperature", 29.0, T0 + timedelta(seconds=3)),  # undeclared: 5 s
        s.reading("d1", "temperature", 0.0, T0 + timedelta(seconds=20)),
    ]
    kpis = replay(readings, config).kpis
    first = [k for k in kpis if k.window_start == T0]
    mean = pick(first, "stat.mean", device_id="d1")[0]
    assert (mean.value, mean.sample_count, mean.completeness) == (22.0, 2, 1.0)
    zone_mean = pick(first, "stat.mean", device_id=None, zone="centre")[0]
    assert zone_mean.value == pytest.approx((20 + 24 + 29) / 3)
    # zone completeness: 3 readings of 6 expected (d1, d2, quiet at 2 each)
    assert zone_mean.completeness == pytest.approx(0.5)
    assert pick(first, "stat.max", zone="centre", device_id=None)[0].value == 29.0
    assert pick(first, "stat.p95", device_id="d1")[0].value == pytest.approx(23.8)
    quiet = pick(first, "completeness", device_id="quiet")[0]
    assert (quiet.value, quiet.sample_count) == (0.0, 0)
    # the silent window 10..20 s still exists for every known device
    assert {k.device_id for k in pick(kpis, "completeness")
            if k.window_start == T0 + timedelta(seconds=10)} == {"d1", "d2", "quiet"}  # fmt: skip


def test_uhi_across_zones_and_heat() -> None:
    s = Seq()
    config = cfg(reference={"device_id": "ref"}, zones={"centre": {}, "park": {}})
    readings = [
        s.reading("a", "temperature", 30.0, T0, gateway="gw1"),
        s.reading("b", "temperature", 32.0, T0 + timedelta(seconds=1), gateway="gw2"),
        s.reading("a", "relative_humidity", 50.0, T0),
        s.reading("b", "relative_humidity", 50.0, T0 + timedelta(seconds=1), gateway="gw2"),
        s.reading("ref", "temperature", 24.0, T0, zone="park", gateway="gw3"),
        s.reading("ref", "temperature", 25.0, T0 + timedelta(seconds=2), zone="park",
                  gateway="gw3"),
    ]  # fmt: skip
    kpis = replay(readings, config).kpis
    uhi = pick(kpis, "uhi.intensity", zone="centre")[0]
    assert uhi.value == pytest.approx(31.0 - 24.5)
    # heat stress on the zone means T=31, RH=50
    dew = pick(kpis, "heat.dew_point", zone="centre", device_id=None)[0]
    # gamma = ln(0.5) + 17.62*31/274.12 = 1.299484; Td = 243.12*gamma/(17.62-gamma)
    assert dew.value == pytest.approx(19.358, abs=0.001)
    hi = pick(kpis, "heat.heat_index", zone="centre", device_id=None)[0]
    # 31 °C = 87.8 °F, RH 50: Rothfusz regression = 90.711 °F = 32.617 °C
    assert hi.value == pytest.approx(32.617, abs=0.001)


def test_noise_traffic_energy_waste() -> None:
    s = Seq()
    config = cfg(zones={"centre": {"area_km2": 2.0}}, co2e_kg_per_kwh=0.5,
                 bin_threshold_pct=80)  # fmt: skip
    at = T0 + timedelta(seconds=1)
    readings = [
        s.reading("n1", "noise_laeq", 60.0, at),
        s.reading("n1", "noise_laeq", 70.0, at + timedelta(seconds=5)),
        s.reading("v1", "vehicle_count", 4.0, at),
        s.reading("v2", "vehicle_count", 6.0, at),
        s.reading("p1", "parking_occupancy", 40.0, at),
        s.reading("p1", "parking_occupancy", 60.0, at + timedelta(seconds=5)),
        s.reading("e1", "energy", 1.5, at),
        s.reading("e1", "energy", 0.5, at + timedelta(seconds=5)),
        s.reading("w1", "water_volume", 0.25, at),
        s.reading("b1", "bin_fill_level", 70.0, at),
        s.reading("b1", "bin_fill_level", 85.0, at + timedelta(seconds=5)),
        s.reading("b2", "bin_fill_level", 50.0, at),
    ]
    kpis = replay(readings, config).kpis
    zone = {"zone": "centre", "device_id": None}
    assert pick(kpis, "noise.laeq", **zone)[0].value == pytest.approx(67.4036, abs=1e-3)
    assert pick(kpis, "traffic.vehicles", **zone)[0].value == 10.0
    assert pick(kpis, "traffic.intensity_km2", **zone)[0].value == 5.0
    assert pick(kpis, "parking.occupancy", **zone)[0].value == 50.0
    assert pick(kpis, "energy.kwh", **zone)[0].value == 2.0
    assert pick(kpis, "energy.co2e_kg", **zone)[0].value == 1.0
    assert pick(kpis, "water.m3", **zone)[0].value == 0.25
    assert pick(kpis, "waste.fill_level", device_id="b1")[0].value == 85.0  # latest
    assert pick(kpis, "waste.bins_over_threshold", **zone)[0].value == 1.0


def test_eaqi_hourly_and_pm_running_mean() -> None:
    s = Seq()
    config = cfg(window="1m", eaqi_period="1h", eaqi_running_periods=24)
    readings = []
    for hour in range(2):
        at = T0 + timedelta(hours=hour, minutes=10)
        readings.append(s.reading("pm", "pm2_5", 10.0 if hour == 0 else 30.0, at))
        readings.append(s.reading("no2", "no2", 20.0 if hour == 0 else 70.0, at))
    kpis = replay(readings, config).kpis
    overall = pick(kpis, "eaqi")
    assert [(k.window_start, k.value, k.band) for k in overall] == [
        (T0, 2.0, "fair"),  # PM2.5 10 fair, NO2 20 fair
        (T0 + timedelta(hours=1), 4.0, "poor"),  # NO2 70 poor; PM running (10+30)/2=20
    ]
    assert overall[1].attributes["dominant_pollutant"] == "no2"
    pm = pick(kpis, "eaqi.pollutant", quantity=Quantity.PM2_5)[1]
    assert pm.attributes["concentration"] == "20.000"
    assert pm.band == "moderate"


def test_replay_end_closes_long_windows_of_zones_already_closed() -> None:
    """Zone "west" goes quiet early in the hour; its minute windows close during the
    replay (the watermark passes them), so at the end it has no base window pending. Its
    hour window must still be emitted, like the later zone's (an audit found it was not)."""
    s = Seq()
    config = cfg(window="1m", eaqi_period="1h")
    readings = [
        s.reading("no2-w", "no2", 30.0, T0 + timedelta(minutes=5), zone="west"),
        s.reading("no2-e", "no2", 30.0, T0 + timedelta(minutes=50), zone="east"),
    ]
    kpis = replay(readings, config).kpis
    assert sorted((k.zone, k.window_start, k.band) for k in pick(kpis, "eaqi")) == [
        ("east", T0, "moderate"),  # NO2 30 ug/m3: 25 < 30 <= 60 (EAQI 2024)
        ("west", T0, "moderate"),
    ]


def test_heatwave_and_daily_uhi_over_local_days() -> None:
    s = Seq()
    config = cfg(window="1h", reference={"zone": "park"}, zones={"centre": {}, "park": {}})
    maxima = [26.0, 31.0, 27.0, 30.0, 25.0, 32.0]
    readings = []
    start = datetime(2024, 7, 1, 10, 0, tzinfo=UTC)  # 12:00 local
    for day, tmax in enumerate(maxima):
        at = start + timedelta(days=day)
        readings.append(s.reading("c", "temperature", tmax, at))
        readings.append(s.reading("c", "temperature", tmax - 5, at + timedelta(hours=3)))
        readings.append(s.reading("r", "temperature", tmax - 2, at, zone="park"))
        readings.append(s.reading("r", "temperature", tmax - 9, at + timedelta(hours=3),
                                  zone="park"))  # fmt: skip
    kpis = replay(readings, config).kpis
    status = pick(kpis, "heatwave.status", zone="centre")
    assert [k.value for k in status] == [0, 0, 0, 0, 0, 1]
    assert status[-1].attributes == {"consecutive_days": "6", "hot_days": "3", "tmax": "32.00"}
    # the local day in Brussels starts at 22:00 UTC the previous evening (CEST)
    assert status[0].window_start == datetime(2024, 6, 30, 22, 0, tzinfo=UTC)
    daily = pick(kpis, "uhi.daily_max", zone="centre")
    assert [k.value for k in daily] == [4.0] * 6  # max(tmax-(tmax-2), (tmax-5)-(tmax-9))


def test_lden_and_lnight() -> None:
    s = Seq()
    config = cfg(window="1h")
    day = datetime(2024, 7, 1, tzinfo=UTC)
    readings = []
    # local hours (CEST = UTC+2): day 07-19 at 60 dB, evening 19-23 at 55, night 23-07 at 50
    for hour in range(24):
        local = (7 + hour) % 24
        level = 60.0 if 7 <= local < 19 else (55.0 if 19 <= local < 23 else 50.0)
        at = day + timedelta(hours=5 + hour, minutes=30)  # 07:30 local onwards
        readings.append(s.reading("n", "noise_laeq", level, at))
    kpis = replay(readings, config).kpis
    lden = pick(kpis, "noise.lden", device_id="n")[0]
    assert lden.value == pytest.approx(
        10 * __import__("math").log10((12 * 1e6 + 4 * 10**6 + 8 * 1e6) / 24), abs=1e-6
    )
    assert pick(kpis, "noise.lnight", device_id="n")[0].value == pytest.approx(50.0)


def test_replay_is_independent_of_batching() -> None:
    s = Seq()
    readings = [
        s.reading(f"d{i % 3}", "temperature", 20.0 + i % 7, T0 + timedelta(seconds=i * 0.7),
                  gateway=f"gw{i % 2}")
        for i in range(200)
    ]  # fmt: skip
    one = replay(readings, cfg()).kpis
    run = Replay(cfg())
    for reading in readings:
        run.add([reading])
    assert run.finish().kpis == one


def test_kpi_filter_and_unknown_id() -> None:
    s = Seq()
    kpis = replay([s.reading("d", "temperature", 20.0, T0)], cfg(), only_kpi="stat.max").kpis
    assert {k.kpi_id for k in kpis} == {"stat.max"}
    with pytest.raises(ValueError, match="unknown KPI"):
        replay([], cfg(), only_kpi="nope")


# ------------------------------------------------------------------ roaming devices


def _reading(device: str, gateway: str, seq: int, value: float, at: datetime) -> Reading:
    return Reading(
        device_id=device, gateway_id=gateway, seq=seq, quantity=Quantity.TEMPERATURE,
        value=value, unit="Cel", event_time=at, ingest_time=at, zone="centre",
    )  # fmt: skip


def _two_partitions(
    config: StreamConfig, per_partition: list[list[Reading]], zones: ZoneWindows | None = None
) -> tuple[list[KpiValue], ZoneWindows]:
    """The live layout: one stage-1 engine per ``readings`` partition, one zone stage."""
    zones = zones or ZoneWindows(config, sources=len(per_partition))
    for index, readings in enumerate(per_partition):
        engine = DeviceWindows(config.window, config.grace, zones=config.device_zones)
        engine.add(readings)
        for partial in engine.close(now=T0 + timedelta(minutes=5)):
            for key, reference in routing_keys(partial, config):
                zones.add(key, partial, reference)
        horizon = engine.horizon()
        assert horizon is not None
        zones.advance(f"p{index}", horizon)
    return zones.close(), zones


def test_a_device_heard_by_two_gateways_in_one_window_counts_both() -> None:
    """LoRaWAN names the best-signal gateway per uplink, and readings are partitioned by
    gateway: one device's window can come from two stage-1 partitions. The second partial
    used to replace the first (mean 24, count 1)."""
    config = cfg(devices={"d": {"cadence": "5s", "zone": "centre"}})
    kpis, _ = _two_partitions(config, [
        [_reading("d", "gw1", 1, 20.0, T0 + timedelta(seconds=1))],
        [_reading("d", "gw2", 2, 24.0, T0 + timedelta(seconds=6))],
    ])  # fmt: skip
    first = [k for k in kpis if k.window_start == T0]
    for scope in ({"device_id": "d"}, {"device_id": None}):
        mean = pick(first, "stat.mean", **scope)[0]
        assert (mean.value, mean.sample_count, mean.completeness) == (22.0, 2, 1.0)
        assert pick(first, "stat.min", **scope)[0].value == 20.0
        assert pick(first, "stat.max", **scope)[0].value == 24.0
        assert pick(first, "stat.p95", **scope)[0].value == pytest.approx(23.8)
    completeness = pick(first, "completeness", device_id="d")[0]
    assert (completeness.value, completeness.sample_count) == (1.0, 2)


def test_a_declared_device_stays_in_its_zone_whichever_gateway_stamps_another() -> None:
    """Each gateway stamps a device it does not list with its own default zone: through
    two gateways in two zones, the device's window was split in two halves (completeness
    0.5 in each zone, two false data-completeness alerts). The stream config's zone wins."""
    config = cfg(devices={"d": {"cadence": "5s", "zone": "north"}})
    north = _reading("d", "gw1", 1, 20.0, T0 + timedelta(seconds=1))
    south = _reading("d", "gw2", 2, 24.0, T0 + timedelta(seconds=6))
    kpis, _ = _two_partitions(config, [
        [north.model_copy(update={"zone": "north"})],
        [south.model_copy(update={"zone": "south"})],
    ])  # fmt: skip
    first = [k for k in kpis if k.window_start == T0]
    assert {k.zone for k in first} == {"north"}
    completeness = pick(first, "completeness", device_id="d")[0]
    assert (completeness.value, completeness.sample_count) == (1.0, 2)


def test_a_roaming_reading_for_a_window_the_first_gateway_closed_joins_it() -> None:
    """One replay: gw1's watermark closes the device's window, then a reading of the same
    window arrives through gw2 (not late for gw2): it must join, not replace, the first."""
    s = Seq()
    run = Replay(cfg())
    run.add(
        [
            s.reading("d", "temperature", 20.0, T0 + timedelta(seconds=1), gateway="gw1"),
            s.reading("x", "temperature", 30.0, T0 + timedelta(seconds=1), gateway="gw2"),
        ]
    )
    run.add([s.reading("d", "temperature", 22.0, T0 + timedelta(seconds=12), gateway="gw1")])
    run.add([s.reading("d", "temperature", 24.0, T0 + timedelta(seconds=6), gateway="gw2")])
    result = run.finish()
    mean = pick(result.kpis, "stat.mean", device_id="d", window_start=T0)[0]
    assert (mean.value, mean.sample_count) == (22.0, 2)
    assert (len(result.late), result.duplicates) == (0, 0)


def test_the_same_reading_through_two_gateways_counts_once() -> None:
    """A failed LoRaWAN deduplication: one uplink (same seq, same event time) through two
    gateways. Whether the gateways share a partition or not, it counts once, and the
    copy is counted as a duplicate."""
    config = cfg()
    at = T0 + timedelta(seconds=3)
    one, two = _reading("d", "gw1", 7, 21.0, at), _reading("d", "gw2", 7, 21.0, at)
    other = _reading("d", "gw1", 8, 23.0, at + timedelta(seconds=1))
    kpis, zones = _two_partitions(config, [[one, other], [two]])
    count = pick(kpis, "stat.count", device_id="d", window_start=T0)[0]
    assert count.value == 2.0
    assert zones.stats.duplicates == 1
    result = replay([one, two, other], config)  # one partition: still counted once
    assert pick(result.kpis, "stat.count", device_id="d", window_start=T0)[0].value == 2.0
    assert result.duplicates == 1


def test_merged_partials_survive_a_checkpoint_and_a_stage_1_replay() -> None:
    """Stage 2 keeps a device's partials per gateway: restored from a checkpoint, it still
    merges them, and a partial sent again (stage 1 replaying after a crash) replaces its
    own copy instead of counting twice."""
    config = cfg(devices={"d": {"cadence": "5s", "zone": "centre"}})
    gw1 = [_reading("d", "gw1", 1, 20.0, T0 + timedelta(seconds=1)),
           _reading("d", "gw1", 3, 21.0, T0 + timedelta(seconds=7))]  # fmt: skip
    gw2 = [_reading("d", "gw2", 2, 24.0, T0 + timedelta(seconds=6))]
    partials = {}
    for gateway, readings in (("gw1", gw1), ("gw2", gw2)):
        engine = DeviceWindows(config.window, config.grace)
        engine.add(readings)
        partials[gateway] = orjson.loads(orjson.dumps(engine.flush()[0]))
    zones = ZoneWindows(config, sources=2)
    zones.add("centre", partials["gw1"], False)
    restored = ZoneWindows(config, sources=2)
    restored.restore(orjson.loads(orjson.dumps(zones.snapshot())))
    restored.add("centre", partials["gw2"], False)
    restored.add("centre", partials["gw1"], False)  # sent again after a stage-1 crash
    for source in ("p0", "p1"):
        restored.advance(source, to_us(T0 + timedelta(seconds=10)))
    kpis = restored.close()
    mean = pick(kpis, "stat.mean", device_id="d")[0]
    assert (mean.value, mean.sample_count) == (pytest.approx(65.0 / 3), 3)
    completeness = pick(kpis, "completeness", device_id="d")[0]
    assert (completeness.value, completeness.completeness, completeness.sample_count) == (
        1.0, 1.0, 3,
    )  # fmt: skip
    assert restored.stats.duplicates == 0


def test_a_roaming_device_is_deduplicated_per_gateway() -> None:
    """A device alternating between two gateways, its readings grouped by gateway (as an
    export, or two partitions consumed one after the other): the second gateway's readings
    are not taken for redeliveries of numbers the first one already passed."""
    # (both gateways expected, as in kpi eval: gw1 is not late for having started after gw0)
    engine = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2), gateways={"gw0", "gw1"})
    readings = [_reading("d", f"gw{seq % 2}", seq, 20.0, T0 + timedelta(seconds=seq))
                for seq in range(60)]  # fmt: skip
    engine.add([r for r in readings if r.gateway_id == "gw0"])
    engine.add([r for r in readings if r.gateway_id == "gw1"])
    assert (engine.stats.added, engine.stats.duplicates, engine.stats.late) == (60, 0, 0)


def test_a_zone_checkpoint_from_before_partials_per_gateway_is_restored() -> None:
    config = cfg()
    engine = DeviceWindows(config.window, config.grace)
    engine.add([_reading("d", "gw1", 1, 20.0, T0 + timedelta(seconds=1))])
    partial = engine.flush()[0]
    old = {"src": {}, "keys": {"centre": {
        **ZoneWindows(config, sources=1)._key_state("centre", "centre"),
        "next": None, "pending": [[partial["ws"], {"dev": {"d": partial}, "ref": {}}]],
        "known": {"d": [5_000_000, ["temperature"]]}, "eaqi": {}, "eaqi_means": {},
    }}}  # fmt: skip
    zones = ZoneWindows(config, sources=1)
    zones.restore(orjson.loads(orjson.dumps(old)))
    zones.add("centre", {**partial, "g": "gw2", "q": {"temperature": [24.0]}, "s": {}, "t": {}},
              False)  # fmt: skip
    zones.advance("replay", to_us(T0 + timedelta(seconds=10)))
    mean = pick(zones.close(), "stat.mean", device_id="d")[0]
    assert (mean.value, mean.sample_count) == (22.0, 2)


def test_a_zone_checkpoint_with_a_gateway_named_ws_is_restored() -> None:
    """ "ws" is a valid gateway id: a slot {device: {"ws": partial}} was taken for one from
    before partials per gateway ({device: partial}) and the restore failed (KeyError 'g'),
    crashing the worker. Checkpoints now say their layout; one written before that (no
    version) is told apart by what its entries hold, not by their keys."""
    config = cfg(devices={"d": {"cadence": "5s", "zone": "centre"}})
    partials = []
    for gateway, seq, value in (("ws", 1, 20.0), ("gw2", 2, 24.0)):
        engine = DeviceWindows(config.window, config.grace)
        engine.add([_reading("d", gateway, seq, value, T0 + timedelta(seconds=seq))])
        partials.append(orjson.loads(orjson.dumps(engine.flush()[0])))
    zones = ZoneWindows(config, sources=1)
    zones.add("centre", partials[0], False)
    snap = orjson.loads(orjson.dumps(zones.snapshot()))
    unversioned = {k: v for k, v in snap.items() if k != "v"}  # as written before versions
    for stored in (snap, unversioned):
        restored = ZoneWindows(config, sources=1)
        restored.restore(orjson.loads(orjson.dumps(stored)))
        restored.add("centre", partials[1], False)
        restored.advance("replay", to_us(T0 + timedelta(seconds=10)))
        mean = pick(restored.close(), "stat.mean", device_id="d")[0]
        assert (mean.value, mean.sample_count) == (22.0, 2)


# ------------------------------------------------------------------ Lden across DST


def _hourly_noise(start: datetime, end: datetime) -> list[Reading]:
    """One reading per hour (at :30) of device "n": 55 dB by day and evening; the night
    of 24-25 Oct 2026 at 40 dB, every other night at 60 dB (local clock, Brussels)."""
    s, out, at = Seq(), [], start
    while at < end:
        local = at.astimezone(ZoneInfo("Europe/Brussels"))
        night_of = (local.replace(tzinfo=None) - timedelta(hours=7)).date()
        level = 55.0 if 7 <= local.hour < 23 else (40.0 if str(night_of) == "2026-10-24" else 60.0)
        out.append(s.reading("n", "noise_laeq", level, at + timedelta(minutes=30)))
        at += timedelta(hours=1)
    return out


def _lden_run(readings: list[Reading], one_at_a_time: bool) -> list[KpiValue]:
    config = cfg(window="1h", grace="0s", kpis=["noise.lden", "noise.lnight"])
    # with the input's gateways known, zone windows close as the readings come
    run = Replay(config, clock=lambda: datetime(2026, 12, 1, tzinfo=UTC), gateways={"gw1"})
    for batch in [[r] for r in readings] if one_at_a_time else [readings]:
        run.add(batch)
    return [k for k in run.finish().kpis if k.device_id == "n"]


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["batch", "one-at-a-time"])
def test_lden_days_and_nights_follow_the_local_clock_in_autumn(one_at_a_time: bool) -> None:
    """25 Oct 2026, Brussels: 03:00 CEST becomes 02:00 CET. The night of 24-25 Oct runs
    from 23:00 CEST to 07:00 CET (9 hours), the next one 8 hours (Directive 2002/49/EC:
    periods in local time)."""
    kpis = _lden_run(
        _hourly_noise(datetime(2026, 10, 24, 5, tzinfo=UTC), datetime(2026, 10, 26, 6, tzinfo=UTC)),
        one_at_a_time,
    )
    nights = [(k.window_start, k.window_end, k.sample_count, round(k.value, 3))
              for k in pick(kpis, "noise.lnight")]  # fmt: skip
    assert nights == [
        (datetime(2026, 10, 24, 21, tzinfo=UTC), datetime(2026, 10, 25, 6, tzinfo=UTC), 9, 40.0),
        (datetime(2026, 10, 25, 22, tzinfo=UTC), datetime(2026, 10, 26, 6, tzinfo=UTC), 8, 60.0),
    ]
    lden = pick(kpis, "noise.lden")
    assert [(k.window_start, k.sample_count) for k in lden] == [
        (datetime(2026, 10, 24, 5, tzinfo=UTC), 25),
        (datetime(2026, 10, 25, 6, tzinfo=UTC), 24),
    ]
    # 25 Oct: 12 h day and 4 h evening at 55 dB, 8 h night at 60 dB
    expected = 10 * math.log10((12 * 10**5.5 + 4 * 10**6.0 + 8 * 10**7.0) / 24)
    assert lden[1].value == pytest.approx(expected, abs=1e-9)
    assert round(lden[1].value, 3) == 65.633
    assert lden[1].attributes == {"lday": "55.00", "levening": "55.00", "lnight": "60.00"}


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["batch", "one-at-a-time"])
def test_lden_days_and_nights_follow_the_local_clock_in_spring(one_at_a_time: bool) -> None:
    """29 Mar 2026, Brussels: 02:00 CET becomes 03:00 CEST. The Lden day of 28 Mar is 23
    hours long, 29 Mar 24; no hour is lost when readings come one at a time."""
    readings = _hourly_noise(
        datetime(2026, 3, 28, 6, tzinfo=UTC), datetime(2026, 3, 30, 5, tzinfo=UTC)
    )
    kpis = _lden_run(readings, one_at_a_time)
    assert [(k.window_start, k.window_end, k.sample_count) for k in pick(kpis, "noise.lden")] == [
        (datetime(2026, 3, 28, 6, tzinfo=UTC), datetime(2026, 3, 29, 5, tzinfo=UTC), 23),
        (datetime(2026, 3, 29, 5, tzinfo=UTC), datetime(2026, 3, 30, 5, tzinfo=UTC), 24),
    ]
    assert [k.sample_count for k in pick(kpis, "noise.lnight")] == [7, 8]
    assert sum(k.sample_count for k in pick(kpis, "noise.lden")) == len(readings)


# ------------------------------------------------------------------ input order, stale partials


def _two_gateways(minutes: int) -> tuple[list[Reading], list[Reading]]:
    """d1 behind gw1, d2 behind gw2, and r roaming between them, one reading a minute."""
    s = Seq()
    rows: dict[str, list[Reading]] = {"gw1": [], "gw2": []}
    for minute in range(minutes):
        at = T0 + timedelta(minutes=minute)
        rows["gw1"].append(s.reading("d1", "temperature", 20.0 + minute % 3, at, gateway="gw1"))
        rows["gw2"].append(s.reading("d2", "temperature", 30.0 + minute % 5, at, gateway="gw2"))
        roam = "gw1" if minute % 3 else "gw2"
        rows[roam].append(s.reading("r", "temperature", 25.0, at + timedelta(seconds=30),
                                    gateway=roam))  # fmt: skip
    return rows["gw1"], rows["gw2"]


def test_kpi_eval_gives_the_same_kpis_whatever_the_order_of_gateways(
    tmp_path: object, capfd: pytest.CaptureFixture[str]
) -> None:
    """An export grouped by gateway holds the same readings as one in time order, and the
    live job may see either (two partitions read one after the other). The zone stage used
    to close windows on the first gateway's watermark and drop the second's as stale, with
    no count anywhere: 498 of 600 readings vanished."""
    from pathlib import Path

    from climastream.cli import main
    from climastream.contract import encode

    gw1, gw2 = _two_gateways(120)
    by_time = sorted(gw1 + gw2, key=lambda r: r.event_time)
    config = cfg(window="1m", grace="5s", kpis=["stat.count"])
    clock = lambda: T0 + timedelta(days=1)  # noqa: E731
    expected = replay(by_time, config, clock=clock)
    assert sum(k.value for k in pick(expected.kpis, "stat.count", device_id="d2")) == 120
    assert sum(k.value for k in pick(expected.kpis, "stat.count", device_id="r")) == 120
    for order in (gw1 + gw2, gw2 + gw1):
        got = replay(order, config, clock=clock)
        assert got.kpis == expected.kpis
        assert (len(got.late), got.duplicates, got.stale_readings) == (0, 0, 0)
    # the command line, which reads the file once for its gateways
    path = Path(str(tmp_path))
    (path / "stream.yaml").write_text("window: 1m\ngrace: 5s\nkpis: [stat.count]\n")
    outputs = []
    for name, order in (("by_time", by_time), ("by_gateway", gw1 + gw2)):
        (path / f"{name}.jsonl").write_bytes(b"".join(encode(r) + b"\n" for r in order))
        args = ["kpi", "eval", "--input", str(path / f"{name}.jsonl"),
                "--config", str(path / "stream.yaml")]  # fmt: skip
        assert main(args) == 0
        out, err = capfd.readouterr()
        assert "late=0 duplicates=0 stale=0 bad_lines=0" in err
        outputs.append(sorted(out.splitlines()))
    assert outputs[0] == outputs[1]
    assert sum('"device_id":"d2"' in line for line in outputs[1]) == 120


@pytest.mark.parametrize("kind", ["fifo", "pipe"])
def test_kpi_eval_reads_an_input_that_cannot_be_rewound(
    tmp_path: object, capfd: pytest.CaptureFixture[str], kind: str
) -> None:
    """``--input <(cat r.jsonl)`` or ``--input /dev/stdin`` is a pipe: it is spooled like
    ``-`` is (its seek(0) used to raise io.UnsupportedOperation), with the same output as
    the file."""
    import contextlib
    import os
    import threading
    from pathlib import Path

    from climastream.cli import main
    from climastream.contract import encode

    gw1, gw2 = _two_gateways(30)
    data = b"".join(encode(r) + b"\n" for r in gw1 + gw2)
    path = Path(str(tmp_path))
    (path / "stream.yaml").write_text("window: 1m\ngrace: 5s\nkpis: [stat.count]\n")
    (path / "r.jsonl").write_bytes(data)
    config = ["--config", str(path / "stream.yaml")]
    assert main(["kpi", "eval", "--input", str(path / "r.jsonl"), *config]) == 0
    expected = capfd.readouterr()
    if kind == "fifo":
        source = path / "r.fifo"
        os.mkfifo(source)

        def write() -> None:  # opening blocks until the reader opens it
            with contextlib.suppress(BrokenPipeError):
                source.write_bytes(data)
    else:
        read_end, write_end = os.pipe()
        source = Path(f"/dev/fd/{read_end}")

        def write() -> None:
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        status = main(["kpi", "eval", "--input", str(source), *config])
    finally:
        if kind == "fifo" and writer.is_alive():
            os.close(os.open(source, os.O_RDONLY | os.O_NONBLOCK))  # let a blocked writer go
        writer.join()
        if kind == "pipe":
            os.close(read_end)
    assert status == 0
    out, err = capfd.readouterr()
    assert "late=0 duplicates=0 stale=0 bad_lines=0" in err
    assert out == expected.out
    assert sum('"device_id":"d2"' in line for line in out.splitlines()) == 30


def test_a_gateway_first_heard_behind_the_horizon_is_late_and_the_horizon_holds() -> None:
    """Live, one partition: a gateway whose first records come after another gateway moved
    the partition's horizon (handed to the zone stage) on. Its older readings are late
    (counted, routed), not partials the zone stage would drop; the horizon does not go
    back."""
    engine = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2))
    engine.add([_reading("a", "gw1", i, 20.0, T0 + timedelta(seconds=i)) for i in range(60)])
    engine.close()
    horizon = engine.horizon()
    assert horizon == to_us(T0 + timedelta(seconds=57))
    old = _reading("b", "gw2", 0, 20.0, T0 + timedelta(seconds=5))
    fresh = _reading("b", "gw2", 1, 20.0, T0 + timedelta(seconds=58))
    assert engine.add([old, fresh]) == [old]
    assert engine.stats.late == 1
    engine.close()
    assert engine.horizon() == horizon


def test_a_zone_first_heard_from_a_fast_partition_keeps_a_slow_ones_earlier_window() -> None:
    """A zone not declared in the config: its first partial (window 10-20 s) comes from a
    fast partition, then the slow one sends window 0-10 s (its watermark had not passed
    it). The zone's first window used to be fixed by the first partial: 0-10 s dropped."""
    config = cfg()
    fast, slow = (
        DeviceWindows(config.window, config.grace),
        DeviceWindows(config.window, config.grace),
    )
    zones = ZoneWindows(config, sources=2)
    fast.add([_reading("f", "gw1", 1, 20.0, T0 + timedelta(seconds=15)),
              _reading("f", "gw1", 2, 20.0, T0 + timedelta(seconds=25))])  # fmt: skip
    slow.add([_reading("s", "gw2", 1, 30.0, T0 + timedelta(seconds=5))])
    for source, engine in (("fast", fast), ("slow", slow)):
        for partial in engine.close():
            zones.add("centre", partial, False, source)
        horizon = engine.horizon()
        assert horizon is not None
        zones.advance(source, horizon)
    assert zones.close() == []  # the slow partition has not passed 10 s yet
    slow.add([_reading("s", "gw2", 2, 30.0, T0 + timedelta(seconds=21))])
    for partial in slow.close():
        zones.add("centre", partial, False, "slow")
    zones.advance("slow", slow.horizon() or 0)
    kpis = zones.close()
    count = pick(kpis, "stat.count", device_id="s", window_start=T0)
    assert [k.value for k in count] == [1.0]
    assert zones.stats.stale_partials == 0


def test_stale_and_replayed_partials_are_counted_apart_and_stale_ones_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = cfg()
    engine = DeviceWindows(config.window, config.grace)
    engine.add([_reading("d", "gw1", i, 20.0, T0 + timedelta(seconds=3 * i)) for i in range(9)])
    partials = engine.close()  # windows 0-10 and 10-20 s
    zones = ZoneWindows(config, sources=1)
    for partial in partials:
        zones.add("centre", partial, False, "p0")
    zones.advance("p0", engine.horizon() or 0)
    assert zones.close()
    with caplog.at_level(logging.WARNING, logger="stream.zones"):
        for partial in partials:  # sent again by a restarted stage 1: skipped, not lost
            zones.add("centre", partial, False, "p0")
        assert (zones.stats.replayed_partials, zones.stats.stale_partials) == (2, 0)
        for partial in partials:  # from nowhere the watermark covered: dropped, counted
            zones.add("centre", partial, False, "p9")
    assert (zones.stats.stale_partials, zones.stats.stale_readings) == (2, 7)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # rate-limited
    assert "key=centre device=d gateway=gw1" in warnings[0]
    restored = ZoneWindows(config, sources=1)
    restored.restore(orjson.loads(orjson.dumps(zones.snapshot())))
    assert restored.stats == zones.stats  # counters move with the partition


class _Stage2:
    """One stage-1 partition ("p0") feeding a zone stage, as the worker's send does."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.zones = ZoneWindows(config, sources=1)
        self.kpis: list[KpiValue] = []

    def send(self, engine: DeviceWindows, closed: list[dict[str, object]]) -> None:
        for partial in closed:
            for key, reference in routing_keys(partial, self.config):
                self.zones.add(key, partial, reference, "p0")
        horizon = engine.horizon()
        if horizon is not None:
            self.zones.advance("p0", horizon)
        self.kpis.extend(self.zones.close())


def test_a_crash_after_a_wall_clock_close_loses_no_reading() -> None:
    """The timer closes window [0,5) on the wall clock (4 readings); its partial and the
    watermark reach the zone stage. The worker dies before it reads reading 4 of that
    window. The new owner used to restore the checkpoint from *before* the close, put
    reading 4 into the window, close it again and send it: the zone stage skipped it as
    a replay (its first copy was merged), and reading 4 was in no KPI and not late. The
    checkpoint taken right after the wall clock moved (the worker waits for it to reach
    the changelog before sending) holds the close: reading 4 is late, as it would have
    been had the worker lived, and the window is sent again with the same 4 readings."""
    config = cfg(window="5s", grace="1s", default_cadence="1s")
    stage2 = _Stage2(config)
    readings = [_reading("d", "gw1", s, 20.0 + s, T0 + timedelta(seconds=s)) for s in range(12)]
    first = DeviceWindows(config.window, config.grace)
    late = []
    for reading in readings[:4]:  # seconds 0-3 of window [0, 5)
        late += first.add([reading])
        stage2.send(first, first.close())
    assert first.advance_wall(T0 + timedelta(seconds=6.1))  # caught up: 6.1 - 1 s grace
    durable = orjson.dumps(first.snapshot())  # in the changelog before anything is sent
    closed = first.close()
    assert [p["q"]["temperature"] for p in closed] == [[20.0, 21.0, 22.0, 23.0]]
    stage2.send(first, closed)
    assert [k.value for k in pick(stage2.kpis, "stat.count", device_id="d")] == [4.0]
    # SIGKILL; the new owner restores the durable checkpoint and replays from there
    second = DeviceWindows(config.window, config.grace)
    second.restore(orjson.loads(durable))
    stage2.send(second, second.close())  # its first tick sends [0, 5) again
    for reading in readings[4:]:
        late += second.add([reading])
        stage2.send(second, second.close())
    assert [r.seq for r in late] == [4]
    assert stage2.zones.stats.replayed_partials == 1
    counts = pick(stage2.kpis, "stat.count", device_id="d")
    assert [(k.window_start, k.value) for k in counts] == [
        (T0, 4.0),
        (T0 + timedelta(seconds=5), 5.0),  # 5-9 s; 10 and 11 s are in a window still open
    ]
    assert second.open_windows == 1


def test_the_wall_clock_moves_in_whole_windows() -> None:
    """It only decides which windows are closed, so it changes (and is checkpointed and
    waited for) once a window, not at every timer tick; it closes the same windows."""
    engine = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2))
    engine.add([_reading("d", "gw1", 0, 20.0, T0 + timedelta(seconds=1))])
    assert engine.advance_wall(T0 + timedelta(seconds=5))  # the first: windows up to 0 s
    assert not engine.advance_wall(T0 + timedelta(seconds=11.9))  # still 0 s: [0,10) open
    assert engine.close() == []
    assert engine.advance_wall(T0 + timedelta(seconds=12))
    assert not engine.advance_wall(T0 + timedelta(seconds=21.9))
    assert [p["ws"] for p in engine.close()] == [to_us(T0)]
    assert engine.horizon() == to_us(T0 + timedelta(seconds=10))


def test_a_checkpoint_between_the_wall_clock_and_the_close_keeps_the_windows() -> None:
    """A crash after the checkpoint of a wall-clock close but before its windows were
    sent: the restored state still holds them, closed, and sends them at once."""
    engine = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2))
    engine.add([_reading("d", "gw1", 0, 20.0, T0 + timedelta(seconds=1))])
    assert engine.advance_wall(T0 + timedelta(seconds=12))
    restored = DeviceWindows(timedelta(seconds=10), timedelta(seconds=2))
    restored.restore(orjson.loads(orjson.dumps(engine.snapshot())))
    assert restored.horizon() == to_us(T0 + timedelta(seconds=10))
    assert [p["q"]["temperature"] for p in restored.close()] == [[20.0]]
    late = _reading("d", "gw1", 1, 21.0, T0 + timedelta(seconds=9))
    assert restored.add([late]) == [late]


# ------------------------------------------------------------------ UHI nights and days across DST


def _hourly_heat(start: datetime, end: datetime) -> list[Reading]:
    """One reading per hour (at :30): "c" (centre) at 20 °C plus the UTC hour, so a night's
    mean says which hours it holds; the reference "ref" (park) at 10 °C."""
    s, out, at = Seq(), [], start
    while at < end:
        mid = at + timedelta(minutes=30)
        out.append(s.reading("c", "temperature", 20.0 + at.hour, mid))
        out.append(s.reading("ref", "temperature", 10.0, mid, zone="park"))
        at += timedelta(hours=1)
    return out


def _heat_run(readings: list[Reading], one_at_a_time: bool, **overrides: object) -> list[KpiValue]:
    config = cfg(window="1h", grace="0s", default_cadence="1h", reference={"device_id": "ref"},
                 zones={"centre": {}, "park": {}}, kpis=["uhi.night", "heatwave.status"],
                 **overrides)  # fmt: skip
    run = Replay(config, clock=lambda: datetime(2026, 12, 1, tzinfo=UTC))
    for batch in [[r] for r in readings] if one_at_a_time else [readings]:
        run.add(batch)
    return [k for k in run.finish().kpis if k.zone == "centre"]


def _nights(kpis: list[KpiValue]) -> list[tuple[datetime, datetime, int, float]]:
    return [(k.window_start, k.window_end, k.sample_count, round(k.value, 3))
            for k in pick(kpis, "uhi.night")]  # fmt: skip


def _utc(month: int, day: int, hour: int) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["batch", "one-at-a-time"])
def test_uhi_nights_and_local_days_across_the_autumn_dst_change(one_at_a_time: bool) -> None:
    """25 Oct 2026, Brussels: 03:00 CEST becomes 02:00 CET. The 23:00 night is one hour
    on either side; the local day of 25 Oct is 25 hours, all of them complete; a night of
    3 h from 01:00 local holds 02:00-03:00 twice (once each), 3 real hours."""
    readings = _hourly_heat(_utc(10, 23, 22), _utc(10, 26, 23))  # 24, 25, 26 Oct local
    kpis = _heat_run(readings, one_at_a_time)
    assert _nights(kpis) == [
        (_utc(10, 24, 21), _utc(10, 24, 22), 2, 31.0),  # 23:00 CEST
        (_utc(10, 25, 22), _utc(10, 25, 23), 2, 32.0),  # 23:00 CET
        (_utc(10, 26, 22), _utc(10, 26, 23), 2, 32.0),
    ]
    days = pick(kpis, "heatwave.status")
    assert [(k.window_start, k.window_end, k.sample_count, k.completeness) for k in days] == [
        (_utc(10, 23, 22), _utc(10, 24, 22), 24, 1.0),
        (_utc(10, 24, 22), _utc(10, 25, 23), 25, 1.0),
        (_utc(10, 25, 23), _utc(10, 26, 23), 24, 1.0),
    ]
    # 01:00 CEST = 23:00 UTC; 3 h: 01:00 and 02:00 CEST, 02:00 CET (c at 43, 20, 21 °C)
    across = _nights(_heat_run(readings, one_at_a_time, uhi_night_hour=1,
                               uhi_night_window="3h"))  # fmt: skip
    assert across[1] == (_utc(10, 24, 23), _utc(10, 25, 2), 6, 18.0)


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["batch", "one-at-a-time"])
def test_uhi_nights_and_local_days_across_the_spring_dst_change(one_at_a_time: bool) -> None:
    """29 Mar 2026, Brussels: 02:00 CET becomes 03:00 CEST. The local day of 29 Mar is 23
    hours, complete; a night from 01:00 local lasts its 3 real hours (to 05:00 CEST); a
    night hour the clock skips (02:00) starts when the clock resumes (03:00 CEST)."""
    readings = _hourly_heat(_utc(3, 27, 23), _utc(3, 30, 22))  # 28, 29, 30 Mar local
    kpis = _heat_run(readings, one_at_a_time)
    assert _nights(kpis) == [
        (_utc(3, 28, 22), _utc(3, 28, 23), 2, 32.0),  # 23:00 CET
        (_utc(3, 29, 21), _utc(3, 29, 22), 2, 31.0),  # 23:00 CEST
        (_utc(3, 30, 21), _utc(3, 30, 22), 2, 31.0),
    ]
    days = pick(kpis, "heatwave.status")
    assert [(k.window_start, k.window_end, k.sample_count, k.completeness) for k in days] == [
        (_utc(3, 27, 23), _utc(3, 28, 23), 24, 1.0),
        (_utc(3, 28, 23), _utc(3, 29, 22), 23, 1.0),
        (_utc(3, 29, 22), _utc(3, 30, 22), 24, 1.0),
    ]
    # 01:00 CET = 00:00 UTC; 3 h: 01:00 CET, 03:00 and 04:00 CEST (c at 20, 21, 22 °C)
    across = _nights(_heat_run(readings, one_at_a_time, uhi_night_hour=1,
                               uhi_night_window="3h"))  # fmt: skip
    assert across[1] == (_utc(3, 29, 0), _utc(3, 29, 3), 6, 11.0)
    skipped = _nights(_heat_run(readings, one_at_a_time, uhi_night_hour=2))
    assert [(start, end) for start, end, _n, _v in skipped] == [
        (_utc(3, 28, 1), _utc(3, 28, 2)),  # 02:00 CET
        (_utc(3, 29, 1), _utc(3, 29, 2)),  # 03:00 CEST: 02:00 does not exist that night
        (_utc(3, 30, 0), _utc(3, 30, 1)),  # 02:00 CEST
    ]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["kpi", "eval", "--input", "{tmp}/no-such.jsonl"],
            "kpi eval: --input {tmp}/no-such.jsonl: ",
        ),
        (["kpi", "list", "--config", "{tmp}/no-such.yaml"], "kpi list: {tmp}/no-such.yaml: "),
        (["kpi", "eval", "--input", "{tmp}"], "kpi eval: --input {tmp}: Is a directory"),
    ],
)
def test_kpi_names_a_file_it_cannot_read_without_a_traceback(
    tmp_path: object, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    from climastream.cli import main

    tmp = str(tmp_path)
    assert main([a.format(tmp=tmp) for a in argv]) == 2
    err = capsys.readouterr().err
    assert says.format(tmp=tmp) in err
    assert "Traceback" not in err


def test_kpi_eval_lets_go_of_late_readings_once_counted(
    tmp_path: object, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kpi eval`` prints only how many readings were late, but it used to keep every one
    of them until the end of the input: a device whose clock lags its gateway's others
    (all its readings late) took the process to 331 MB for 200,000 late readings, and a
    month of one such 1 Hz device to gigabytes."""
    from pathlib import Path

    from climastream.cli import main
    from climastream.contract import encode

    held: list[int] = []
    add = Replay.add

    def watched(self: Replay, readings: list[Reading]) -> None:
        add(self, readings)
        held.append(len(self.result.late))

    monkeypatch.setattr(Replay, "add", watched)
    s = Seq()
    rows = []
    for second in range(3_000):
        at = T0 + timedelta(seconds=second)
        rows.append(s.reading("a", "temperature", 21.0, at, gateway="gw1"))
        # two minutes behind its gateway: every reading lands in a closed window
        lagging = s.reading("b", "temperature", 22.0, at - timedelta(minutes=2), gateway="gw1")
        rows.append(lagging.model_copy(update={"ingest_time": at}))
    path = Path(str(tmp_path))
    (path / "stream.yaml").write_text("window: 1m\ngrace: 5s\nkpis: [stat.count]\n")
    (path / "r.jsonl").write_bytes(b"".join(encode(r) + b"\n" for r in rows))
    args = ["kpi", "eval", "--input", str(path / "r.jsonl"), "--config", str(path / "stream.yaml")]
    assert main(args) == 0
    _, err = capfd.readouterr()
    assert "late=3000 duplicates=0 stale=0 bad_lines=0" in err
    assert max(held) <= 500  # at most one batch's worth at a time
