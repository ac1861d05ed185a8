"""Alerts end to end on the real stack: Kafka records in, e-mails and webhooks out.

The alert engine and the notifier run as their own processes (as in production); e-mail
goes through a real SMTP server that requires STARTTLS and AUTH, webhooks to a real HTTP
server that checks the HMAC signature. Records are produced to Kafka directly: that is
the engine's real interface (KpiValue on ``kpi``, ReadingBatch on ``readings``,
GatewayStatus on ``gateway-status``, AlertAction on ``alert-actions``).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from climastream.contract import (
    Alert,
    AlertAction,
    AlertActionKind,
    AlertState,
    GatewayStatus,
    KpiValue,
    Quantity,
    Reading,
    ReadingBatch,
    Topics,
)
from climastream.stack import Stack
from sinks.notify.testing import ReceivedMail
from stream.alerts.cli import read_alerts, send_action
from stream.alerts.testing import AlertingSystem, wait_for

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]

RULES = {
    "defaults": {"renotify": "10m"},
    "rules": [
        {
            "id": "uhi-night",
            "kind": "threshold",
            "kpi_id": "uhi.night",
            "scope": "zone",
            "set": 3.0,
            "clear": 2.0,
            "for": "2s",
            "severity": "warning",
            "team": "climate-unit",
            "summary": "Night-time heat island in {zone}: {value}{unit} above the reference",
        },
        {
            "id": "sensor-stale",
            "kind": "stale",
            "cadence": "0.5s",
            "missed": 4,
            "severity": "warning",
            "team": "operators",
        },
        {
            "id": "gateway-offline",
            "kind": "gateway_offline",
            "status_interval": "1s",
            "missed": 3,
            "severity": "critical",
            "team": "operators",
        },
        {
            "id": "extreme-heat",
            "kind": "threshold",
            "source": "reading",
            "quantity": "temperature",
            "set": 45.0,
            "clear": 40.0,
            "severity": "critical",
            "team": "climate-unit",
        },
    ],
}
ROUTES = [
    {
        "name": "heat-duty",
        "match": {"rules": ["extreme-heat"]},
        "notify": ["duty"],
        "escalate": {"after": "5s", "to": ["head"]},
    },
    {"name": "climate", "match": {"teams": ["climate-unit"]}, "notify": ["climate"]},
    {"name": "ops", "match": {}, "notify": ["operators"]},
]
CONTACTS = {
    "duty": {"email": "duty@city.test"},
    "head": {"email": "head@city.test"},
    "climate": {"email": "climate@city.test", "webhook": "chat"},
    "operators": {"email": "ops@city.test"},
}


@pytest.fixture(scope="module")
def system(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertingSystem]:
    workdir = tmp_path_factory.mktemp("alerting")
    alerting = AlertingSystem(stack.config.kafka_bootstrap, workdir, RULES, ROUTES, CONTACTS, RUN)
    try:
        alerting.start_engine()
        alerting.start_notifier()
        yield alerting
    finally:
        alerting.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _uhi(zone: str, value: float) -> KpiValue:
    end = _now()
    return KpiValue(
        kpi_id="uhi.night",
        kpi_version="1",
        zone=zone,
        window_start=end - timedelta(minutes=10),
        window_end=end,
        value=value,
        unit="Cel",
        sample_count=60,
        completeness=0.95,
    )


def _batch(gateway: str, devices: list[str], seq: int, value: float = 21.0) -> ReadingBatch:
    now = _now()
    return ReadingBatch(
        gateway_id=gateway,
        readings=tuple(
            Reading(
                device_id=device,
                gateway_id=gateway,
                seq=seq,
                quantity=Quantity.TEMPERATURE,
                value=value,
                unit="Cel",
                event_time=now,
                ingest_time=now,
                zone=f"z-{gateway}",
            )
            for device in devices
        ),
    )


def _status(gateway: str) -> GatewayStatus:
    return GatewayStatus(
        gateway_id=gateway,
        time=_now(),
        software_version="test",
        uptime_s=10.0,
        buffer_depth=0,
        buffer_bytes=0,
        buffer_capacity_bytes=1 << 20,
    )


def _settle(system: AlertingSystem, seconds: float) -> None:
    """Let the pipeline run a little longer so that a duplicate would have shown up."""
    time.sleep(seconds)


def test_evening_heat_island_gives_one_email_per_zone_and_one_resolution(
    system: AlertingSystem,
) -> None:
    affected = [f"uhi-a-{RUN}", f"uhi-b-{RUN}"]
    calm = f"uhi-calm-{RUN}"
    # 21:00-23:00 compressed: the night UHI oscillates around the 3 °C set level (never
    # below the 2 °C clear level) for ~8 s, then the evening cools and it ends.
    wobble = [3.2, 2.8, 3.5, 2.6, 3.1, 2.9, 3.4, 2.7, 3.3, 2.95, 3.05, 2.8, 3.6, 2.5, 3.2, 2.9]
    for step, value in enumerate(wobble):
        for offset, zone in enumerate(affected):
            system.publisher.send(Topics.KPI.name, _uhi(zone, value + 0.1 * offset))
        system.publisher.send(Topics.KPI.name, _uhi(calm, 1.5 + 0.05 * step))
        time.sleep(0.5)

    def firing(zone: str) -> list[str]:
        return [m.subject for m in system.mails(lambda m: m.kind == "firing" and zone in m.subject)]

    wait_for(lambda: all(firing(z) for z in affected), 30, "one UHI e-mail per affected zone")
    for value in (1.8, 1.5, 1.2):
        for zone in affected:
            system.publisher.send(Topics.KPI.name, _uhi(zone, value))
        time.sleep(0.3)

    def resolved(zone: str) -> list[str]:
        return [
            m.subject for m in system.mails(lambda m: m.kind == "resolved" and zone in m.subject)
        ]

    wait_for(lambda: all(resolved(z) for z in affected), 30, "the resolution e-mails")
    _settle(system, 3)
    for zone in affected:
        mails = [m for m in system.mails() if zone in m.subject]
        assert [m.kind for m in mails] == ["firing", "resolved"], [m.subject for m in mails]
        firing_mail = mails[0]
        assert firing_mail.recipients == ("climate@city.test",)
        assert firing_mail.subject.startswith(f"[Warning] Night-time heat island in {zone}")
        body = firing_mail.body
        assert f"zone {zone}" in body
        assert "alert level 3 °C" in body
        assert "Latest values:" in body
        assert "95% of expected readings arrived" in body
        assert f"http://console.test/console/alerts/{firing_mail.fingerprint}" in body
        assert mails[1].subject.startswith("[Resolved] ")
        # the webhook got the same two notifications, signed
        hooks = [h for h in system.webhook.received() if h.json["alert"].get("zone") == zone]
        assert [h.json["kind"] for h in hooks] == ["firing", "resolved"]
        assert all(h.signature_ok for h in hooks)
    assert not system.mails(lambda m: calm in m.subject)


def test_gateway_outage_gives_one_gateway_alert_and_no_sensor_alerts(
    system: AlertingSystem,
) -> None:
    dead_gw, live_gw = f"gwdead-{RUN}", f"gwlive-{RUN}"
    dead_devices = [f"dd{i}-{RUN}" for i in range(4)]
    live_devices = [f"ld{i}-{RUN}" for i in range(2)]
    for seq in range(8):
        system.publisher.send(Topics.READINGS.name, _batch(dead_gw, dead_devices, seq))
        system.publisher.send(Topics.READINGS.name, _batch(live_gw, live_devices, seq))
        if seq % 2 == 0:
            system.publisher.send(Topics.GATEWAY_STATUS.name, _status(dead_gw))
            system.publisher.send(Topics.GATEWAY_STATUS.name, _status(live_gw))
        time.sleep(0.5)
    # The dead gateway goes silent; on the live one, device ld1 dies alone.
    for seq in range(8, 20):
        system.publisher.send(Topics.READINGS.name, _batch(live_gw, live_devices[:1], seq))
        if seq % 2 == 0:
            system.publisher.send(Topics.GATEWAY_STATUS.name, _status(live_gw))
        time.sleep(0.5)

    def about(names: list[str]) -> list[str]:
        return [m.subject for m in system.mails(lambda m: any(n in m.body for n in names))]

    wait_for(lambda: about([dead_gw]), 30, "the gateway-offline e-mail")
    wait_for(lambda: about([live_devices[1]]), 30, "the stale e-mail of the lone dead sensor")
    _settle(system, 3)
    gateway_mails = system.mails(lambda m: dead_gw in m.subject)
    assert len(gateway_mails) == 1, [m.subject for m in gateway_mails]
    assert gateway_mails[0].subject.startswith(f"[Urgent] Gateway {dead_gw} out of contact")
    assert about(dead_devices) == []  # no sensor alert at all
    assert len(about([live_devices[1]])) == 1
    assert not about([live_devices[0]])

    # the gateway comes back: one resolution, still no sensor alert
    for seq in range(20, 24):
        system.publisher.send(Topics.GATEWAY_STATUS.name, _status(dead_gw))
        system.publisher.send(Topics.READINGS.name, _batch(dead_gw, dead_devices, seq))
        time.sleep(0.5)
    wait_for(
        lambda: system.mails(lambda m: m.kind == "resolved" and dead_gw in m.subject),
        30,
        "the gateway resolution",
    )
    _settle(system, 2)
    assert [m.kind for m in system.mails(lambda m: dead_gw in m.body)] == ["firing", "resolved"]


def test_unacknowledged_critical_alert_escalates_once(system: AlertingSystem) -> None:
    ignored, taken = f"hot-ignored-{RUN}", f"hot-taken-{RUN}"
    gateway = f"gwheat-{RUN}"
    system.publisher.send(Topics.READINGS.name, _batch(gateway, [ignored, taken], 1, value=47.0))

    def mails_for(device: str, kind: str) -> list[ReceivedMail]:
        return system.mails(lambda m: m.kind == kind and device in m.body)

    wait_for(lambda: mails_for(ignored, "firing") and mails_for(taken, "firing"), 30, "firing")
    taken_fp = mails_for(taken, "firing")[0].fingerprint
    action = AlertAction(
        fingerprint=taken_fp,
        action=AlertActionKind.ACKNOWLEDGE,
        actor="duty-officer",
        at=_now(),
        comment="on my way",
    )
    asyncio.run(send_action(system.bootstrap, action))

    escalations = wait_for(lambda: mails_for(ignored, "escalation"), 30, "the escalation")
    _settle(system, 7)  # more than one more escalation period
    escalations = mails_for(ignored, "escalation")
    assert len(escalations) == 1
    mail = escalations[0]
    assert mail.recipients == ("head@city.test",)
    assert mail.subject.startswith("[Escalated: not acknowledged after 5 s]")
    assert not mails_for(taken, "escalation")
    assert len(mails_for(ignored, "firing")) == 1
    # the engine published the acknowledgement as a state change
    latest = asyncio.run(read_alerts(system.bootstrap))
    assert latest[taken_fp].state is AlertState.ACKNOWLEDGED
    assert latest[taken_fp].labels["acknowledged_by"] == "duty-officer"


def test_restarting_engine_and_notifier_mid_incident_sends_no_duplicate(
    system: AlertingSystem,
) -> None:
    zone = f"uhi-restart-{RUN}"
    for value in (3.4, 3.6, 3.5, 3.8, 3.7, 3.9, 4.0):
        system.publisher.send(Topics.KPI.name, _uhi(zone, value))
        time.sleep(0.5)
    first = wait_for(lambda: system.mails(lambda m: zone in m.subject), 30, "the first e-mail")
    fingerprint = first[0].fingerprint
    before = [a for a in _alert_records(system.bootstrap) if a.fingerprint == fingerprint]

    # the engine dies hard mid-incident; the notifier restarts too
    system.stop("engine", signal.SIGKILL)
    system.stop("notify", signal.SIGTERM)
    for value in (3.6, 2.8, 3.3):  # still hot while the engine is down
        system.publisher.send(Topics.KPI.name, _uhi(zone, value))
        time.sleep(0.3)
    system.start_engine()
    system.start_notifier()
    for value in (3.5, 3.2, 3.4):
        system.publisher.send(Topics.KPI.name, _uhi(zone, value))
        time.sleep(0.5)
    for value in (1.5, 1.4):
        system.publisher.send(Topics.KPI.name, _uhi(zone, value))
        time.sleep(0.3)
    wait_for(
        lambda: system.mails(lambda m: m.kind == "resolved" and zone in m.subject),
        60,
        "the resolution after the restart",
    )
    _settle(system, 3)
    assert [m.kind for m in system.mails(lambda m: zone in m.subject)] == ["firing", "resolved"]
    # the engine recovered its state: the incident continued, it did not start over
    after = [a for a in _alert_records(system.bootstrap) if a.fingerprint == fingerprint]
    new = after[len(before) :]
    assert [a.state for a in new] == [AlertState.RESOLVED]
    assert new[0].started_at == before[-1].started_at


def _alert_records(bootstrap: str) -> list[Alert]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from climastream.contract import decode

    async def read() -> list[Alert]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(Topics.ALERTS.name, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            out: list[Alert] = []
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(decode(r.value, Alert) for r in records)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())
