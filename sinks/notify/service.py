"""The notifier: ``alerts`` topic -> routing -> ledger -> channels, with escalation.

Flow per alert record: route it (zone, severity, team), plan one delivery row per
recipient in the :class:`~sinks.notify.ledger.Ledger` (idempotent), commit the Kafka
offset, then a delivery loop sends due rows with retries and exponential backoff. Rows
for non-critical alerts that arrive in quiet hours wait until the quiet hours end, and are
cancelled if the alert resolves first (quiet hours are per route). An incident that is
still unacknowledged ``escalate.after`` its first notification (after quiet hours, or
after a silence ended) is sent to the route's escalation contacts, once (the ledger
remembers, across restarts). An incident unsilenced while still firing is sent to whoever
was not told yet.

What staff receive per incident: one firing message per recipient, at most one escalation,
one resolution to everyone who got the firing message. PENDING records are never sent.
A firing (or escalation) message still being sent when its incident resolves counts as
received: the resolution to that recipient waits until the attempt settles, then goes
after it; if the attempt fails, the message is not retried but cancelled (the incident is
over), and so is that recipient's resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from climastream.contract import (
    Alert,
    AlertSeverity,
    AlertState,
    ContractError,
    Topics,
    decode,
    encode,
)
from climastream.extras import require
from climastream.kafkasec import KafkaSecurity
from climastream.shutdown import stop_on_signals
from climastream.topics import KafkaUnreachable, start_client
from sinks.notify.channels import (
    AlertmanagerChannel,
    Channel,
    DeliveryError,
    EmailChannel,
    WebhookChannel,
)
from sinks.notify.config import Escalation, NotifyConfig, Route
from sinks.notify.ledger import DEFERRED, PENDING, SENT, Delivery, Ledger
from sinks.notify.message import Kind, render

log = logging.getLogger(__name__)

__all__ = ["Notifier", "NotifierMetrics", "run_notifier"]

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class NotifierMetrics:
    """Prometheus metrics, created once per process (tests build several notifiers)."""

    _instance: NotifierMetrics | None = None

    def __init__(self) -> None:
        prometheus = require("prometheus_client", "sinks")
        self.received = prometheus.Counter(
            "climastream_notify_alerts_total", "alert records consumed", ["state"]
        )
        self.deliveries = prometheus.Counter(
            "climastream_notify_deliveries_total",
            "delivery attempts by channel and outcome (sent, retry, failed)",
            ["channel", "outcome"],
        )
        self.escalations = prometheus.Counter(
            "climastream_notify_escalations_total", "incidents escalated"
        )
        self.unrouted = prometheus.Counter(
            "climastream_notify_unrouted_total", "alerts that matched no route"
        )
        self.rejected = prometheus.Counter(
            "climastream_notify_rejected_total", "alert records that failed the contract"
        )
        self.seconds = prometheus.Histogram(
            "climastream_notify_delivery_seconds", "time to deliver one message", ["channel"]
        )

    @classmethod
    def get(cls) -> NotifierMetrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def quiet_until(config: NotifyConfig, now: datetime) -> datetime | None:
    """End of the quiet period ``now`` falls in (UTC), or None outside quiet hours."""
    quiet = config.quiet_hours
    if quiet is None or quiet.start == quiet.end:
        return None
    local = now.astimezone(config.zone)
    t = local.time().replace(tzinfo=None)
    overnight = quiet.start > quiet.end
    inside = (t >= quiet.start or t < quiet.end) if overnight else quiet.start <= t < quiet.end
    if not inside:
        return None
    end_day = local.date() + timedelta(days=1) if overnight and t >= quiet.start else local.date()
    end = datetime.combine(end_day, quiet.end, tzinfo=config.zone)
    return end.astimezone(UTC)


def _escalation(routes: list[Route]) -> Escalation | None:
    """The escalation of the first matched route that has one."""
    return next((r.escalate for r in routes if r.escalate), None)


def _format_delta(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


class Notifier:
    """Routing, planning and delivery; Kafka-free so it can be driven directly in tests."""

    def __init__(
        self,
        config: NotifyConfig,
        ledger: Ledger,
        channels: dict[str, Channel] | None = None,
        clock: Clock = _utc_now,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.channels: dict[str, Channel] = channels if channels is not None else {}
        if channels is None:
            if config.smtp:
                self.channels["email"] = EmailChannel(config.smtp)
            if config.webhooks:
                self.channels["webhook"] = WebhookChannel({w.name: w for w in config.webhooks})
            if config.alertmanager:
                self.channels["alertmanager"] = AlertmanagerChannel(config.alertmanager)
        self.metrics = NotifierMetrics.get()
        self.wake = asyncio.Event()
        #: deliveries being sent, by id
        self._in_flight: dict[int, Delivery] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ planning

    def _recipients(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name in names:
            contact = self.config.contacts[name]
            if contact.email:
                out.append(("email", contact.email))
            if contact.webhook:
                out.append(("webhook", contact.webhook))
        return list(dict.fromkeys(out))

    def _route_due(self, alert: Alert, route: Route, now: datetime) -> datetime:
        """When this route's messages about ``alert`` may go out (quiet hours hold
        non-critical ones, per route: ``quiet_hours: false`` routes are never held)."""
        if alert.severity is AlertSeverity.CRITICAL or not route.quiet_hours:
            return now
        return quiet_until(self.config, now) or now

    def _dues(
        self, alert: Alert, routes: list[Route], now: datetime, *, escalation: bool = False
    ) -> dict[tuple[str, str], datetime]:
        """Recipient -> earliest due time over the routes that name it (``notify``, and
        ``escalate.to`` too when ``escalation``)."""
        dues: dict[tuple[str, str], datetime] = {}
        for route in routes:
            names = route.notify
            if escalation and route.escalate:
                names = (*names, *route.escalate.to)
            due = self._route_due(alert, route, now)
            for target in self._recipients(names):
                dues[target] = min(due, dues.get(target, due))
        return dues

    def _plan_firing(
        self, alert: Alert, routes: list[Route], incident: str, now: datetime
    ) -> tuple[int, datetime | None]:
        """Plan (or revive, after an unsilence) the firing messages of an incident.

        Returns how many are new and when the first person is told (None: nobody).
        """
        planned = 0
        first: datetime | None = None
        targets = self._dues(alert, routes, now)
        if "alertmanager" in self.channels:
            targets["alertmanager", "alertmanager"] = now  # never held by quiet hours
        for (channel, recipient), due in targets.items():
            if channel != "alertmanager":
                first = due if first is None else min(first, due)
            planned += self.ledger.plan(
                alert.fingerprint,
                incident,
                Kind.FIRING,
                channel,
                recipient,
                now=now,
                due_at=due,
                revive=True,
            )
        if planned:
            self.wake.set()
        return planned, first

    def handle(self, alert: Alert) -> int:
        """Plan the deliveries one alert state change calls for; returns how many are new."""
        self.metrics.received.labels(alert.state.value).inc()
        if alert.state is AlertState.PENDING:
            return 0
        now = self.clock()
        incident = self.ledger.incident(alert.fingerprint)
        is_open = incident is not None and incident.closed_at is None
        raw = encode(alert)
        if alert.state is AlertState.RESOLVED:
            if incident is None or not is_open:
                return 0
            self.ledger.update_incident(alert.fingerprint, alert_json=raw, closed_at=now)
            return self._plan_resolution(alert, incident.incident, incident.silenced, now)
        acked = alert.state is AlertState.ACKNOWLEDGED
        silenced = alert.state is AlertState.SILENCED
        routes = self.config.routes_for(alert)
        escalation = _escalation(routes)
        if incident is not None and is_open:
            self.ledger.update_incident(
                alert.fingerprint,
                alert_json=raw,
                acked=acked or incident.acked,
                silenced=silenced,
            )
            if silenced:
                self._cancel_unsent(alert.fingerprint, incident.incident)
                return 0
            if not incident.silenced or acked or incident.acked or not routes:
                return 0
            # unsilenced while still firing (by hand, or the silence ran out): whoever has
            # not been told yet is told now, and the escalation clock starts from then
            planned, first = self._plan_firing(alert, routes, incident.incident, now)
            if escalation and first is not None and incident.escalated_at is None:
                self.ledger.update_incident(alert.fingerprint, escalate_at=first + escalation.after)
            return planned
        if not routes:
            self.metrics.unrouted.inc()
            return 0
        key = alert.started_at.isoformat()
        self.ledger.open_incident(
            alert.fingerprint,
            key,
            now=now,
            severity=alert.severity.value,
            alert_json=raw,
            acked=acked,
            silenced=silenced,
            escalate_at=None,
        )
        if silenced:
            return 0
        planned, first = self._plan_firing(alert, routes, key, now)
        if escalation:
            # escalation counts from the first notification (after quiet hours, if held)
            self.ledger.update_incident(
                alert.fingerprint, escalate_at=(first or now) + escalation.after
            )
        return planned

    def _cancel_unsent(self, fingerprint: str, incident: str) -> None:
        for delivery in self.ledger.deliveries(fingerprint):
            if (
                delivery.incident == incident
                and delivery.status in (PENDING, DEFERRED)
                and delivery.id not in self._in_flight
            ):
                self.ledger.cancel(delivery.id)

    def _plan_resolution(self, alert: Alert, incident: str, silenced: bool, now: datetime) -> int:
        reached: list[tuple[str, str]] = []
        for delivery in self.ledger.deliveries(alert.fingerprint):
            if delivery.incident != incident or delivery.kind == Kind.RESOLVED:
                continue
            if delivery.status == SENT or delivery.id in self._in_flight:
                reached.append((delivery.channel, delivery.recipient))
        self._cancel_unsent(alert.fingerprint, incident)
        if silenced:
            return 0
        routes = self.config.routes_for(alert)
        dues = self._dues(alert, routes, now, escalation=True)
        planned = 0
        for channel, recipient in dict.fromkeys(reached):
            planned += self.ledger.plan(
                alert.fingerprint,
                incident,
                Kind.RESOLVED,
                channel,
                recipient,
                now=now,
                due_at=dues.get((channel, recipient), now),
            )
        if planned:
            self.wake.set()
        return planned

    def escalate(self) -> int:
        """Plan escalations that are due; each incident escalates at most once."""
        now = self.clock()
        planned = 0
        for incident in self.ledger.due_escalations(now):
            alert = decode(incident.alert_json, Alert)
            routes = self.config.routes_for(alert)
            targets: list[tuple[str, str]] = []
            for route in routes:
                if route.escalate:
                    targets += self._recipients(route.escalate.to)
            for channel, recipient in dict.fromkeys(targets):
                planned += self.ledger.plan(
                    alert.fingerprint,
                    incident.incident,
                    Kind.ESCALATION,
                    channel,
                    recipient,
                    now=now,
                    due_at=now,
                )
            self.ledger.update_incident(alert.fingerprint, escalated_at=now)
            self.metrics.escalations.inc()
        if planned:
            self.wake.set()
        return planned

    # ------------------------------------------------------------------ delivery

    def _backoff(self, attempts: int) -> timedelta:
        """``initial`` doubled per failed attempt after the first, at most ``maximum``
        (doubled step by step: ``initial * 2 ** attempts`` overflows timedelta once a long
        outage has run up a few dozen attempts)."""
        retry = self.config.retry
        delay = retry.initial
        for _ in range(attempts - 1):
            if delay >= retry.maximum:
                break
            delay *= 2
        return min(delay, retry.maximum)

    def _retry_at(self, delivery: Delivery, attempts: int, now: datetime) -> datetime | None:
        """When to try a delivery again after its ``attempts``-th attempt failed at ``now``,
        or None to give up: ``retry.give_up_after`` since its first failure has passed (the
        last try is at that deadline), or ``retry.attempts`` tries were made."""
        retry = self.config.retry
        if retry.attempts is not None and attempts >= retry.attempts:
            return None
        deadline = (delivery.failing_since or now) + retry.give_up_after
        if now >= deadline:
            return None
        return min(now + self._backoff(attempts), deadline)

    def _notification(self, delivery: Delivery) -> Any:
        incident = self.ledger.incident(delivery.fingerprint)
        assert incident is not None
        alert = decode(incident.alert_json, Alert)
        after = None
        if delivery.kind == Kind.ESCALATION:
            escalation = _escalation(self.config.routes_for(alert))
            if escalation is not None:
                after = _format_delta(escalation.after)
        return render(
            alert,
            Kind(delivery.kind),
            console_url=self.config.console_url,
            zone=self.config.zone,
            escalated_after=after,
        )

    def _incident_over(self, delivery: Delivery) -> bool:
        """Whether the incident ``delivery`` is about has resolved (or a newer one replaced
        it): a firing or escalation message about it is no longer worth retrying."""
        incident = self.ledger.incident(delivery.fingerprint)
        return (
            incident is None
            or incident.incident != delivery.incident
            or incident.closed_at is not None
        )

    def _reached(self, delivery: Delivery) -> bool:
        """Whether the recipient of ``delivery`` got (or may be getting) a firing or
        escalation message about its incident, other than ``delivery`` itself."""
        key = (delivery.fingerprint, delivery.incident, delivery.channel, delivery.recipient)
        return any(
            (d.fingerprint, d.incident, d.channel, d.recipient) == key
            and d.id != delivery.id
            and d.kind != Kind.RESOLVED
            and (d.status == SENT or d.id in self._in_flight)
            for d in self.ledger.deliveries(delivery.fingerprint)
        )

    def _cancel_resolution(self, delivery: Delivery) -> None:
        """``delivery`` (a firing or escalation message) failed after its incident closed:
        its recipient was counted as told when the resolution was planned, so that
        resolution is cancelled unless the recipient was told by another message."""
        if self._reached(delivery):
            return
        for d in self.ledger.deliveries(delivery.fingerprint):
            if (
                d.kind == Kind.RESOLVED
                and (d.incident, d.channel, d.recipient)
                == (delivery.incident, delivery.channel, delivery.recipient)
                and d.id not in self._in_flight
            ):
                self.ledger.cancel(d.id)

    def _waits(self, delivery: Delivery) -> bool:
        """A resolution is not sent while a firing or escalation message to the same
        recipient about the same incident is in flight: it goes after that message once it
        is sent, and is cancelled if it fails (see :meth:`_deliver`)."""
        if delivery.kind != Kind.RESOLVED:
            return False
        key = (delivery.fingerprint, delivery.incident, delivery.channel, delivery.recipient)
        return any(
            d.kind != Kind.RESOLVED and (d.fingerprint, d.incident, d.channel, d.recipient) == key
            for d in self._in_flight.values()
        )

    async def _deliver(self, delivery: Delivery) -> None:
        channel = self.channels.get(delivery.channel)
        try:
            if channel is None:
                raise DeliveryError(
                    f"channel {delivery.channel!r} is not configured", retriable=False
                )
            notification = self._notification(delivery)
            started = asyncio.get_running_loop().time()
            await channel.send(
                notification, delivery.recipient, f"{delivery.id}-{delivery.fingerprint}"
            )
            self.metrics.seconds.labels(delivery.channel).observe(
                asyncio.get_running_loop().time() - started
            )
            self.ledger.mark_sent(delivery.id, self.clock())
            self.metrics.deliveries.labels(delivery.channel, "sent").inc()
        except DeliveryError as exc:
            now = self.clock()
            attempts = delivery.attempts + 1
            # a firing or escalation message whose incident resolved while it was being
            # sent is not retried: it would arrive after (or instead of) the resolution
            over = delivery.kind != Kind.RESOLVED and self._incident_over(delivery)
            retriable = exc.retriable and not over
            retry_at = self._retry_at(delivery, attempts, now) if retriable else None
            give_up = retry_at is None
            self.ledger.mark_failed(
                delivery.id, str(exc), now=now, retry_at=retry_at, cancel=over and exc.retriable
            )
            if over:
                self._cancel_resolution(delivery)
            outcome = "failed" if give_up else "retry"
            self.metrics.deliveries.labels(delivery.channel, outcome).inc()
            log.warning(
                "delivery failed id=%s channel=%s recipient=%s attempt=%s outcome=%s error=%s",
                delivery.id,
                delivery.channel,
                delivery.recipient,
                attempts,
                "cancelled (incident resolved)" if over else outcome,
                exc,
            )
        finally:
            self._in_flight.pop(delivery.id, None)
            if delivery.kind != Kind.RESOLVED:
                self.wake.set()  # a resolution may have been waiting for this message

    def start_due(self) -> int:
        """Start sending every due delivery not already in flight (bounded concurrency)."""
        room = self.config.concurrency - len(self._in_flight)
        started = 0
        if room <= 0:
            return 0
        # due rows skipped: those in flight, and at most one resolution waiting per each
        limit = room + 2 * len(self._in_flight)
        for delivery in self.ledger.due(self.clock(), limit=limit):
            if delivery.id in self._in_flight or self._waits(delivery):
                continue
            if started >= room:
                break
            self._in_flight[delivery.id] = delivery
            task = asyncio.create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    async def drain(self) -> None:
        """Wait for the deliveries in flight (for tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def deliver_loop(self, stop: asyncio.Event, poll_s: float = 0.5) -> None:
        while not stop.is_set():
            self.escalate()
            self.start_due()
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=poll_s)
        await self.drain()

    async def close(self) -> None:
        await self.drain()
        for channel in self.channels.values():
            await channel.close()


