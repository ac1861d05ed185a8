"""The pure alert engine: lifecycle, hysteresis, pending, renotify, inhibition, actions.

Every expectation is derived by hand from the rule definitions, with a fake clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from climastream.contract import (
    AlertAction,
    AlertActionKind,
    AlertSeverity,
    AlertState,
    GatewayStatus,
    KpiValue,
    QualityFlag,
    Quantity,
    Reading,
    ReadingBatch,
    SourceState,
)
from sinks.lineprotocol import alert_line
from stream.alerts.engine import AlertEngine, fingerprint
from stream.alerts.rules import load_rules, rules_from_mapping

T0 = datetime(2025, 7, 1, 21, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def engine(rules: list[dict[str, Any]], **defaults: Any) -> tuple[AlertEngine, Clock]:
    clock = Clock()
    ruleset = rules_from_mapping({"defaults": defaults, "rules": rules})
    return AlertEngine(ruleset, {}, {}, clock=clock), clock


UHI = {
    "id": "uhi",
    "kind": "threshold",
    "kpi_id": "uhi.night",
    "scope": "zone",
    "set": 3.0,
    "clear": 2.0,
    "for": "10m",
    "renotify": "1h",
    "team": "climate-unit",
    "summary": "Night-time heat island in {zone}: {value}{unit}",
}


def uhi(clock: Clock, zone: str, value: float, completeness: float = 0.9) -> KpiValue:
    return KpiValue(
        kpi_id="uhi.night",
        kpi_version="1",
        zone=zone,
        window_start=clock.now - timedelta(minutes=5),
        window_end=clock.now,
        value=value,
        unit="Cel",
        sample_count=5,
        completeness=completeness,
    )


def reading(
    clock: Clock,
    device: str,
    value: float,
    *,
    gateway: str = "gw1",
    seq: int = 0,
    quantity: Quantity = Quantity.TEMPERATURE,
    score: float | None = None,
    quality: tuple[QualityFlag, ...] = (),
) -> Reading:
    return Reading(
        device_id=device,
        gateway_id=gateway,
        seq=seq,
        quantity=quantity,
        value=value,
        unit="Cel" if quantity is Quantity.TEMPERATURE else "ug/m3",
        event_time=clock.now,
        ingest_time=clock.now,
        zone="centre",
        score=score,
        model_id="iforest" if score is not None else None,
        quality=quality,
    )


def batch(*readings: Reading) -> ReadingBatch:
    return ReadingBatch(gateway_id=readings[0].gateway_id, readings=readings)


def status(
    clock: Clock,
    gateway: str,
    sources: dict[str, SourceState] | None = None,
    *,
    backlog_s: float | None = None,
) -> GatewayStatus:
    return GatewayStatus(
        gateway_id=gateway,
        time=clock.now,
        software_version="1",
        uptime_s=1.0,
        buffer_depth=0 if backlog_s is None else 100,
        buffer_bytes=0 if backlog_s is None else 10_000,
        buffer_capacity_bytes=100_000,
        buffer_oldest_age_s=backlog_s,
        sources=sources or {},
    )


def test_pending_then_firing_after_for_then_resolved_below_clear_level() -> None:
    eng, clock = engine([UHI])
    out = eng.on_kpi(uhi(clock, "centre", 3.4))
    assert [a.state for a in out] == [AlertState.PENDING]
    assert out[0].summary == "Night-time heat island in centre: 3.4°C"
    clock.advance(9 * 60)
    assert eng.tick() == []
    clock.advance(60)
    fired = eng.tick()
    assert [a.state for a in fired] == [AlertState.FIRING]
    assert fired[0].started_at == T0  # the incident began when the condition did
    assert fired[0].fingerprint == fingerprint("uhi", [("zone", "centre")])
    clock.advance(60)
    resolved = eng.on_kpi(uhi(clock, "centre", 1.9))
    assert [a.state for a in resolved] == [AlertState.RESOLVED]
    assert resolved[0].started_at == T0
    assert resolved[0].fingerprint == fired[0].fingerprint


def test_values_oscillating_between_levels_give_one_incident() -> None:
    eng, clock = engine([UHI])
    states = []
    for value in [3.2, 2.8, 3.5, 2.1, 3.1, 2.9, 3.3, 2.05, 3.4, 2.5, 3.0, 2.2]:
        states += [a.state for a in eng.on_kpi(uhi(clock, "centre", value))]
        clock.advance(120)
        states += [a.state for a in eng.tick()]
    assert states == [AlertState.PENDING, AlertState.FIRING]
    assert [a.state for a in eng.on_kpi(uhi(clock, "centre", 2.0))] == [AlertState.RESOLVED]


def test_a_dip_below_clear_during_pending_cancels_without_firing() -> None:
    eng, clock = engine([UHI])
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 3.5))] == [AlertState.PENDING]
    clock.advance(300)
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 1.0))] == [AlertState.RESOLVED]
    clock.advance(600)
    assert eng.tick() == []


def test_refiring_within_renotify_waits_until_the_interval_has_passed() -> None:
    rule = {**UHI, "for": "0s", "renotify": "30m"}
    eng, clock = engine([rule])
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 4))] == [AlertState.FIRING]
    clock.advance(60)
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 1))] == [AlertState.RESOLVED]
    clock.advance(60)  # flaps back 1 min after the resolution
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 4))] == [AlertState.PENDING]
    clock.advance(28 * 60)  # 29 min after the resolution
    assert eng.tick() == []
    clock.advance(60)  # 30 min after the resolution
    assert [a.state for a in eng.tick()] == [AlertState.FIRING]


def test_keep_firing_for_needs_the_clear_condition_to_hold() -> None:
    rule = {**UHI, "for": "0s", "keep_firing_for": "5m"}
    eng, clock = engine([rule])
    eng.on_kpi(uhi(clock, "c", 4))
    clock.advance(60)
    assert eng.on_kpi(uhi(clock, "c", 1.5)) == []
    clock.advance(120)
    assert eng.on_kpi(uhi(clock, "c", 2.5)) == []  # back in the band: the clear timer resets
    clock.advance(60)
    assert eng.on_kpi(uhi(clock, "c", 1.5)) == []
    clock.advance(299)
    assert eng.tick() == []
    clock.advance(1)
    assert [a.state for a in eng.tick()] == [AlertState.RESOLVED]


def test_state_survives_a_new_engine_on_the_same_mappings() -> None:
    clock = Clock()
    ruleset = rules_from_mapping({"rules": [{**UHI, "for": "0s"}]})
    alerts: dict[str, Any] = {}
    signals: dict[str, Any] = {}
    first = AlertEngine(ruleset, alerts, signals, clock=clock)
    assert [a.state for a in first.on_kpi(uhi(clock, "c", 4))] == [AlertState.FIRING]
    second = AlertEngine(ruleset, alerts, signals, clock=clock)  # the restarted worker
    clock.advance(10)
    assert second.on_kpi(uhi(clock, "c", 4.2)) == []  # no duplicate firing
    out = second.on_kpi(uhi(clock, "c", 1))
    assert [a.state for a in out] == [AlertState.RESOLVED]
    assert out[0].started_at == T0
    assert [p.value for p in out[0].evidence] == [4, 4.2, 1]


def test_kpi_rules_match_id_scope_and_zones() -> None:
    rule = {**UHI, "for": "0s", "zones": ["centre"]}
    eng, clock = engine([rule])
    assert eng.on_kpi(uhi(clock, "park", 9)) == []
    device_kpi = uhi(clock, "centre", 9).model_copy(update={"device_id": "th-1"})
    assert eng.on_kpi(device_kpi) == []  # scope: zone
    assert len(eng.on_kpi(uhi(clock, "centre", 9))) == 1


def test_eaqi_band_rule_from_the_shipped_defaults_fires_on_poor() -> None:
    clock = Clock()
    eng = AlertEngine(load_rules(), {}, {}, clock=clock)

    def eaqi(band_index: int, band: str) -> KpiValue:
        return KpiValue(
            kpi_id="eaqi",
            kpi_version="1",
            zone="centre",
            window_start=clock.now - timedelta(hours=1),
            window_end=clock.now,
            value=band_index,
            unit="1",
            sample_count=60,
            completeness=1.0,
            band=band,
        )

    assert eng.on_kpi(eaqi(3, "moderate")) == []
    out = eng.on_kpi(eaqi(4, "poor"))
    assert [(a.rule_id, a.state) for a in out] == [("eaqi-poor", AlertState.PENDING)]
    clock.advance(3600)
    fired = eng.on_kpi(eaqi(4, "poor"))
    assert [(a.rule_id, a.state) for a in fired] == [("eaqi-poor", AlertState.FIRING)]
    assert fired[0].summary == "Air quality is poor in centre"


def test_reading_threshold_carries_evidence_and_location() -> None:
    rule = {
        "id": "hot",
        "kind": "threshold",
        "source": "reading",
        "quantity": "temperature",
        "set": 40,
        "clear": 35,
        "severity": "critical",
    }
    eng, clock = engine([rule])
    readings = []
    for i, value in enumerate([30, 33, 38, 41]):
        readings.append(reading(clock, "th-1", value, seq=i))
        clock.advance(1)
    out = eng.on_batch(batch(*readings))
    assert [a.state for a in out] == [AlertState.FIRING]
    alert = out[0]
    assert alert.severity is AlertSeverity.CRITICAL
    assert (alert.device_id, alert.gateway_id, alert.zone) == ("th-1", "gw1", "centre")
    assert (alert.value, alert.threshold) == (41, 40)
    assert [p.value for p in alert.evidence] == [30, 33, 38, 41]


def test_rate_of_change_over_the_window() -> None:
    rule = {
        "id": "jump",
        "kind": "rate_of_change",
        "quantity": "temperature",
        "window": "4m",
        "limit": 1.0,
        "clear": 0.3,
    }
    eng, clock = engine([rule])
    states = []
    # 20 °C steady for 2 min, then +3 °C in one minute: (23 - 20) / 2 min = 1.5 °C/min
    for i, value in enumerate([20, 20, 20, 23]):
        states += [a.state for a in eng.on_batch(batch(reading(clock, "th", value, seq=i)))]
        clock.advance(60)
    assert states == [AlertState.FIRING]
    for i, value in enumerate([23, 23, 23, 23, 23], start=4):
        states += [a.state for a in eng.on_batch(batch(reading(clock, "th", value, seq=i)))]
        clock.advance(60)
    assert states == [AlertState.FIRING, AlertState.RESOLVED]


def test_anomaly_score_and_flag() -> None:
    rule = {"id": "odd", "kind": "anomaly", "level": 0.9, "clear": 0.5}
    eng, clock = engine([rule])
    assert eng.on_batch(batch(reading(clock, "pm", 10, score=0.7))) == []
    out = eng.on_batch(batch(reading(clock, "pm", 10, score=0.95, seq=1)))
    assert [a.state for a in out] == [AlertState.FIRING]
    assert out[0].score == 0.95
    assert eng.on_batch(batch(reading(clock, "pm", 10, score=0.6, seq=2))) == []
    resolved = eng.on_batch(batch(reading(clock, "pm", 10, score=0.2, seq=3)))
    assert [a.state for a in resolved] == [AlertState.RESOLVED]
    flagged = eng.on_batch(batch(reading(clock, "pm2", 10, quality=(QualityFlag.ANOMALY,))))
    assert [a.state for a in flagged] == [AlertState.FIRING]


STALE = {"id": "stale", "kind": "stale", "cadence": "10s", "missed": 3}
GATEWAY = {"id": "gw-off", "kind": "gateway_offline", "status_interval": "30s", "missed": 2}


def test_stale_sensor_fires_when_its_gateway_is_alive() -> None:
    eng, clock = engine([STALE, GATEWAY])
    eng.on_gateway_status(status(clock, "gw1"))
    eng.on_batch(batch(reading(clock, "a", 20), reading(clock, "b", 20)))
    for second in range(1, 41):
        clock.advance(1)
        if second % 10 == 0:  # only "a" keeps reporting, through the same gateway
            eng.on_batch(batch(reading(clock, "a", 20, seq=second)))
            if second % 20 == 0:
                eng.on_gateway_status(status(clock, "gw1"))
        out = eng.tick()
        if out:
            assert [(a.rule_id, a.device_id, a.state) for a in out] == [
                ("stale", "b", AlertState.FIRING)
            ]
            assert second == 30  # 3 x 10 s cadence
            break
    else:
        pytest.fail("the stale alert never fired")
    clock.advance(1)
    resolved = eng.on_batch(batch(reading(clock, "b", 20, seq=99)))
    assert [(a.device_id, a.state) for a in resolved] == [("b", AlertState.RESOLVED)]


def test_gateway_outage_is_one_alert_and_inhibits_its_sensors() -> None:
    eng, clock = engine([STALE, GATEWAY])
    devices = [f"d{i}" for i in range(20)]
    eng.on_gateway_status(status(clock, "gw1"))
    eng.on_batch(batch(*(reading(clock, d, 20) for d in devices)))
    published = []
    for _ in range(600):  # 10 minutes of silence
        clock.advance(1)
        published += eng.tick()
    firing = [a for a in published if a.state is AlertState.FIRING]
    assert [(a.rule_id, a.gateway_id) for a in firing] == [("gw-off", "gw1")]
    assert firing[0].summary.startswith("Gateway gw1 out of contact")
    # the gateway is back: its alert resolves; the held sensor alerts end without firing
    back = eng.on_gateway_status(status(clock, "gw1"))
    assert [(a.rule_id, a.state) for a in back] == [("gw-off", AlertState.RESOLVED)]
    out = eng.on_batch(batch(*(reading(clock, d, 20, seq=1) for d in devices)))
    assert {(a.rule_id, a.state) for a in out} <= {("stale", AlertState.RESOLVED)}
    stale_states = {a.state for a in published + out if a.rule_id == "stale"}
    assert AlertState.FIRING not in stale_states
    assert eng.counters.inhibited > 0


def _fleet_through_a_broker_outage(
    outage_s: int, dead_after: int | None = None, held_up: bool = False
) -> list[tuple[int, str, str, AlertState]]:
    """Two gateways (a status every 30 s, a reading every 10 s) through an outage of the
    engine's own input from second 100 on: the broker paused, a network partition. Nothing
    reaches the engine meanwhile and its consumer gets no fetch response (``input_as_of``
    stays put); the gateways are fine and resend what they buffered once it resumes, 3 s
    later. ``dead_after``: gw2 really dies at that second. ``held_up``: the engine does not
    tick through the outage either (its tick waits to publish). Returns (second, rule,
    who, state) of every published change."""
    eng, clock = engine([STALE, GATEWAY])
    published: list[tuple[int, str, str, AlertState]] = []
    fetched = clock.now
    resumed_at = 100 + outage_s
    for second in range(0, resumed_at + 300):
        out: list[Any] = []
        stalled = 100 <= second < resumed_at
        if not stalled:
            fetched = clock.now
        # what the gateways sent reaches the engine unless its input is stalled (and what
        # they buffered meanwhile a few seconds after it resumes)
        if not stalled and not resumed_at <= second < resumed_at + 3:
            for gw in ("gw1", "gw2"):
                if gw == "gw2" and dead_after is not None and second >= dead_after:
                    continue
                if second % 30 == 0 or second == resumed_at + 3:
                    out += eng.on_gateway_status(status(clock, gw))
                if second % 10 == 0 or second == resumed_at + 3:
                    out += eng.on_batch(batch(reading(clock, f"{gw}-a", 20, gateway=gw)))
        if not (held_up and stalled):
            out += eng.tick(input_as_of=fetched)
        published += [(second, a.rule_id, a.gateway_id or a.device_id, a.state) for a in out]
        clock.advance(1)
    return published


@pytest.mark.parametrize("outage_s", [20, 70, 600])
def test_an_outage_of_the_engine_s_own_input_pages_no_one(outage_s: int) -> None:
    """A broker outage on the cloud side looks like every gateway going silent at once on
    the engine's clock: it used to page every gateway offline (and hold every sensor
    stale) within a gateway timeout. The engine knows its own input stalled."""
    assert _fleet_through_a_broker_outage(outage_s) == []


@pytest.mark.parametrize("outage_s", [20, 70, 600])
def test_an_outage_through_which_the_engine_s_tick_was_held_up_pages_no_one(
    outage_s: int,
) -> None:
    """The engine's tick waits to publish while the broker is away, so it never saw its
    input stalled: its first tick after the broker's return saw the input current and
    judged every gateway silent since its last status before the outage (their buffered
    statuses still on their way), paging them offline. A tick held up counts as a
    resume."""
    assert _fleet_through_a_broker_outage(outage_s, held_up=True) == []


def test_ticks_as_far_apart_as_configured_are_not_held_up() -> None:
    clock = Clock()
    ruleset = rules_from_mapping({"rules": [GATEWAY]})
    eng = AlertEngine(ruleset, {}, {}, clock=clock, tick_interval=timedelta(seconds=30))
    assert eng.tick(input_as_of=clock.now) == []
    eng.on_gateway_status(status(clock, "gw1"))
    clock.advance(30)
    assert eng.tick(input_as_of=clock.now) == []
    clock.advance(30)  # silent for its 2 x 30 s timeout: it fires, no resume on the way
    assert [a.state for a in eng.tick(input_as_of=clock.now)] == [AlertState.FIRING]


def test_a_gateway_dead_through_an_input_outage_alerts_one_timeout_after_it_resumes() -> None:
    published = _fleet_through_a_broker_outage(600, dead_after=80)
    # last status at 60 s; the input stalled at 100 s (before its 2 x 30 s timeout had
    # passed), resumed at 700 s: gw2 alerts one timeout after that
    assert [(s, r, who, st) for s, r, who, st in published if st is AlertState.FIRING] == [
        (760, "gw-off", "gw2", AlertState.FIRING)
    ]


def test_with_its_input_live_a_silent_gateway_alerts_after_its_timeout() -> None:
    eng, clock = engine([GATEWAY])
    assert eng.tick(input_as_of=clock.now) == []
    eng.on_gateway_status(status(clock, "gw1"))
    for _ in range(59):  # a tick a second, as configured
        clock.advance(1)
        assert eng.tick(input_as_of=clock.now) == []
    clock.advance(1)
    assert [a.state for a in eng.tick(input_as_of=clock.now)] == [AlertState.FIRING]


def test_reconnect_status_before_the_buffered_readings_pages_nobody() -> None:
    """Back from an outage, a gateway's status can arrive before the readings it buffered:
    its sensors get one gateway timeout (and its backlog) to catch up; a sensor that stays
    silent after that still fires, and the gateway's resolution keeps the outage length."""
    eng, clock = engine([STALE, GATEWAY])
    eng.on_gateway_status(status(clock, "gw1"))
    eng.on_batch(batch(reading(clock, "a", 20), reading(clock, "b", 20)))
    published = []
    for _ in range(600):
        clock.advance(1)
        published += eng.tick()
    back = eng.on_gateway_status(status(clock, "gw1"))  # no backlog reported
    assert [(a.rule_id, a.state) for a in back] == [("gw-off", AlertState.RESOLVED)]
    assert back[0].summary == "Gateway gw1 out of contact: no status for 600 s"
    for _ in range(5):  # readings still on their way
        clock.advance(1)
        published += eng.tick()
    published += eng.on_batch(batch(reading(clock, "a", 20, seq=1)))  # "b" never comes back
    for second in range(1, 121):  # gateway and "a" report as usual
        clock.advance(1)
        if second % 10 == 0:
            published += eng.on_batch(batch(reading(clock, "a", 20, seq=1 + second)))
        if second % 20 == 0:
            published += eng.on_gateway_status(status(clock, "gw1"))
        published += eng.tick()
    stale = [(a.device_id, a.state) for a in published if a.rule_id == "stale"]
    assert ("a", AlertState.FIRING) not in stale
    assert stale[-1] == ("b", AlertState.FIRING)


