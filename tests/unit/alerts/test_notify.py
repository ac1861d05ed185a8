"""Notifier: routing, quiet hours, ledger de-duplication, escalation, retries, channels.

Channels are exercised against real local servers (aiosmtpd with STARTTLS + AUTH, an
aiohttp receiver); planning logic uses a fake clock and a list channel.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from climastream.contract import (
    Alert,
    AlertSeverity,
    AlertState,
    EvidencePoint,
    Location,
    Quantity,
)
from sinks.notify.channels import (
    AlertmanagerChannel,
    DeliveryError,
    EmailChannel,
    WebhookChannel,
    sign,
)
from sinks.notify.config import ConfigError, config_from_mapping
from sinks.notify.ledger import Ledger
from sinks.notify.message import Kind, Notification, render
from sinks.notify.service import Notifier, quiet_until
from sinks.notify.testing import RecordingSmtpServer, RecordingWebhookServer

T0 = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)  # 14:00 in Brussels (CEST)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class ListChannel:
    """Records what it was asked to send; fails the first ``failures`` calls."""

    def __init__(self, name: str, failures: int = 0, retriable: bool = True) -> None:
        self.name = name
        self.sent: list[tuple[str, str, str]] = []
        self.failures = failures
        self.retriable = retriable

    async def send(self, notification: Notification, recipient: str, delivery_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise DeliveryError("boom", retriable=self.retriable)
        self.sent.append((notification.kind.value, recipient, notification.subject))

    async def close(self) -> None:
        return None


CONFIG: dict[str, Any] = {
    "console_url": "https://city.test/console",
    "quiet_hours": {"start": "22:00", "end": "07:00"},
    "smtp": {"host": "127.0.0.1", "from": "alerts@city.test"},
    "webhooks": [{"name": "chat", "url": "http://127.0.0.1:1/hook", "secret": "k"}],
    "contacts": {
        "duty": {"email": "duty@city.test"},
        "head": {"email": "head@city.test"},
        "climate": {"email": "climate@city.test", "webhook": "chat"},
        "ops": {"email": "ops@city.test"},
    },
    "routes": [
        {
            "match": {"severities": ["critical"]},
            "notify": ["duty"],
            "escalate": {"after": "15m", "to": ["head"]},
        },
        {"match": {"teams": ["climate-unit"], "zones": ["centre"]}, "notify": ["climate"]},
        {"match": {}, "notify": ["ops"]},
    ],
    "retry": {"attempts": 3, "initial": "10s", "maximum": "1m"},
}


def alert(
    state: AlertState = AlertState.FIRING,
    severity: AlertSeverity = AlertSeverity.WARNING,
    zone: str = "centre",
    started: datetime = T0,
    fp: str = "00112233aabbccdd",
) -> Alert:
    return Alert(
        fingerprint=fp,
        rule_id="uhi-night",
        state=state,
        severity=severity,
        summary=f"Night-time heat island in {zone}: 3.4°C above the reference",
        team="climate-unit",
        zone=zone,
        device_id="th-centre-1",
        gateway_id="gw-1",
        kpi_id="uhi.night",
        location=Location(lat=50.8467, lon=4.3525),
        value=3.4,
        threshold=3.0,
        unit="Cel",
        completeness=0.92,
        started_at=started,
        updated_at=started,
        evidence=(EvidencePoint(time=started, value=3.4),),
    )


@pytest.fixture
def ledger_at() -> Iterator[Callable[[Path], Ledger]]:
    """Opens ledgers and closes them after the test (an unclosed sqlite3 connection is a
    ResourceWarning since Python 3.13, raised in whichever later test collects it)."""
    opened: list[Ledger] = []

    def open_ledger(path: Path) -> Ledger:
        opened.append(Ledger(path))
        return opened[-1]

    yield open_ledger
    for ledger in opened:
        ledger.close()


@pytest.fixture
def notifier(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> tuple[Notifier, Clock, ListChannel, ListChannel]:
    clock = Clock()
    email, webhook = ListChannel("email"), ListChannel("webhook")
    config = config_from_mapping(CONFIG)
    channels: dict[str, Any] = {"email": email, "webhook": webhook}
    ledger = ledger_at(tmp_path / "l.db")
    return Notifier(config, ledger, channels, clock=clock), clock, email, webhook


async def run_due(n: Notifier) -> None:
    n.escalate()
    n.start_due()
    await n.drain()


async def test_routing_first_match_and_one_message_per_recipient(notifier: Any) -> None:
    n, _, email, webhook = notifier
    assert n.handle(alert()) == 2  # climate: e-mail + webhook
    assert n.handle(alert()) == 0  # the same record again (replay): nothing new
    await run_due(n)
    assert email.sent == [("firing", "climate@city.test", email.sent[0][2])]
    assert email.sent[0][2].startswith("[Warning] Night-time heat island in centre")
    assert webhook.sent == [("firing", "chat", email.sent[0][2])]
    n.handle(alert(zone="north", fp="99112233aabbccdd"))
    await run_due(n)
    assert email.sent[-1][1] == "ops@city.test"  # the catch-all


async def test_pending_is_never_sent_and_resolution_goes_to_who_got_the_firing(
    notifier: Any,
) -> None:
    n, clock, email, _ = notifier
    assert n.handle(alert(AlertState.PENDING)) == 0
    n.handle(alert())
    await run_due(n)
    clock.now += timedelta(minutes=5)
    n.handle(alert(AlertState.RESOLVED))
    n.handle(alert(AlertState.RESOLVED))  # duplicate record
    await run_due(n)
    assert [(k, r) for k, r, _ in email.sent] == [
        ("firing", "climate@city.test"),
        ("resolved", "climate@city.test"),
    ]
    assert email.sent[1][2].startswith("[Resolved] ")


async def test_a_new_incident_record_while_one_is_open_is_not_a_second_page(
    notifier: Any,
) -> None:
    n, _, email, _ = notifier
    n.handle(alert())
    # an engine that lost its state re-fires with a new start time: same open incident
    n.handle(alert(started=T0 + timedelta(minutes=3)))
    await run_due(n)
    assert len(email.sent) == 1


async def test_quiet_hours_defer_non_critical_and_cancel_if_resolved_first(
    notifier: Any,
) -> None:
    n, clock, email, _ = notifier
    clock.now = datetime(2025, 7, 1, 21, 30, tzinfo=UTC)  # 23:30 in Brussels
    n.handle(alert())
    await run_due(n)
    assert email.sent == []
    clock.now = datetime(2025, 7, 2, 4, 59, tzinfo=UTC)  # 06:59 local
    await run_due(n)
    assert email.sent == []
    clock.now = datetime(2025, 7, 2, 5, 0, tzinfo=UTC)  # 07:00 local
    await run_due(n)
    assert [k for k, _, _ in email.sent] == ["firing"]
    # another one at night that resolves before morning: nothing at all
    clock.now = datetime(2025, 7, 2, 21, 0, tzinfo=UTC)
    n.handle(alert(fp="aa112233aabbccdd", started=clock.now))
    clock.now += timedelta(hours=1)
    n.handle(alert(AlertState.RESOLVED, fp="aa112233aabbccdd", started=clock.now))
    clock.now = datetime(2025, 7, 3, 6, 0, tzinfo=UTC)
    await run_due(n)
    assert len(email.sent) == 1


async def test_an_incident_opened_silenced_is_sent_once_the_silence_ends(
    notifier: Any,
) -> None:
    """A silence that outlives one incident covers the next; when it ends with that
    incident still firing, its people are told then (it used to stay unsent forever)."""
    n, clock, email, _ = notifier
    n.handle(alert(AlertState.SILENCED))  # opened while the silence holds
    await run_due(n)
    assert email.sent == []
    clock.now += timedelta(hours=1)
    n.handle(alert())  # the silence ran out; still firing
    n.handle(alert())  # replayed record: nothing more
    await run_due(n)
    assert [(k, r) for k, r, _ in email.sent] == [("firing", "climate@city.test")]


async def test_unsilenced_after_the_firing_was_held_sends_the_cancelled_message(
    notifier: Any,
) -> None:
    n, clock, email, _ = notifier
    clock.now = datetime(2025, 7, 1, 21, 30, tzinfo=UTC)  # 23:30 local: held until 07:00
    n.handle(alert())
    n.handle(alert(AlertState.SILENCED))  # cancels the held message
    clock.now = datetime(2025, 7, 2, 6, 0, tzinfo=UTC)  # 08:00 local
    n.handle(alert())  # unsilenced, still firing
    await run_due(n)
    assert [(k, r) for k, r, _ in email.sent] == [("firing", "climate@city.test")]


async def test_escalation_counts_from_the_first_message_after_quiet_hours(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    config = config_from_mapping(
        {
            **CONFIG,
            "routes": [
                {"match": {}, "notify": ["duty"], "escalate": {"after": "15m", "to": ["head"]}}
            ],
        }
    )
    clock, email = Clock(datetime(2025, 7, 1, 21, 30, tzinfo=UTC)), ListChannel("email")
    n = Notifier(config, ledger_at(tmp_path / "l.db"), {"email": email}, clock=clock)
    n.handle(alert())  # a warning at 23:30 local
    clock.now = datetime(2025, 7, 1, 21, 50, tzinfo=UTC)
    await run_due(n)
    assert email.sent == []  # neither the duty contact nor, 20 min on, the head
    clock.now = datetime(2025, 7, 2, 5, 0, tzinfo=UTC)  # 07:00 local
    await run_due(n)
    clock.now = datetime(2025, 7, 2, 5, 14, tzinfo=UTC)
    await run_due(n)
    assert [(k, r) for k, r, _ in email.sent] == [("firing", "duty@city.test")]
    clock.now = datetime(2025, 7, 2, 5, 15, tzinfo=UTC)
    await run_due(n)
    assert [(k, r) for k, r, _ in email.sent][1:] == [("escalation", "head@city.test")]
    assert "not acknowledged after 15 min" in email.sent[1][2]


async def test_a_route_without_quiet_hours_is_not_held_by_another_with_them(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    config = config_from_mapping(
        {
            **CONFIG,
            "routes": [
                {"match": {}, "notify": ["ops"], "quiet_hours": False, "continue": True},
                {"match": {}, "notify": ["duty"]},
            ],
        }
    )
    clock, email = Clock(datetime(2025, 7, 1, 21, 30, tzinfo=UTC)), ListChannel("email")
    n = Notifier(config, ledger_at(tmp_path / "l.db"), {"email": email}, clock=clock)
    n.handle(alert())
    await run_due(n)
    assert [(k, r) for k, r, _ in email.sent] == [("firing", "ops@city.test")]
    clock.now = datetime(2025, 7, 2, 5, 0, tzinfo=UTC)
    await run_due(n)
    assert [r for _, r, _ in email.sent] == ["ops@city.test", "duty@city.test"]


def test_quiet_until_handles_overnight_windows() -> None:
    config = config_from_mapping(CONFIG)
    assert quiet_until(config, datetime(2025, 1, 10, 12, 0, tzinfo=UTC)) is None
    # 23:30 CET on 10 Jan -> quiet until 07:00 CET on 11 Jan = 06:00 UTC
    assert quiet_until(config, datetime(2025, 1, 10, 22, 30, tzinfo=UTC)) == datetime(
        2025, 1, 11, 6, 0, tzinfo=UTC
    )
    # 05:00 CET -> same morning 07:00 CET
    assert quiet_until(config, datetime(2025, 1, 11, 4, 0, tzinfo=UTC)) == datetime(
        2025, 1, 11, 6, 0, tzinfo=UTC
    )


async def test_critical_ignores_quiet_hours_and_escalates_exactly_once(
    tmp_path: Path, notifier: Any, ledger_at: Callable[[Path], Ledger]
) -> None:
    n, clock, email, _ = notifier
    clock.now = datetime(2025, 7, 1, 23, 0, tzinfo=UTC)  # 01:00 local: quiet
    n.handle(alert(severity=AlertSeverity.CRITICAL))
    await run_due(n)
    assert [(k, r) for k, r, _ in email.sent] == [("firing", "duty@city.test")]
    clock.now += timedelta(minutes=14, seconds=59)
    await run_due(n)
    assert len(email.sent) == 1
    clock.now += timedelta(seconds=1)
    await run_due(n)
    clock.now += timedelta(hours=2)
    await run_due(n)
    assert [(k, r) for k, r, _ in email.sent] == [
        ("firing", "duty@city.test"),
        ("escalation", "head@city.test"),
    ]
    assert email.sent[1][2].startswith("[Escalated: not acknowledged after 15 min]")
    # a restarted notifier on the same ledger escalates nothing again
    again = Notifier(n.config, ledger_at(n.ledger.path), {"email": email}, clock=clock)
    await run_due(again)
    assert len(email.sent) == 2


async def test_acknowledged_alert_does_not_escalate(notifier: Any) -> None:
    n, clock, email, _ = notifier
    n.handle(alert(severity=AlertSeverity.CRITICAL))
    clock.now += timedelta(minutes=3)
    n.handle(alert(AlertState.ACKNOWLEDGED, severity=AlertSeverity.CRITICAL))
    clock.now += timedelta(hours=1)
    await run_due(n)
    assert [k for k, _, _ in email.sent] == ["firing"]


async def test_silenced_alert_cancels_unsent_and_sends_no_resolution(notifier: Any) -> None:
    n, clock, email, _ = notifier
    clock.now = datetime(2025, 7, 1, 21, 30, tzinfo=UTC)  # quiet: the firing waits
    n.handle(alert())
    n.handle(alert(AlertState.SILENCED))
    n.handle(alert(AlertState.RESOLVED))
    clock.now += timedelta(hours=12)
    await run_due(n)
    assert email.sent == []


async def test_retries_with_backoff_then_failure_is_recorded(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    clock = Clock()
    failing = ListChannel("email", failures=10)
    config = config_from_mapping({**CONFIG, "quiet_hours": None})
    n = Notifier(config, ledger_at(tmp_path / "l.db"), {"email": failing}, clock=clock)
    n.handle(alert(zone="north"))
    await run_due(n)
    [row] = n.ledger.deliveries()
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "boom")
    assert row.due_at == T0 + timedelta(seconds=10)
    clock.now = row.due_at
    await run_due(n)
    [row] = n.ledger.deliveries()
    assert (row.attempts, row.due_at) == (2, clock.now + timedelta(seconds=20))
    clock.now = row.due_at
    await run_due(n)
    [row] = n.ledger.deliveries()
    assert (row.status, row.attempts) == ("failed", 3)  # attempts: 3
    clock.now += timedelta(hours=1)
    await run_due(n)
    assert n.ledger.deliveries()[0].attempts == 3


async def test_non_retriable_error_fails_at_once(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    clock = Clock()
    refused = ListChannel("email", failures=1, retriable=False)
    config = config_from_mapping({**CONFIG, "quiet_hours": None})
    n = Notifier(config, ledger_at(tmp_path / "l.db"), {"email": refused}, clock=clock)
    n.handle(alert(zone="north"))
    await run_due(n)
    assert [(d.status, d.attempts) for d in n.ledger.deliveries()] == [("failed", 1)]


OUTAGE_CONFIG: dict[str, Any] = {
    "smtp": {"host": "127.0.0.1", "from": "alerts@city.test"},
    "contacts": {"ops": {"email": "ops@city.test"}},
    "routes": [{"match": {}, "notify": ["ops"]}],
}


async def retry_until(n: Notifier, clock: Clock, done: Callable[[], bool]) -> list[datetime]:
    """Run each retry of the one delivery at its due time until ``done``; attempt times."""
    times = []
    for _ in range(10_000):
        [row] = n.ledger.deliveries()
        if row.status != "pending" or done():
            break
        clock.now = max(clock.now, row.due_at)
        times.append(clock.now)
        await run_due(n)
    return times


async def test_a_failing_channel_is_retried_through_an_outage_of_hours(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    # the defaults: no count limit, back off up to 5 min, give up 24 h after the first failure
    clock = Clock()
    down = ListChannel("email", failures=10**9)
    config = config_from_mapping(OUTAGE_CONFIG)
    assert (config.retry.attempts, config.retry.give_up_after) == (None, timedelta(hours=24))
    n = Notifier(config, ledger_at(tmp_path / "l.db"), {"email": down}, clock=clock)
    n.handle(alert(severity=AlertSeverity.CRITICAL))
    times = await retry_until(n, clock, lambda: clock.now >= T0 + timedelta(hours=3))
    [row] = n.ledger.deliveries()
    assert (row.status, row.failing_since, row.last_error) == ("pending", T0, "boom")
    assert row.attempts == len(times) > 6  # six attempts took 31 s; it was still trying
    assert max(b - a for a, b in itertools.pairwise(times)) == timedelta(minutes=5)
    down.failures, back = 0, clock.now  # the SMTP server is back
    await retry_until(n, clock, lambda: False)
    [row] = n.ledger.deliveries()
    assert (row.status, row.failing_since) == ("sent", T0)
    assert row.sent_at is not None
    assert row.sent_at - back <= timedelta(minutes=5)
    assert [k for k, _, _ in down.sent] == ["firing"]


async def test_retries_stop_give_up_after_the_first_failure(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    clock = Clock()
    down = ListChannel("email", failures=10**9)
    config = config_from_mapping(OUTAGE_CONFIG)
    n = Notifier(config, ledger_at(tmp_path / "l.db"), {"email": down}, clock=clock)
    n.handle(alert(severity=AlertSeverity.CRITICAL))
    times = await retry_until(n, clock, lambda: False)
    [row] = n.ledger.deliveries()
    assert (row.status, row.attempts, row.failing_since) == ("failed", len(times), T0)
    assert times[-1] == T0 + timedelta(hours=24)  # the last try is at the deadline
    assert times[-2] > T0 + timedelta(hours=23, minutes=55)
    clock.now += timedelta(days=2)
    await run_due(n)
    assert n.ledger.deliveries()[0].attempts == len(times)
    # a shorter budget from the config file
    short = config_from_mapping({**OUTAGE_CONFIG, "retry": {"give_up_after": "10m"}})
    assert (short.retry.give_up_after, short.retry.attempts) == (timedelta(minutes=10), None)


async def test_a_revived_delivery_starts_its_retries_afresh(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    clock = Clock()
    down = ListChannel("email", failures=10**9)
    config = config_from_mapping(OUTAGE_CONFIG)
    n = Notifier(config, ledger_at(tmp_path / "l.db"), {"email": down}, clock=clock)
    n.handle(alert())
    await retry_until(n, clock, lambda: clock.now >= T0 + timedelta(hours=20))
    n.handle(alert(AlertState.SILENCED))
    assert n.ledger.deliveries()[0].status == "cancelled"
    clock.now = T0 + timedelta(hours=30)
    n.handle(alert())  # the silence ran out, still firing: planned again
    [row] = n.ledger.deliveries()
    assert (row.status, row.attempts, row.failing_since) == ("pending", 0, None)
    assert row.last_error == "boom"  # what went wrong last, until the next attempt
    await run_due(n)
    [row] = n.ledger.deliveries()
    assert (row.status, row.attempts, row.failing_since) == ("pending", 1, clock.now)


class HeldChannel:
    """Each send waits until the test settles it (``settle``): a server that hangs, then
    accepts the message or fails (a retriable error, as a timeout is)."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self.sent: list[tuple[str, str]] = []

    async def send(self, notification: Notification, recipient: str, delivery_id: str) -> None:
        key = (notification.kind.value, recipient)
        self.held[key] = asyncio.get_running_loop().create_future()
        try:
            accepted = await self.held[key]
        finally:
            del self.held[key]
        if not accepted:
            raise DeliveryError("smtp OSError: connection timed out")
        self.sent.append(key)

    async def settle(self, kind: str, recipient: str, *, accepted: bool) -> None:
        self.held[kind, recipient].set_result(accepted)
        await settle_tasks()

    async def close(self) -> None:
        return None


