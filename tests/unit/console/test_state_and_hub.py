"""LiveState stays bounded and computes what the tiles show; the hub coalesces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from climastream.contract import (
    Alert,
    AlertSeverity,
    AlertState,
    GatewayStatus,
    KpiValue,
    Quantity,
    encode,
)
from console.hub import Hub
from console.state import (
    DeviceInfo,
    LiveState,
    Sparkline,
    StateLimits,
    StreamsView,
    eaqi_band_index,
)
from tests.unit.console.builders import T0, reading


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_eaqi_bands_follow_the_eea_2024_breakpoints() -> None:
    # EEA 2024 table, PM2.5: 0-5 good, 6-15 fair, 16-50 moderate, 51-90 poor, ...
    assert eaqi_band_index(Quantity.PM2_5, 5) == 1
    assert eaqi_band_index(Quantity.PM2_5, 5.1) == 2
    assert eaqi_band_index(Quantity.PM2_5, 30) == 3
    assert eaqi_band_index(Quantity.PM2_5, 60) == 4
    assert eaqi_band_index(Quantity.NO2, 151) == 6  # NO2 above 150: extremely poor
    assert eaqi_band_index(Quantity.TEMPERATURE, 30) is None


def test_sparkline_buckets_means_and_stays_bounded() -> None:
    line = Sparkline(bucket_s=5, points=4)
    for second in range(100):
        line.add(1_000_000 + second, float(second))
    points = line.points()
    assert len(points) == 4
    # last bucket holds seconds 95..99: mean 97
    assert points[-1] == [1_000_095.0, 97.0]
    assert line.latest == 99.0


def test_state_is_bounded_however_much_arrives() -> None:
    clock = Clock()
    state = LiveState(
        limits=StateLimits(max_devices=50, max_series=80, spark_points=10), clock=clock
    )
    for i in range(5000):
        at = T0 + timedelta(seconds=i)
        clock.now = at
        state.add_readings([reading(f"d{i % 500}", f"z{i % 7}", i, Quantity.TEMPERATURE, 20.0, at)])
    assert len(state.devices) == 50
    assert len(state.device_series) <= 80
    assert all(len(s) <= 10 for _k, s in state.device_series.items())
    assert state.counts["readings"] == 5000
    assert len(state.snapshot("streams")["rows"]) <= state.limits.max_stream_rows


def test_provisional_eaqi_and_uhi_from_readings() -> None:
    clock = Clock()
    state = LiveState([DeviceInfo("pm-a", zone="a", lat=50.8, lon=4.3)], clock=clock)
    state.add_readings(
        [
            reading("pm-a", "a", 1, Quantity.PM2_5, 60.0, T0),  # 50-90: band 4 poor
            reading("no2-a", "a", 1, Quantity.NO2, 50.0, T0),  # 25-60: band 3 moderate
            reading("t-a", "a", 1, Quantity.TEMPERATURE, 25.0, T0),
            reading("t-b", "b", 1, Quantity.TEMPERATURE, 21.5, T0),
        ]
    )
    eaqi = state.zone_eaqi("a")
    assert eaqi == {"value": 4, "band": "poor", "dominant": "pm2_5", "source": "readings"}
    uhi = state.zone_uhi("a")
    assert uhi is not None
    assert uhi["value"] == 3.5
    assert uhi["reference"] == "b"
    # a KPI from the stream replaces the provisional value
    state.add_kpi(
        KpiValue(
            kpi_id="eaqi",
            kpi_version="1",
            zone="a",
            window_start=T0,
            window_end=T0 + timedelta(hours=1),
            value=3.0,
            unit="1",
            sample_count=60,
            completeness=0.9,
            band="moderate",
            attributes={"dominant_pollutant": "no2"},
        )
    )
    eaqi = state.zone_eaqi("a")
    assert eaqi is not None
    assert (eaqi["band"], eaqi["dominant"], eaqi["source"]) == ("moderate", "no2", "kpi")


def test_tiles_take_the_zone_kpis_the_stream_publishes_with_a_quantity() -> None:
    """The stream publishes uhi.intensity "of temperature", noise.laeq "of noise_laeq" and
    traffic.vehicles "of vehicle_count" per zone; the tiles must find them (an audit saw
    Noise and Traffic stay empty and UHI stay provisional)."""
    state = LiveState(clock=Clock())

    def zone_kpi(kpi_id: str, quantity: Quantity, value: float, unit: str) -> KpiValue:
        return KpiValue(
            kpi_id=kpi_id, kpi_version="1", zone="a", quantity=quantity,
            window_start=T0, window_end=T0 + timedelta(minutes=1), value=value, unit=unit,
            sample_count=10, completeness=1.0,
        )  # fmt: skip

    state.add_kpi(zone_kpi("uhi.intensity", Quantity.TEMPERATURE, -0.6, "Cel"))
    state.add_kpi(zone_kpi("noise.laeq", Quantity.NOISE_LAEQ, 62.5, "dB(A)"))
    state.add_kpi(zone_kpi("traffic.vehicles", Quantity.VEHICLE_COUNT, 120.0, "count"))
    uhi = state.zone_uhi("a")
    assert uhi is not None
    assert (uhi["value"], uhi["source"]) == (-0.6, "kpi")
    tiles = state._kpi_panel()["zones"]["a"]
    assert tiles["noise"]["value"] == 62.5
    assert tiles["traffic"]["value"] == 120.0


async def test_hub_renders_each_dirty_panel_once_per_tick() -> None:
    clock = Clock()
    state = LiveState(clock=clock)
    hub = Hub(state, interval=0.5)
    subscription = hub.subscribe()
    hub.tick()
    for i in range(1000):
        state.add_readings([reading("d", "z", i, Quantity.NO2, 10.0, T0)])
    hub.tick()
    # one frame per panel per tick, however many readings arrived in between; an unread
    # subscription keeps only the latest frame per panel
    assert subscription.replaced >= 4
    pending = await subscription.next(0)
    assert set(pending) == {"map", "streams", "kpi", "stats", "alerts", "gateways"}
    assert await subscription.next(0.01) == {}
    assert hub.tick() == set()


def test_site_comes_from_every_source_kind_of_the_demo_gateway() -> None:
    from pathlib import Path

    from console.feed import load_site

    root = Path(__file__).resolve().parents[3]
    site = {d.device_id: d for d in load_site([root / "deploy/local/demo-gateway.yaml"])}
    assert site["th-centre-1"].zone == "centre"  # simulated source
    assert site["sds-centre-1"].zone == "centre"  # serial sensor with a fixed id
    assert (site["sds-centre-1"].lat, site["sds-centre-1"].lon) == (50.8452, 4.3535)
    assert site["70b3d57ed0000002"].zone == "park"  # LoRaWAN device via TTS
    assert site["station-north-1"].zone == "north"  # MQTT JSON station
    assert all(d.gateway_id == "gw-demo-1" for d in site.values())


def test_site_is_read_without_the_gateways_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped Pi config takes its Kafka password from ${KAFKA_PASSWORD}; the console
    host has neither that variable nor the gateway's secret files, and needs neither."""
    from console.feed import load_site
    from edge.config import ConfigError, load_config

    example = Path(__file__).resolve().parents[3] / "deploy/pi/gateway.example.yaml"
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)
    with_file = tmp_path / "gateway.yaml"
    with_file.write_text(
        example.read_text().replace(
            "sasl_password: ${KAFKA_PASSWORD}", "sasl_password_file: /no/such/file"
        )
    )
    for path, problem in ((example, "KAFKA_PASSWORD is not set"), (with_file, "cannot read")):
        with pytest.raises(ConfigError, match=problem):
            load_config(path)  # the agent itself still needs its secret
        site = load_site([path])
        assert site, path
        assert {d.gateway_id for d in site} == {"gw-brussels-centre-01"}