def test_a_reported_backlog_holds_stale_alerts_until_it_drains() -> None:
    eng, clock = engine([STALE, GATEWAY])
    eng.on_gateway_status(status(clock, "gw1"))
    eng.on_batch(batch(reading(clock, "a", 20)))
    for second in range(1, 121):  # the gateway is alive but 2 min behind on readings
        clock.advance(1)
        if second % 20 == 0:
            eng.on_gateway_status(status(clock, "gw1", backlog_s=second + 5))
        assert [a for a in eng.tick() if a.state is AlertState.FIRING] == []
    eng.on_gateway_status(status(clock, "gw1"))  # drained, and still nothing from "a"
    clock.advance(1)
    assert [(a.device_id, a.state) for a in eng.tick()] == [("a", AlertState.FIRING)]


def test_gateway_status_with_every_source_down_fires_at_once() -> None:
    eng, clock = engine([GATEWAY])
    down = {"serial": SourceState.DOWN, "lora": SourceState.DOWN}
    out = eng.on_gateway_status(status(clock, "gw1", down))
    assert [(a.state, a.labels["sources_down"]) for a in out] == [
        (AlertState.FIRING, "lora,serial")
    ]
    assert out[0].summary == "Gateway gw1 reports every sensor source down (lora,serial)"
    up = eng.on_gateway_status(status(clock, "gw1", {"serial": SourceState.UP}))
    assert [a.state for a in up] == [AlertState.RESOLVED]