async def settle_tasks() -> None:
    """Let started delivery tasks run up to their next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def held(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> tuple[Notifier, Clock, HeldChannel]:
    clock, email = Clock(), HeldChannel()
    config = config_from_mapping(OUTAGE_CONFIG)  # retry for 24 h: the defaults
    return (
        Notifier(config, ledger_at(tmp_path / "l.db"), {"email": email}, clock=clock),
        clock,
        email,
    )


async def start_due(n: Notifier) -> None:
    n.escalate()
    n.start_due()
    await settle_tasks()


async def test_a_firing_that_fails_after_the_alert_resolved_is_not_retried(held: Any) -> None:
    """The resolution was planned because the firing message was in flight; when that
    attempt fails, neither message is sent: not the firing hours later, nor a resolution
    of something the recipient was never told about."""
    n, clock, email = held
    n.handle(alert())
    await start_due(n)
    assert set(email.held) == {("firing", "ops@city.test")}  # the SMTP server hangs
    clock.now += timedelta(seconds=20)
    assert n.handle(alert(AlertState.RESOLVED)) == 1  # the firing may yet arrive
    await start_due(n)
    assert set(email.held) == {("firing", "ops@city.test")}  # the resolution waits
    await email.settle("firing", "ops@city.test", accepted=False)
    await n.drain()
    assert [(d.kind, d.status, d.attempts) for d in n.ledger.deliveries()] == [
        ("firing", "cancelled", 1),
        ("resolved", "cancelled", 0),
    ]
    for _ in range(30):  # the server is back; nothing is left to send
        clock.now += timedelta(minutes=5)
        await start_due(n)
        assert email.held == {}
    assert email.sent == []


async def test_a_firing_sent_after_the_alert_resolved_is_followed_by_the_resolution(
    held: Any,
) -> None:
    n, clock, email = held
    n.handle(alert())
    await start_due(n)
    clock.now += timedelta(seconds=20)
    n.handle(alert(AlertState.RESOLVED))
    await start_due(n)
    assert set(email.held) == {("firing", "ops@city.test")}  # not the resolution first
    await email.settle("firing", "ops@city.test", accepted=True)
    assert n.wake.is_set()  # the delivery loop goes on to the resolution at once
    await start_due(n)
    await email.settle("resolved", "ops@city.test", accepted=True)
    await n.drain()
    assert email.sent == [("firing", "ops@city.test"), ("resolved", "ops@city.test")]


async def test_an_escalation_failing_after_the_resolution_cancels_only_unreached_ones(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    """duty got the firing message, so duty's resolution stands when its escalation fails;
    head was only being escalated to, so head's resolution goes with the escalation."""
    routes = [
        {"match": {}, "notify": ["duty"], "escalate": {"after": "15m", "to": ["duty", "head"]}}
    ]
    config = config_from_mapping({**CONFIG, "routes": routes})
    clock, email = Clock(), HeldChannel()
    n = Notifier(config, ledger_at(tmp_path / "l.db"), {"email": email}, clock=clock)
    n.handle(alert(severity=AlertSeverity.CRITICAL))
    await start_due(n)
    await email.settle("firing", "duty@city.test", accepted=True)
    clock.now += timedelta(minutes=15)
    await start_due(n)
    assert set(email.held) == {("escalation", "duty@city.test"), ("escalation", "head@city.test")}
    clock.now += timedelta(seconds=5)
    assert n.handle(alert(AlertState.RESOLVED, severity=AlertSeverity.CRITICAL)) == 2
    await start_due(n)
    assert len(email.held) == 2  # both resolutions wait for the escalations
    await email.settle("escalation", "duty@city.test", accepted=False)
    await email.settle("escalation", "head@city.test", accepted=False)
    clock.now += timedelta(hours=1)
    await start_due(n)
    await email.settle("resolved", "duty@city.test", accepted=True)
    await n.drain()
    clock.now += timedelta(hours=1)
    await start_due(n)
    assert email.held == {}
    assert email.sent == [("firing", "duty@city.test"), ("resolved", "duty@city.test")]
    statuses = {(d.kind, d.recipient): d.status for d in n.ledger.deliveries()}
    assert statuses == {
        ("firing", "duty@city.test"): "sent",
        ("escalation", "duty@city.test"): "cancelled",
        ("escalation", "head@city.test"): "cancelled",
        ("resolved", "duty@city.test"): "sent",
        ("resolved", "head@city.test"): "cancelled",
    }