def test_gateway_panel_shows_decode_errors_by_reason() -> None:
    """An operator sees *why* a gateway's frames fail (a bad cable gives crc errors, a
    new device an unknown id), not only that drops happened."""
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    state = LiveState(clock=lambda: now)
    state.add_gateway_status(
        GatewayStatus(
            gateway_id="gw-1",
            time=now,
            software_version="1",
            uptime_s=1.0,
            buffer_depth=0,
            buffer_bytes=0,
            buffer_capacity_bytes=1024,
            decode_errors={"bad_crc": 3, "unknown_device": 1},
        )
    )
    (row,) = state.snapshot("gateways")["gateways"]
    assert row["decode_errors"] == {"bad_crc": 3, "unknown_device": 1}
    assert row["decode_errors_total"] == 4


def test_a_late_older_record_of_a_resolved_alert_does_not_bring_it_back() -> None:
    state = LiveState(clock=lambda: T0)

    def alert(status: AlertState, minutes: int) -> Alert:
        return Alert(
            fingerprint="0123456789abcdef",
            rule_id="pm25-high",
            state=status,
            severity=AlertSeverity.WARNING,
            summary="PM2.5 high in centre",
            started_at=T0,
            updated_at=T0 + timedelta(minutes=minutes),
        )

    state.add_alert(alert(AlertState.FIRING, 1))
    state.add_alert(alert(AlertState.RESOLVED, 5))
    state.add_alert(alert(AlertState.FIRING, 2))  # replayed after an engine restart
    assert list(state.alerts.values()) == []
    # the next incident of the same alert is newer than the resolution: it shows
    state.add_alert(alert(AlertState.FIRING, 9))
    assert [a.state for a in state.alerts.values()] == [AlertState.FIRING]