def test_a_buffered_status_arriving_after_a_newer_one_does_not_page() -> None:
    """A 45 s uplink blip: the status of 30 s (its radio briefly down) is buffered, and the
    gateway sends it after its current one (radio up), as the edge does. The gateway's
    state is its newest status's, by uptime; the old one only says it is in contact."""
    eng, clock = engine([GATEWAY])
    up, down = {"radio": SourceState.UP}, {"radio": SourceState.DOWN}
    t0 = clock.now

    def report(sources: dict[str, SourceState], uptime: float, time: datetime) -> list[Any]:
        return eng.on_gateway_status(
            status(clock, "gw1", sources).model_copy(update={"uptime_s": uptime, "time": time})
        )

    assert report(up, 1000.0, t0) == []
    clock.advance(60)
    assert report(up, 1060.0, clock.now) == []
    clock.advance(1)
    assert report(down, 1030.0, t0 + timedelta(seconds=30)) == []
    # a status that is newer says every source is down: that pages at once
    clock.advance(29)
    fired = report(down, 1090.0, clock.now)
    assert [a.state for a in fired] == [AlertState.FIRING]
    # ...and an older one saying the radio was up does not end it
    clock.advance(1)
    assert report(up, 1060.0, t0 + timedelta(seconds=60)) == []
    clock.advance(29)
    assert [a.state for a in report(up, 1120.0, clock.now)] == [AlertState.RESOLVED]