def _mark_ready(path: Path) -> None:
    path.write_text("ready\n")


async def consume(
    notifier: Notifier,
    bootstrap: str,
    group: str,
    stop: asyncio.Event,
    ready_file: Path | None = None,
    security: KafkaSecurity | None = None,
) -> None:
    """Consume ``alerts``: plan each record in the ledger, *then* commit its offset."""
    aiokafka = require("aiokafka", "sinks")
    since = notifier.ledger.since(notifier.clock())
    consumer = aiokafka.AIOKafkaConsumer(
        Topics.ALERTS.name,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        # alerts are rare and latency matters: do not let the broker hold a fetch long
        fetch_max_wait_ms=100,
        **(security or KafkaSecurity()).aiokafka_kwargs(),
    )
    await start_client(consumer, bootstrap, security)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            if ready_file is not None and consumer.assignment():
                _mark_ready(ready_file)
                ready_file = None
            for records in batches.values():
                for record in records:
                    if record.timestamp / 1000.0 < since.timestamp():
                        continue  # history from before this notifier first started
                    try:
                        alert = decode(record.value, Alert)
                    except ContractError:
                        notifier.metrics.rejected.inc()
                        continue
                    notifier.handle(alert)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()


def run_notifier(
    config: NotifyConfig,
    *,
    bootstrap: str,
    security: KafkaSecurity | None = None,
    group: str,
    ledger_path: Path | None,
    metrics_port: int | None,
    metrics_host: str,
    ready_file: Path | None,
) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (1, after one line on stderr,
    when no Kafka bootstrap server answers at start)."""

    if ready_file:
        ready_file.unlink(missing_ok=True)

    async def main() -> int:
        ledger = Ledger(ledger_path or config.ledger)
        notifier = Notifier(config, ledger)
        if metrics_port:
            require("prometheus_client", "sinks").start_http_server(metrics_port, addr=metrics_host)
        stop = stop_on_signals()
        delivering = asyncio.create_task(notifier.deliver_loop(stop))
        try:
            await consume(notifier, bootstrap, group, stop, ready_file, security)
        finally:
            stop.set()
            await delivering
            await notifier.close()
            ledger.close()
        return 0

    try:
        return asyncio.run(main())
    except KafkaUnreachable as exc:
        print(f"alerts notify: {exc}", file=sys.stderr)
        return 1