def _batch_with_one_reading_ahead() -> bytes:
    """Two good readings of gateway gw and one 2 h ahead of the host clock."""
    import orjson

    now = datetime.now(UTC)
    good = [reading(f"th-{i}", "centre", i, Quantity.TEMPERATURE, 20.0 + i, now) for i in (1, 2)]
    items = [orjson.loads(encode(r)) for r in good]
    ahead = {
        **items[0],
        "device_id": "fast-clock",
        "event_time": (now + timedelta(hours=2)).isoformat(),
    }
    return orjson.dumps({"gateway_id": "gw", "readings": [items[0], ahead, items[1]]})


def test_the_feed_shows_the_readings_the_stream_keeps_of_a_partial_batch() -> None:
    """One reading from a device clock 2 h ahead used to hide its whole batch from the
    console's live map (the record was counted as rejected, the devices never appeared)."""
    from console.feed import apply_record

    state = LiveState()
    apply_record(state, "readings", _batch_with_one_reading_ahead())
    assert {"th-1", "th-2"} <= {d.device_id for d in state.devices.values()}
    assert "fast-clock" not in {d.device_id for d in state.devices.values()}
    assert state.rejected == {"readings": 1}


def test_tail_prints_the_kept_readings_and_names_the_skipped_one() -> None:
    from console.tail import TailFilter, render

    lines, skipped = render("readings", _batch_with_one_reading_ahead(), TailFilter())
    assert [str(line).split()[3] for line in lines] == ["th-1", "th-2"]
    assert "readings.1 (device fast-clock): " in skipped


def _city(state: LiveState, zones: int, per_zone: int) -> None:
    """``zones`` zones of ``per_zone`` temperature sensors each: more series than the panel's
    row limit. Device ids sort zone by zone (``a-000`` ... ``d-099``)."""
    for z in range(zones):
        zone = f"zone-{'abcdefgh'[z]}"
        state.add_readings(
            reading(f"{'abcdefgh'[z]}-{i:03d}", zone, 1, Quantity.TEMPERATURE, 20.0)
            for i in range(per_zone)
        )


def test_a_zone_or_device_filter_reaches_the_series_beyond_the_row_limit() -> None:
    state = LiveState()
    _city(state, zones=4, per_zone=100)  # 404 rows in all: 4 zone means, 400 devices
    everything = state.snapshot("streams")
    assert len(everything["rows"]) == state.limits.max_stream_rows == 300
    assert everything["omitted"] == 104
    # without a filter, zone-d's sensors sort last and never show: the zone list has it
    assert not any(r["zone"] == "zone-d" and r["scope"] == "device" for r in everything["rows"])
    assert everything["zones"] == ["zone-a", "zone-b", "zone-c", "zone-d"]

    d = state.snapshot("streams", StreamsView(zone="zone-d"))
    assert (len(d["rows"]), d["omitted"]) == (101, 0)
    assert d["rows"][0] == {**d["rows"][0], "scope": "zone", "id": "zone-d"}
    assert {r["zone"] for r in d["rows"]} == {"zone-d"}
    assert d["zones"] == everything["zones"]  # the choice stays open
    assert d["view"] == {"zone": "zone-d", "device": None}

    # a device search matches part of the id, in any case, and shows no zone means
    found = state.snapshot("streams", StreamsView(device="D-09"))
    assert [r["id"] for r in found["rows"]] == [f"d-{i:03d}" for i in range(90, 100)]
    both = state.snapshot("streams", StreamsView(zone="zone-c", device="-05"))
    assert [r["id"] for r in both["rows"]] == [f"c-{i:03d}" for i in range(50, 60)]
    assert state.snapshot("streams", StreamsView(zone="nowhere"))["rows"] == []

    with pytest.raises(ValueError, match="at most 100"):
        StreamsView(device="x" * 101)


async def test_hub_renders_the_streams_panel_once_per_view_and_the_rest_once() -> None:
    state = LiveState()
    _city(state, zones=4, per_zone=100)
    hub = Hub(state, interval=0.5)
    everyone = hub.subscribe()
    zone_d = hub.subscribe(StreamsView(zone="zone-d"))
    also_d = hub.subscribe(StreamsView(zone="zone-d"))
    primed = [await s.next(0) for s in (everyone, zone_d, also_d)]
    assert primed[1]["streams"] == primed[2]["streams"] != primed[0]["streams"]
    assert primed[0]["map"] == primed[1]["map"]

    hub.tick()  # what the city's readings made dirty
    for subscription in (everyone, zone_d, also_d):
        await subscription.next(0)
    frames = hub.frames
    state.add_readings([reading("d-000", "zone-d", 2, Quantity.TEMPERATURE, 30.0, T0)])
    hub.tick()
    got = [await s.next(0) for s in (everyone, zone_d, also_d)]
    # streams twice (everyone's, zone-d's), map, kpi and stats once each
    assert hub.frames - frames == 5
    assert got[1]["streams"] is got[2]["streams"]
    assert got[1]["map"] is got[0]["map"]
    rows = orjson.loads(got[1]["streams"])["rows"]
    assert {r["zone"] for r in rows} == {"zone-d"}
    assert next(r for r in rows if r["id"] == "d-000")["latest"] == 30.0