def test_acknowledge_silence_unsilence_and_expiry() -> None:
    eng, clock = engine([{**UHI, "for": "0s"}])
    fp = eng.on_kpi(uhi(clock, "c", 4))[0].fingerprint

    def act(kind: AlertActionKind, until: datetime | None = None) -> list[AlertState]:
        action = AlertAction(fingerprint=fp, action=kind, actor="ana", at=clock.now, until=until)
        return [a.state for a in eng.on_action(action)]

    assert act(AlertActionKind.ACKNOWLEDGE) == [AlertState.ACKNOWLEDGED]
    assert act(AlertActionKind.ACKNOWLEDGE) == []  # idempotent
    assert act(AlertActionKind.SILENCE, clock.now + timedelta(minutes=5)) == [AlertState.SILENCED]
    clock.advance(299)
    assert eng.tick() == []
    clock.advance(1)
    assert [a.state for a in eng.tick()] == [AlertState.ACKNOWLEDGED]
    assert act(AlertActionKind.SILENCE) == [AlertState.SILENCED]
    assert act(AlertActionKind.UNSILENCE) == [AlertState.ACKNOWLEDGED]
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 1))] == [AlertState.RESOLVED]
    assert act(AlertActionKind.ACKNOWLEDGE) == []  # nothing to acknowledge any more
    assert eng.counters.actions_ignored == 2