def test_history_shows_since_when_a_delivery_fails_and_its_next_try(
    tmp_path: Path,
    ledger_at: Callable[[Path], Ledger],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from stream.alerts import cli

    ledger = ledger_at(tmp_path / "l.db")
    ledger.plan("00112233aabbccdd", "i1", "firing", "email", "ops@city.test", now=T0, due_at=T0)
    [row] = ledger.deliveries()
    later = T0 + timedelta(hours=2)
    ledger.mark_failed(row.id, "boom", now=T0, retry_at=T0 + timedelta(seconds=1))
    ledger.mark_failed(row.id, "refused", now=later, retry_at=later + timedelta(minutes=5))

    async def no_kafka(bootstrap: str, *, history: list[Any], **_: Any) -> dict[str, Any]:
        history.append(alert())
        return {}

    monkeypatch.setattr(cli, "read_alerts", no_kafka)
    args = argparse.Namespace(kafka="x:1", fingerprint="00112233aabbccdd", ledger=ledger.path)
    assert cli._history(args) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "pending   attempts=2" in line
    assert "first failure 2025-07-01 12:00:00Z, next try 2025-07-01 14:05:00Z" in line
    assert line.endswith("last error: refused")


def test_a_ledger_from_before_failing_since_opens_and_works(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL,
            incident TEXT NOT NULL, kind TEXT NOT NULL, channel TEXT NOT NULL,
            recipient TEXT NOT NULL, status TEXT NOT NULL, due_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at TEXT NOT NULL,
            sent_at TEXT, UNIQUE (fingerprint, incident, kind, channel, recipient));
        INSERT INTO deliveries (fingerprint, incident, kind, channel, recipient, status,
            due_at, attempts, last_error, created_at)
        VALUES ('00112233aabbccdd', 'i1', 'firing', 'email', 'ops@city.test', 'pending',
            '2025-07-01T12:00:10+00:00', 2, 'boom', '2025-07-01T12:00:00+00:00');
        """
    )
    old.commit()
    old.close()
    for _ in range(2):  # the migration runs once; opening again changes nothing
        ledger = Ledger(path)
        try:
            [row] = ledger.deliveries()
            assert (row.status, row.attempts, row.failing_since) == ("pending", 2, None)
        finally:
            ledger.close()
    ledger = Ledger(path)
    try:
        ledger.mark_failed(row.id, "boom", now=T0, retry_at=T0 + timedelta(seconds=4))
        ledger.mark_failed(row.id, "boom", now=T0 + timedelta(seconds=4), retry_at=None)
        [row] = ledger.deliveries()
        assert (row.status, row.attempts, row.failing_since) == ("failed", 4, T0)
    finally:
        ledger.close()


def test_config_errors_name_the_key() -> None:
    bad = {**CONFIG, "routes": [{"match": {}, "notify": ["nobody"]}]}
    with pytest.raises(ConfigError, match=r"routes.0: unknown contact 'nobody'"):
        config_from_mapping(bad)
    with pytest.raises(ConfigError, match="timezone"):
        config_from_mapping({**CONFIG, "timezone": "Mars/Olympus"})
    plain_auth = {**CONFIG, "smtp": {"host": "h", "starttls": False, "username": "u"}}
    with pytest.raises(ConfigError, match="refusing to send a password"):
        config_from_mapping(plain_auth)


_SECRET_CONFIG = """\
smtp:
  host: smtp.example.city
  username: climastream
  password_file: smtp-password
webhooks:
  - name: chat
    url: https://chat.example.city/hook
    secret: "${CHAT_SECRET}"
contacts:
  duty: {email: duty@example.city, webhook: chat}
routes:
  - notify: [duty]
"""


def test_secrets_come_from_a_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sinks.notify.config import load_config

    (tmp_path / "smtp-password").write_text("pa55 word\n")
    (tmp_path / "alerting.yaml").write_text(_SECRET_CONFIG)
    monkeypatch.setenv("CHAT_SECRET", "hmac-key")
    config = load_config(tmp_path / "alerting.yaml")
    assert config.smtp is not None
    assert config.smtp.password is not None
    assert config.smtp.password.get_secret_value() == "pa55 word"  # one newline dropped
    assert config.webhooks[0].secret.get_secret_value() == "hmac-key"
    assert "pa55" not in repr(config)
    assert "hmac-key" not in repr(config)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # an unset variable is an error at its key, never an empty HMAC key
        (
            lambda text: text,
            r"webhooks\.0\.secret: environment variable CHAT_SECRET is not "
            r"set \(line 8\)",
        ),
        (
            lambda text: text.replace("smtp-password", "missing"),
            r"smtp\.password_file: cannot read secret file: No such file or directory \(line 4\)",
        ),
        (
            lambda text: text.replace("  username: climastream\n", "  password: x\n"),
            r"smtp\.password_file: give either password or password_file",
        ),
    ],
)
def test_a_secret_that_cannot_be_read_is_named_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[str], str], message: str
) -> None:
    from sinks.notify.config import load_config

    monkeypatch.delenv("CHAT_SECRET", raising=False)
    if "CHAT_SECRET" not in message:
        monkeypatch.setenv("CHAT_SECRET", "hmac-key")
    (tmp_path / "smtp-password").write_text("pa55 word\n")
    (tmp_path / "alerting.yaml").write_text(edit(_SECRET_CONFIG))
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(tmp_path / "alerting.yaml")
    assert str(tmp_path / "alerting.yaml") in str(caught.value)
    assert "pa55" not in str(caught.value)
    assert "hmac-key" not in str(caught.value)


def test_an_error_beside_secrets_from_files_never_shows_them(tmp_path: Path) -> None:
    from sinks.notify.config import load_config

    (tmp_path / "smtp-password").write_text("pa55 word\n")
    text = _SECRET_CONFIG.replace('secret: "${CHAT_SECRET}"', "secret_file: smtp-password")
    # the smtp block without TLS refuses to send the password it read
    text = text.replace("  username: climastream\n", "  username: climastream\n  starttls: false\n")
    (tmp_path / "alerting.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"refusing to send a password") as caught:
        load_config(tmp_path / "alerting.yaml")
    assert "pa55" not in str(caught.value)


def test_message_carries_evidence_and_links() -> None:
    from zoneinfo import ZoneInfo

    note = render(
        alert(),
        Kind.FIRING,
        console_url="https://city.test/console/",
        zone=ZoneInfo("Europe/Brussels"),
    )
    assert note.subject == "[Warning] Night-time heat island in centre: 3.4°C above the reference"
    text = note.text
    assert "Where:      zone centre, device th-centre-1, gateway gw-1" in text
    assert "Value:      3.4 °C (alert level 3 °C)" in text
    assert "Since:      2025-07-01 14:00 CEST (12:00 UTC)" in text
    assert "Data:       92% of expected readings arrived" in text
    assert "  14:00:00  3.4 °C" in text
    assert "https://city.test/console/alerts/00112233aabbccdd?action=acknowledge" in text
    assert "openstreetmap.org/?mlat=50.84670&mlon=4.35250" in text
    # an anomaly alert's value is a model score; its evidence are readings with units
    anomaly = alert().model_copy(
        update={
            "unit": "1",
            "value": 0.95,
            "evidence": (
                EvidencePoint(time=T0, value=21.5, device_id="th-1", quantity=Quantity.TEMPERATURE),
            ),
        }
    )
    text = render(anomaly, Kind.FIRING, console_url="https://c/", zone=ZoneInfo("UTC")).text
    assert "Value:      0.95 (alert level 3)" in text
    assert "  12:00:00  21.5 °C  th-1" in text


async def test_email_over_starttls_with_auth_reaches_a_real_smtp_server(tmp_path: Path) -> None:
    server = RecordingSmtpServer(tmp_path).start()
    try:
        config = config_from_mapping(
            {
                **CONFIG,
                "smtp": {
                    "host": "127.0.0.1",
                    "port": server.port,
                    "username": server.username,
                    "password": server.password,
                    "from": "alerts@city.test",
                    "ca_file": str(server.cert),
                },
            }
        )
        assert config.smtp is not None
        from zoneinfo import ZoneInfo

        note = render(alert(), Kind.FIRING, console_url="https://c", zone=ZoneInfo("UTC"))
        await EmailChannel(config.smtp).send(note, "climate@city.test", "7-abc")
        [mail] = server.received()
        assert mail.recipients == ("climate@city.test",)
        assert mail.subject == note.subject
        assert mail.fingerprint == "00112233aabbccdd"
        assert "Latest values:" in mail.body
        # a wrong password is refused by the server and is not retriable
        wrong = config.smtp.model_copy(update={"password": SecretStr("not-the-password")})
        with pytest.raises(DeliveryError) as info:
            await EmailChannel(wrong).send(note, "climate@city.test", "8-abc")
        assert not info.value.retriable
        assert server.auth_failures >= 1  # smtplib tries PLAIN, then LOGIN
        # an untrusted certificate fails (never silently sends in clear text)
        untrusted = config.smtp.model_copy(update={"ca_file": None})
        with pytest.raises(DeliveryError, match="SSL"):
            await EmailChannel(untrusted).send(note, "climate@city.test", "9-abc")
        assert len(server.received()) == 1
    finally:
        server.stop()


def smtp_config(server: RecordingSmtpServer) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "username": server.username,
        "password": server.password,
        "from": "alerts@city.test",
        "ca_file": str(server.cert),
    }


async def test_a_message_accepted_before_a_failed_quit_is_sent_once(
    tmp_path: Path, ledger_at: Callable[[Path], Ledger]
) -> None:
    # 250 after DATA: the server has taken the message (RFC 5321 4.1.1.4); a 421 to QUIT
    # must not turn that into a retriable failure that sends it again and again
    server = RecordingSmtpServer(tmp_path, quit_reply="421 4.3.2 shutting down").start()
    try:
        config = config_from_mapping(
            {
                "smtp": smtp_config(server),
                "contacts": {"ops": {"email": "ops@city.test"}},
                "routes": [{"match": {}, "notify": ["ops"]}],
            }
        )
        clock = Clock()
        n = Notifier(config, ledger_at(tmp_path / "l.db"), clock=clock)
        n.handle(alert())
        for _ in range(4):
            await run_due(n)
            clock.now += timedelta(minutes=2)
        assert [m.recipients for m in server.received()] == [("ops@city.test",)]
        [row] = n.ledger.deliveries()
        assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)
        # and so the resolution goes out too
        n.handle(alert(AlertState.RESOLVED))
        await run_due(n)
        assert [m.kind for m in server.received()] == ["firing", "resolved"]
        await n.close()
    finally:
        server.stop()


async def test_smtp_4xx_refusals_are_retried_and_5xx_ones_are_not(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    # greylisting (RFC 5321 4.2.1) and a temporary auth failure are transient
    server = RecordingSmtpServer(tmp_path, rcpt_reply="451 4.7.1 Greylisted, try later").start()
    try:
        config = config_from_mapping({**CONFIG, "smtp": smtp_config(server)})
        assert config.smtp is not None
        channel = EmailChannel(config.smtp)
        note = render(alert(), Kind.FIRING, console_url="https://c", zone=ZoneInfo("UTC"))
        with pytest.raises(DeliveryError, match=r"climate@city\.test.*451") as info:
            await channel.send(note, "climate@city.test", "1-abc")
        assert info.value.retriable
        server.rcpt_reply = "550 5.1.1 No such user"
        with pytest.raises(DeliveryError, match=r"climate@city\.test.*550") as info:
            await channel.send(note, "climate@city.test", "2-abc")
        assert not info.value.retriable
        server.rcpt_reply = None
        server.auth_reply = "454 4.7.0 Temporary authentication failure"
        with pytest.raises(DeliveryError, match="454") as info:
            await channel.send(note, "climate@city.test", "3-abc")
        assert info.value.retriable
        server.auth_reply = "535 5.7.8 Authentication credentials invalid"
        with pytest.raises(DeliveryError, match="535") as info:
            await channel.send(note, "climate@city.test", "4-abc")
        assert not info.value.retriable
        assert server.received() == []
        server.auth_reply = None
        await channel.send(note, "climate@city.test", "5-abc")
        assert len(server.received()) == 1
    finally:
        server.stop()


async def test_webhook_is_signed_and_http_errors_are_classified() -> None:
    from zoneinfo import ZoneInfo

    from sinks.notify.config import WebhookConfig

    receiver = RecordingWebhookServer("s3cret").start()
    try:
        hook = WebhookConfig(name="chat", url=f"{receiver.url}/hook", secret=SecretStr("s3cret"))
        channel = WebhookChannel({"chat": hook}, clock=lambda: 1_700_000_000)
        note = render(alert(), Kind.FIRING, console_url="https://c", zone=ZoneInfo("UTC"))
        await channel.send(note, "chat", "1-abc")
        [hit] = receiver.received()
        assert hit.signature_ok
        assert hit.headers["X-Climastream-Timestamp"] == "1700000000"
        assert hit.headers["X-Climastream-Signature"] == sign(b"s3cret", "1700000000", hit.body)
        assert (hit.json["kind"], hit.json["alert"]["zone"]) == ("firing", "centre")
        wrong = WebhookChannel({"chat": hook.model_copy(update={"secret": SecretStr("nope")})})
        with pytest.raises(DeliveryError) as info:
            await wrong.send(note, "chat", "2-abc")  # receiver answers 401
        assert not info.value.retriable
        receiver.status = 503
        with pytest.raises(DeliveryError) as info:
            await channel.send(note, "chat", "3-abc")
        assert info.value.retriable
        await channel.close()
        await wrong.close()
    finally:
        receiver.stop()


async def test_a_redirect_is_a_failed_delivery_that_names_where_it_points() -> None:
    # following a 301/302 turns the POST into a GET without the body, whose 200 would
    # record an alert the chat never got as sent
    from zoneinfo import ZoneInfo

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from sinks.notify.config import AlertmanagerConfig, WebhookConfig

    seen: list[tuple[str, str]] = []

    async def moved(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        location = "/new-hook" if request.path == "/hook" else "https://am.city.test/"
        status = 302 if request.path == "/hook" else 301
        return web.Response(status=status, headers={"Location": location})

    async def landing(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/hook", moved)
    app.router.add_route("*", "/api/v2/alerts", moved)
    app.router.add_route("*", "/new-hook", landing)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url(""))
        note = render(alert(), Kind.FIRING, console_url="https://c", zone=ZoneInfo("UTC"))
        hook = WebhookConfig(name="chat", url=f"{url}/hook", secret=SecretStr("k"))
        webhook = WebhookChannel({"chat": hook})
        with pytest.raises(DeliveryError, match=r"http 302 .*'/new-hook'.*URL") as info:
            await webhook.send(note, "chat", "1-abc")
        assert not info.value.retriable
        manager = AlertmanagerChannel(AlertmanagerConfig(url=url))
        with pytest.raises(DeliveryError, match=r"http 301 .*'https://am\.city\.test/'") as info:
            await manager.send(note, "alertmanager", "2-abc")
        assert not info.value.retriable
        assert seen == [("POST", "/hook"), ("POST", "/api/v2/alerts")]
        await webhook.close()
        await manager.close()


def test_alertmanager_body_follows_the_v2_api() -> None:
    from zoneinfo import ZoneInfo

    resolved = alert(AlertState.RESOLVED)
    note = render(resolved, Kind.RESOLVED, console_url="https://c", zone=ZoneInfo("UTC"))
    [item] = AlertmanagerChannel.body(note)
    assert item["labels"]["alertname"] == "uhi-night"
    assert item["labels"]["fingerprint"] == "00112233aabbccdd"
    assert item["labels"]["zone"] == "centre"
    assert item["startsAt"] == "2025-07-01T12:00:00+00:00"
    assert item["endsAt"] == "2025-07-01T12:00:00+00:00"
    assert item["generatorURL"] == "https://c/alerts/00112233aabbccdd"
    assert orjson.loads(orjson.dumps([item]))  # JSON-serialisable as sent


async def test_alertmanager_channel_posts_to_the_v2_endpoint() -> None:
    from zoneinfo import ZoneInfo

    from sinks.notify.config import AlertmanagerConfig

    receiver = RecordingWebhookServer("unused", verify=False).start()
    try:
        channel = AlertmanagerChannel(AlertmanagerConfig(url=receiver.url + "/"))
        note = render(alert(), Kind.FIRING, console_url="https://c", zone=ZoneInfo("UTC"))
        await channel.send(note, "alertmanager", "1-abc")
        [hit] = receiver.received()
        assert hit.path == "/api/v2/alerts"
        assert hit.json == AlertmanagerChannel.body(note)
        assert "endsAt" not in hit.json[0]
        await channel.close()
    finally:
        receiver.stop()