def test_fingerprint_is_stable_and_scoped() -> None:
    a = fingerprint("uhi", [("zone", "centre")])
    assert a == fingerprint("uhi", [("zone", "centre"), ("device", None)])
    assert a != fingerprint("uhi", [("zone", "park")])
    assert a != fingerprint("uhi2", [("zone", "centre")])
    assert len(a) == 16
    assert int(a, 16) >= 0


def test_a_timed_silence_covers_a_new_incident_hours_later_also_after_a_restart() -> None:
    """A ``--for 7d`` silence outlives the resolved record's normal retention (renotify +
    1 h): a new incident of the same alert days later is still silenced, also when the
    engine restarted in between on its (JSON-serialised) state."""
    clock = Clock()
    ruleset = rules_from_mapping({"rules": [{**UHI, "for": "0s", "renotify": "30m"}]})
    alerts: dict[str, Any] = {}
    signals: dict[str, Any] = {}
    eng = AlertEngine(ruleset, alerts, signals, clock=clock)
    fp = eng.on_kpi(uhi(clock, "c", 4))[0].fingerprint
    until = clock.now + timedelta(days=7)
    action = AlertAction(
        fingerprint=fp, action=AlertActionKind.SILENCE, actor="ana", at=clock.now, until=until
    )
    assert [a.state for a in eng.on_action(action)] == [AlertState.SILENCED]
    clock.advance(60)
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 1))] == [AlertState.RESOLVED]
    for _ in range(3 * 24):  # three days of ticks, far beyond renotify + 1 h
        clock.advance(3600)
        assert eng.tick() == []
    # the engine restarts on its changelog-restored state
    alerts = {k: json.loads(json.dumps(v)) for k, v in alerts.items()}
    signals = {k: json.loads(json.dumps(v)) for k, v in signals.items()}
    eng = AlertEngine(ruleset, alerts, signals, clock=clock)
    out = eng.on_kpi(uhi(clock, "c", 4))
    assert [(a.state, a.labels.get("silenced_until")) for a in out] == [
        (AlertState.SILENCED, until.isoformat())
    ]
    clock.advance(60)
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 1))] == [AlertState.RESOLVED]
    # once the silence has ended the record is cleaned up as usual, and a new incident pages
    clock.now = until + timedelta(seconds=1)
    eng.tick()
    assert eng.current() == []
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 4))] == [AlertState.FIRING]


def test_a_silence_change_on_a_resolved_alert_applies_to_its_next_incident() -> None:
    """The resolved record is kept while its timed silence lasts: an unsilence lifts that
    silence (it used to be dropped, and the next incident within 7 days did not page), and
    a timed silence set or moved after the resolution covers the next incident."""
    clock = Clock()
    ruleset = rules_from_mapping({"rules": [{**UHI, "for": "0s", "renotify": "30m"}]})
    eng = AlertEngine(ruleset, {}, {}, clock=clock)
    fp = eng.on_kpi(uhi(clock, "c", 4))[0].fingerprint

    def act(kind: AlertActionKind, until: datetime | None = None) -> list[AlertState]:
        action = AlertAction(fingerprint=fp, action=kind, actor="ana", at=clock.now, until=until)
        return [a.state for a in eng.on_action(action)]

    assert act(AlertActionKind.SILENCE, clock.now + timedelta(days=7)) == [AlertState.SILENCED]
    clock.advance(60)
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 1))] == [AlertState.RESOLVED]
    clock.advance(60)
    assert act(AlertActionKind.UNSILENCE) == []  # applied; the alert stays resolved
    assert act(AlertActionKind.ACKNOWLEDGE) == []  # nothing to acknowledge
    assert act(AlertActionKind.SILENCE) == []  # "until it resolves": it has
    assert eng.counters.actions_ignored == 2
    for _ in range(24):
        clock.advance(3600)
        eng.tick()
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 4))] == [AlertState.FIRING]
    # a timed silence set after the resolution covers the next incident, with its new end
    clock.advance(60)
    assert [a.state for a in eng.on_kpi(uhi(clock, "c", 1))] == [AlertState.RESOLVED]
    assert act(AlertActionKind.SILENCE, clock.now + timedelta(hours=1)) == []
    until = clock.now + timedelta(days=2)
    assert act(AlertActionKind.SILENCE, until) == []  # moved: lasts two days
    assert eng.counters.actions_ignored == 2
    for _ in range(24):
        clock.advance(3600)
        assert eng.tick() == []
    out = eng.on_kpi(uhi(clock, "c", 4))
    assert [(a.state, a.labels.get("silenced_until")) for a in out] == [
        (AlertState.SILENCED, until.isoformat())
    ]


def _outage_with_windowed_completeness(
    dead: set[str],
    lag: timedelta = timedelta(0),
    kpi_delay: timedelta = timedelta(0),
    buffered_statuses: bool = False,
    reboot_clock_behind: timedelta | None = None,
    says_unsynced: bool | None = False,
) -> list[tuple[float, str, str, str]]:
    """Shipped defaults; gateway gw1 with three devices is out of contact for 63 minutes
    while the stream keeps closing 5-minute windows with completeness 0 for its devices.
    It comes back at 63 min; the window ending at 65 min holds 2 of its 5 minutes (0.4),
    later windows are complete, except for the ``dead`` devices, which never return.
    ``lag``: every record is processed that long after its own time (readings, statuses
    and windows are that old, as when the engine drains a Kafka backlog). ``kpi_delay``:
    the KPIs, and only they, reach the engine that much later still (a stream job
    catching up), while the gateway and its devices go on reporting.
    ``buffered_statuses``: back, the gateway first sends the statuses it buffered during
    the outage (their own, old times; the edge forwards them once its readings are out)
    and its current one 30 s later.
    ``reboot_clock_behind``: the outage is a power cut after a day of uptime; the gateway
    comes back as a new agent run (its uptime restarts) whose clock, not synchronized, is
    that far behind (fake-hwclock's last save); its statuses say ``says_unsynced`` as
    ``clock_synchronized`` (None: a gateway older than that field).
    Returns (minute of the engine's clock, rule, device or gateway, state) of every
    published change."""
    clock = Clock()  # the engine's (processing) clock
    event = Clock()  # the records' own times
    eng = AlertEngine(load_rules(), {}, {}, clock=clock)
    devices = ["th-1", "th-2", "th-3"]
    published: list[tuple[float, str, str, str]] = []

    def run(out: list[Any]) -> None:
        minute = (clock.now - T0).total_seconds() / 60
        published.extend((minute, a.rule_id, a.device_id or a.gateway_id, a.state) for a in out)

    def completeness(device: str, value: float) -> KpiValue:
        return KpiValue(
            kpi_id="completeness",
            kpi_version="1",
            zone="centre",
            device_id=device,
            window_start=event.now - timedelta(minutes=5),
            window_end=event.now,
            value=value,
            unit="1",
            sample_count=int(value * 5),
            completeness=value,
        )

    event.now = clock.now - lag
    first = status(event, "gw1")
    if reboot_clock_behind is not None:
        first = first.model_copy(update={"uptime_s": 86_400.0})
    run(eng.on_gateway_status(first))
    run(eng.on_batch(batch(*(reading(event, d, 20) for d in devices))))
    queued: list[tuple[datetime, KpiValue]] = []  # (when the engine gets it, KPI)
    for second in range(30, 90 * 60 + int(kpi_delay.total_seconds()) + 1, 30):
        clock.now = T0 + timedelta(seconds=second)
        event.now = clock.now - lag
        back = second >= 63 * 60
        if back:
            if buffered_statuses and second == 63 * 60:
                for old in range(30, 63 * 60, 30):
                    buffered = status(event, "gw1").model_copy(
                        update={"time": T0 - lag + timedelta(seconds=old)}
                    )
                    run(eng.on_gateway_status(buffered))
            elif reboot_clock_behind is not None:
                rebooted = status(event, "gw1").model_copy(
                    update={
                        "time": event.now - reboot_clock_behind,
                        "uptime_s": second - 63 * 60 + 20.0,
                        "clock_synchronized": says_unsynced,
                    }
                )
                run(eng.on_gateway_status(rebooted))
            else:
                run(eng.on_gateway_status(status(event, "gw1")))
            live = [reading(event, d, 20, seq=second) for d in devices if d not in dead]
            if second % 60 == 0 and live:
                run(eng.on_batch(batch(*live)))
        if second % 300 == 0 and second <= 90 * 60:  # a 5-minute window closes
            share = 0.4 if second == 65 * 60 else 1.0
            for device in devices:
                value = share if back and device not in dead else 0.0
                queued.append((clock.now + kpi_delay, completeness(device, value)))
        while queued and queued[0][0] <= clock.now:
            run(eng.on_kpi(queued.pop(0)[1]))
        run(eng.tick())
    return published


def test_a_gateway_outage_is_one_alert_also_for_windowed_completeness() -> None:
    """The windows that overlap an outage show low completeness for every device behind
    the gateway; those alerts are the outage's, not the devices': nothing but the gateway
    alert may fire."""
    published = _outage_with_windowed_completeness(dead=set())
    fired = [(m, r, who) for m, r, who, s in published if s is not AlertState.PENDING]
    assert [f for f in fired if f[1] == "gateway-offline"] == [
        (2.0, "gateway-offline", "gw1"),
        (63.0, "gateway-offline", "gw1"),
    ]
    notified = [(m, r, who, s) for m, r, who, s in published if s is AlertState.FIRING]
    assert notified == [(2.0, "gateway-offline", "gw1", AlertState.FIRING)]
    # the held device alerts end without anyone being told
    assert {(r, s) for _m, r, _who, s in published if r != "gateway-offline"} <= {
        ("data-completeness", AlertState.PENDING),
        ("data-completeness", AlertState.RESOLVED),
        ("sensor-stale", AlertState.PENDING),
        ("sensor-stale", AlertState.RESOLVED),
    }


def test_a_device_still_silent_after_the_outage_and_its_grace_still_alerts() -> None:
    published = _outage_with_windowed_completeness(dead={"th-3"})
    notified = [(m, r, who) for m, r, who, s in published if s is AlertState.FIRING]
    assert notified == [
        (2.0, "gateway-offline", "gw1"),
        # one gateway timeout (4 x 30 s) after the gateway is back, it is alive and
        # caught up, and th-3 still says nothing
        (65.0, "sensor-stale", "th-3"),
        # the first window that starts after that grace is still empty
        (70.0, "data-completeness", "th-3"),
    ]


@pytest.mark.parametrize("dead", [set(), {"th-3"}], ids=["all-return", "th-3-dead"])
def test_an_outage_drained_from_a_backlog_alerts_as_it_did_live(dead: set[str]) -> None:
    """The engine three hours behind its input (a Kafka backlog drained at the pace it was
    written): every record is old, the engine's clock is now. The outage must hold the
    same alerts, and a device dead after it must alert as soon after the gateway's return
    as live. A completeness KPI's window is in the records' time, so the gateway's return
    it is compared with must be too."""
    live = _outage_with_windowed_completeness(dead)
    assert _outage_with_windowed_completeness(dead, lag=timedelta(hours=3)) == live


@pytest.mark.parametrize("dead", [set(), {"th-3"}], ids=["all-return", "th-3-dead"])
def test_completeness_windows_arriving_hours_late_are_still_the_outage_s(
    dead: set[str],
) -> None:
    """The stream job three hours behind (its own backlog) while the gateway and the
    engine are live: the outage's windows arrive long after the gateway's alert resolved
    (and after its resolved record is dropped), and must still be held; a dead device
    alerts when its first window after the grace arrives, three hours later than live."""
    live = _outage_with_windowed_completeness(dead)
    late = _outage_with_windowed_completeness(dead, kpi_delay=timedelta(hours=3))
    assert [p for p in late if p[1] != "data-completeness"] == [
        p for p in live if p[1] != "data-completeness"
    ]
    assert [p for p in late if p[1] == "data-completeness"] == [
        (minute + 180, rule, who, state)
        for minute, rule, who, state in live
        if rule == "data-completeness"
    ]


@pytest.mark.parametrize("dead", [set(), {"th-3"}], ids=["all-return", "th-3-dead"])
def test_statuses_buffered_through_an_uplink_outage_do_not_end_it_early(
    dead: set[str],
) -> None:
    """After an uplink outage the first status the engine gets is the oldest one the gateway
    buffered (time: the outage's first minute). The gateway is back now, not then: the
    outage's windows are held as when its current status comes first."""
    live = _outage_with_windowed_completeness(dead)
    assert _outage_with_windowed_completeness(dead, buffered_statuses=True) == live


@pytest.mark.parametrize("says_unsynced", [False, None], ids=["says-so", "older-gateway"])
@pytest.mark.parametrize("dead", [set(), {"th-3"}], ids=["all-return", "th-3-dead"])
def test_a_power_cut_s_windows_arriving_late_are_held_while_the_gateway_clock_is_wrong(
    dead: set[str], says_unsynced: bool | None
) -> None:
    """A power cut: the gateway boots with fake-hwclock's last save (95 min behind) and its
    NTP does not sync for hours. Its statuses' times are not when it came back: the
    outage's windows, delivered three hours late by a stream job catching up, must be held
    as for a gateway whose clock is right, and a dead device alerts on the same window.
    A gateway older than ``clock_synchronized`` gives its clock away: its new run's time
    is before its last run's last status."""
    late = _outage_with_windowed_completeness(dead, kpi_delay=timedelta(hours=3))
    rebooted = _outage_with_windowed_completeness(
        dead,
        kpi_delay=timedelta(hours=3),
        reboot_clock_behind=timedelta(minutes=95),
        says_unsynced=says_unsynced,
    )
    assert rebooted == late


def test_a_restart_with_the_clock_right_ends_the_outage_on_the_gateway_s_time() -> None:
    """An agent restart (or a power cut of a gateway whose clock is right) from a gateway
    that does not say whether its clock is synchronized: its time is trusted, so an engine
    three hours behind alerts on the dead device's first window after the grace, as for
    any outage (the engine's clock would hold three hours of its windows more)."""
    backlog = _outage_with_windowed_completeness({"th-3"}, lag=timedelta(hours=3))
    restarted = _outage_with_windowed_completeness(
        {"th-3"},
        lag=timedelta(hours=3),
        reboot_clock_behind=timedelta(0),
        says_unsynced=None,
    )
    assert restarted == backlog


def test_an_outage_that_began_with_every_source_down_ends_on_no_status_time_unknown() -> None:
    """The gateway reports every source down (its alert fires, on that status's time), then
    loses power; it comes back with its clock not synchronized. The earlier status's time
    is not when it came back: a window of the outage judged later is held."""
    low = {"id": "low", "kind": "threshold", "kpi_id": "completeness", "scope": "device",
           "direction": "below", "set": 0.5, "clear": 0.8}  # fmt: skip
    eng, clock = engine([low, GATEWAY])  # gateway timeout: 2 x 30 s
    start = clock.now
    eng.on_batch(batch(reading(clock, "a", 20)))
    down = status(clock, "gw1", {"radio": SourceState.DOWN})
    assert [a.state for a in eng.on_gateway_status(down)] == [AlertState.FIRING]
    for _ in range(3600):  # dark for an hour
        clock.advance(1)
        eng.tick()
    rebooted = status(clock, "gw1", {"radio": SourceState.UP}).model_copy(
        update={"time": start - timedelta(minutes=20), "clock_synchronized": False}
    )
    assert [a.state for a in eng.on_gateway_status(rebooted)] == [AlertState.RESOLVED]
    for second in range(1, 121):  # two gateway timeouts, its clock still not synchronized
        clock.advance(1)
        if second % 30 == 0:
            later = rebooted.time + timedelta(seconds=second)
            eng.on_gateway_status(rebooted.model_copy(update={"time": later}))
        eng.tick()
    window = KpiValue(
        kpi_id="completeness", kpi_version="1", zone="centre", device_id="a",
        window_start=start + timedelta(minutes=30), window_end=start + timedelta(minutes=35),
        value=0.0, unit="1", sample_count=0, completeness=0.0,
    )  # fmt: skip
    assert [a.state for a in eng.on_kpi(window)] == [AlertState.PENDING]  # held, not fired
    assert eng.counters.inhibited == 1
    assert [r.phase.value for r in eng.current() if r.rule_id == "gw-off"] == ["resolved"]


def test_a_window_judged_right_after_an_old_status_ends_the_outage_still_waits() -> None:
    """The status that ends an outage can be an old one from the gateway's buffer; until
    its current status says when it came back (at most one gateway timeout later), a
    missing-data alert about its devices waits whatever window it judges."""
    low = {"id": "low", "kind": "threshold", "kpi_id": "completeness", "scope": "device",
           "direction": "below", "set": 0.5, "clear": 0.8}  # fmt: skip
    eng, clock = engine([low, GATEWAY])  # gateway timeout: 2 x 30 s
    start = clock.now
    eng.on_gateway_status(status(clock, "gw1"))
    eng.on_batch(batch(reading(clock, "a", 20)))

    def empty_window(minute: int) -> KpiValue:
        return KpiValue(
            kpi_id="completeness", kpi_version="1", zone="centre", device_id="a",
            window_start=start + timedelta(minutes=minute),
            window_end=start + timedelta(minutes=minute + 1),
            value=0.0, unit="1", sample_count=0, completeness=0.0,
        )  # fmt: skip

    published = []
    for _ in range(600):  # out of contact for 10 min
        clock.advance(1)
        published += eng.tick()
    published += eng.on_kpi(empty_window(5))  # held: the gateway's alert is firing
    oldest = status(clock, "gw1").model_copy(update={"time": start + timedelta(seconds=30)})
    published += eng.on_gateway_status(oldest)  # back, first with what it buffered
    for second in range(1, 121):
        clock.advance(1)
        if second % 30 == 29:  # its current status, from 29 s after the return on
            published += eng.on_gateway_status(status(clock, "gw1"))
        published += eng.tick()
    assert [(a.rule_id, a.state) for a in published if a.state is AlertState.FIRING] == [
        ("gw-off", AlertState.FIRING)
    ]
    # a window that starts a gateway timeout after the return is the device's own
    fired = eng.on_kpi(empty_window(11))
    assert [(a.rule_id, a.state) for a in fired] == [("low", AlertState.FIRING)]


def test_the_grace_also_follows_a_gateway_outage_that_ended_while_pending() -> None:
    eng, clock = engine([STALE, {**GATEWAY, "for": "60s"}])
    eng.on_gateway_status(status(clock, "gw1"))
    eng.on_batch(batch(reading(clock, "a", 20)))
    published = []
    for _ in range(90):  # pending from 60 s, would fire at 120 s
        clock.advance(1)
        published += eng.tick()
    published += eng.on_gateway_status(status(clock, "gw1"))  # back; readings still buffered
    for _ in range(3):
        clock.advance(1)
        published += eng.tick()
    published += eng.on_batch(batch(reading(clock, "a", 20, seq=1)))
    assert [(a.rule_id, a.state) for a in published if a.state is AlertState.FIRING] == []


def test_one_alert_is_one_influx_series_while_its_gateway_and_rule_change() -> None:
    """The sink's series tags are what the fingerprint is made of: the gateway a device
    alert learns mid-incident (it first fired before the device was ever seen) and a rule
    edited mid-incident (severity, team) must not start a second series, or the first one
    stays at active=1 forever and the dashboards' "ongoing alerts" count is wrong."""
    clock = Clock()
    alerts: dict[str, Any] = {}
    signals: dict[str, Any] = {}
    eng = AlertEngine(load_rules(), alerts, signals, clock=clock)

    def completeness(value: float) -> KpiValue:
        return KpiValue(
            kpi_id="completeness",
            kpi_version="1",
            zone="centre",
            device_id="th-1",
            window_start=clock.now - timedelta(minutes=5),
            window_end=clock.now,
            value=value,
            unit="1",
            sample_count=0,
            completeness=value,
        )

    published = eng.on_kpi(completeness(0.0))  # silent since before the engine started
    clock.advance(30 * 60)
    published += eng.tick()
    clock.advance(10 * 60)  # repaired: its readings now arrive through gw1
    published += eng.on_batch(batch(reading(clock, "th-1", 20)))
    # the rules file was edited meanwhile and the engine restarted with it
    edited = load_rules().model_copy(
        update={
            "rules": tuple(
                r.model_copy(update={"severity": AlertSeverity.WARNING, "team": "field-ops"})
                if r.id == "data-completeness"
                else r
                for r in load_rules().rules
            )
        }
    )
    eng = AlertEngine(edited, alerts, signals, clock=clock)
    clock.advance(5 * 60)
    published += eng.on_kpi(completeness(0.9))
    mine = [a for a in published if a.rule_id == "data-completeness"]
    assert [a.state for a in mine] == [AlertState.PENDING, AlertState.FIRING, AlertState.RESOLVED]
    assert (mine[0].gateway_id, mine[-1].gateway_id) == (None, "gw1")
    assert (mine[0].severity, mine[-1].severity) == (AlertSeverity.INFO, AlertSeverity.WARNING)
    last: dict[str, str] = {}
    for alert in mine:
        series, fields = alert_line(alert).split(" ", 1)  # tags are safe ids: no spaces
        last[series] = fields.split(",")[0]
    assert list(last.values()) == ["active=0i"]  # one series, and it ends inactive


def test_summaries_put_a_space_between_a_value_and_its_unit() -> None:
    """As SI writes them (20 µg/m³, 65 dB(A)); °C and % follow the value directly."""
    from stream.alerts.engine import unit_text

    assert [f"20{unit_text(u)}" for u in ("ug/m3", "dB(A)", "Cel", "%", "s", "hPa", "1")] == [
        "20 µg/m³",
        "20 dB(A)",
        "20°C",
        "20%",
        "20 s",
        "20 hPa",
        "20",
    ]


def test_a_second_power_cut_restoring_the_same_clock_still_pages_every_source_down() -> None:
    """Two power cuts within an hour: both boots restore the same fake-hwclock save, so the
    second run starts, by the gateway's clock, when the first did before NTP stepped it.
    That start was remembered as a replaced run, whose statuses stayed old for good: the
    second run's "every source down" never paged while its clock was not synchronized."""
    eng, clock = engine([GATEWAY])  # gateway timeout: 2 x 30 s
    up, down = {"radio": SourceState.UP}, {"radio": SourceState.DOWN}
    saved = clock.now - timedelta(minutes=40)  # fake-hwclock's last save

    def report(sources: dict[str, SourceState], time: datetime, uptime: float) -> list[Any]:
        return eng.on_gateway_status(
            status(clock, "gw1", sources).model_copy(
                update={"time": time, "uptime_s": uptime, "clock_synchronized": time != saved}
            )
        )

    assert report(up, clock.now, 86_400.0) == []
    clock.advance(300)  # the first cut; the run after it starts at the saved time
    assert report(up, saved, 0.0) == []
    clock.advance(30)
    assert report(up, clock.now, 30.0) == []  # NTP steps its clock to the true time
    clock.advance(300)  # the second cut; its run starts at the same saved time
    fired = report(down, saved, 0.0)
    for uptime in (30.0, 60.0, 90.0):
        clock.advance(30)
        fired += report(down, saved + timedelta(seconds=uptime), uptime)
    assert [a.state for a in fired] == [AlertState.FIRING]
