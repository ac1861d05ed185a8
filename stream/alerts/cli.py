"""``climastream alerts``: the engine, the notifier, and what staff do with alerts.

- ``engine``  run the Faust alert engine (rules -> ``alerts`` topic);
- ``notify``  run the notifier (``alerts`` topic -> e-mail, webhook, Alertmanager);
- ``list``    current alerts, read from the ``alerts`` topic (latest state per fingerprint);
- ``ack`` / ``silence`` / ``unsilence``  publish an AlertAction (the engine applies it);
- ``rules --check FILE``  validate a rules file without starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from climastream import kafkasec
from climastream.cli import add_metrics_host
from climastream.kafkasec import KafkaSecurity
from climastream.topics import quiet_client_logs

ACTIVE_STATES = ("pending", "firing", "acknowledged", "silenced")


def _kafka(args: argparse.Namespace) -> str:
    # the same default as every other command (the local stack's port was the default here,
    # so `alerts ack` went to another broker than an `alerts engine` started without --kafka)
    return str(args.kafka or os.environ.get("CLIMASTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "alerts",
        help="alert engine, notifier, and list/ack/silence alerts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="alerts_action", metavar="ACTION", required=True)

    def kafka_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--kafka",
            metavar="HOST:PORT",
            help="bootstrap servers (default: env CLIMASTREAM_KAFKA_BOOTSTRAP, else "
            "127.0.0.1:9092)",
        )
        kafkasec.add_arguments(p)

    engine = actions.add_parser(
        "engine",
        help="run the alert engine (Faust worker) until SIGTERM",
        description="Evaluate alert rules on kpi, readings, gateway-status and alert-actions; "
        "publish every state change to 'alerts'. Needs: pip install 'climastream[stream]'.",
    )
    kafka_arg(engine)
    engine.add_argument("--rules", type=Path, help="rules YAML (default: shipped defaults)")
    engine.add_argument("--app-id", help="Faust app id (env CLIMASTREAM_ALERTS_APP_ID)")
    engine.add_argument("--data-dir", default=".faust-alerts", help="Faust data directory")
    engine.add_argument("--tick", type=float, default=1.0, help="timer interval in seconds")
    engine.add_argument(
        "--catch-up",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on the first start, also evaluate records up to this old (default 0)",
    )
    engine.add_argument("--ready-file", type=Path, help="written once the engine is evaluating")
    engine.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    add_metrics_host(engine)
    engine.add_argument("--loglevel", default="info")
    engine.set_defaults(func=_engine)

    notify = actions.add_parser(
        "notify",
        help="run the notifier: route alerts to e-mail, webhooks and Alertmanager",
        description="Consume 'alerts', route by zone/severity/team, deliver with retries, "
        "escalate unacknowledged alerts. Needs: pip install 'climastream[sinks]'.",
    )
    kafka_arg(notify)
    notify.add_argument("--config", type=Path, required=True, help="alerting.yaml")
    notify.add_argument("--ledger", type=Path, help="SQLite ledger (default from config)")
    notify.add_argument("--group", default="climastream-notify", help="Kafka consumer group")
    notify.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    add_metrics_host(notify)
    notify.add_argument("--ready-file", type=Path, help="written once the notifier consumes")
    notify.set_defaults(func=_notify)

    listing = actions.add_parser("list", help="current alerts (latest state per fingerprint)")
    kafka_arg(listing)
    listing.add_argument("--all", action="store_true", help="include resolved alerts")
    listing.add_argument("--json", action="store_true", help="one JSON Alert per line")
    listing.set_defaults(func=_list)

    for name, text in (
        ("ack", "acknowledge an alert: you are on it (stops escalation)"),
        ("silence", "silence an alert: no more notifications until it resolves or --for ends"),
        ("unsilence", "lift a silence"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        kafka_arg(action)
        action.add_argument("fingerprint", help="the alert's fingerprint (see 'alerts list')")
        action.add_argument(
            "--actor",
            default=os.environ.get("USER", "operator"),
            help="who you are (default $USER)",
        )
        action.add_argument("--comment", default="", help="a short note kept with the action")
        if name == "silence":
            action.add_argument(
                "--for", dest="duration", help="how long, e.g. 2h or 30m (default: until resolved)"
            )
        action.set_defaults(func=_action, kind=name)

    history = actions.add_parser(
        "history",
        help="one alert's state changes and every delivery attempt",
        description="State changes from the 'alerts' topic, and deliveries (status, "
        "attempts, first failure and next try of a failing one, last error) "
        "from the notifier's ledger.",
    )
    kafka_arg(history)
    history.add_argument("fingerprint")
    history.add_argument("--ledger", type=Path, help="the notifier's SQLite ledger")
    history.set_defaults(func=_history)

    rules = actions.add_parser("rules", help="validate or show a rules file")
    rules.add_argument("--check", type=Path, metavar="FILE", help="rules YAML to validate")
    rules.set_defaults(func=_rules)


def _engine(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from climastream.topics import DurabilityError
    from stream.alerts.app import AlertsSettings, create_app, ensure_changelog_topics
    from stream.alerts.rules import RulesError, load_rules
    from stream.app import SessionTimeoutError

    try:
        settings = AlertsSettings.from_env(kafkasec.from_args(args))
    except (DurabilityError, SessionTimeoutError, kafkasec.KafkaSecurityError) as exc:
        print(f"alerts engine: {exc}", file=sys.stderr)
        return 2
    settings = replace(
        settings,
        bootstrap_servers=args.kafka or settings.bootstrap_servers,
        app_id=args.app_id or settings.app_id,
        rules_path=args.rules or settings.rules_path,
        data_dir=args.data_dir,
        tick_interval_s=args.tick,
        catch_up_s=args.catch_up,
        ready_file=args.ready_file,
        metrics_port=args.metrics_port,
    )
    try:
        rules = load_rules(settings.rules_path)
    except RulesError as exc:
        print(f"alerts engine: {exc}", file=sys.stderr)
        return 2
    if settings.ready_file:
        settings.ready_file.unlink(missing_ok=True)
    from stream.app import KafkaUnreachable

    try:
        asyncio.run(ensure_changelog_topics(settings))
    except KafkaUnreachable as exc:
        print(f"alerts engine: {exc}", file=sys.stderr)
        return 1
    if settings.metrics_port:
        import prometheus_client

        prometheus_client.start_http_server(settings.metrics_port, addr=args.metrics_host)
    app = create_app(settings, rules)
    from stream.app import create_worker

    # no Faust spinner: it would set the root logger to DEBUG (see create_worker)
    create_worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


def _notify(args: argparse.Namespace) -> int:
    from sinks.notify.config import ConfigError, load_config
    from sinks.notify.service import run_notifier

    try:
        config = load_config(args.config)
        security = kafkasec.from_args(args)
    except (ConfigError, kafkasec.KafkaSecurityError) as exc:
        print(f"alerts notify: {exc}", file=sys.stderr)
        return 2
    return run_notifier(
        config,
        bootstrap=_kafka(args),
        security=security,
        group=args.group,
        ledger_path=args.ledger,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        ready_file=args.ready_file,
    )


class KafkaUnreachable(RuntimeError):
    """No bootstrap server answered; the message says where it looked and what to set."""


async def _start(client: Any, bootstrap: str, security: KafkaSecurity | None = None) -> None:
    """Start an aiokafka client, or raise :class:`KafkaUnreachable` (closed, no traceback)."""
    from aiokafka.errors import KafkaConnectionError

    from climastream.topics import unreachable

    try:
        await client.start()
    except KafkaConnectionError:
        with contextlib.suppress(Exception):
            await client.stop()
        raise KafkaUnreachable(unreachable(bootstrap, security)) from None


async def read_alerts(
    bootstrap: str,
    timeout_s: float = 10.0,
    *,
    history: list[Any] | None = None,
    security: KafkaSecurity | None = None,
) -> dict[str, Any]:
    """Latest :class:`Alert` per fingerprint on the ``alerts`` topic (compacted by key).

    ``history``, if given, receives every record in topic order. ``security``: TLS and
    SASL (default PLAINTEXT).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from climastream.contract import Alert, ContractError, Topics, decode

    security = security or KafkaSecurity()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **security.aiokafka_kwargs()
    )
    await _start(consumer, bootstrap, security)
    latest: dict[str, Alert] = {}
    try:
        await consumer.topics()
        parts = consumer.partitions_for_topic(Topics.ALERTS.name) or set()
        partitions = [TopicPartition(Topics.ALERTS.name, p) for p in parts]
        if not partitions:
            return latest
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("reading the alerts topic took too long")
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    try:
                        alert = decode(record.value, Alert)
                    except ContractError:
                        continue
                    latest[alert.fingerprint] = alert
                    if history is not None:
                        history.append(alert)
        return latest
    finally:
        await consumer.stop()


def _list(args: argparse.Namespace) -> int:
    quiet_client_logs()
    from climastream.contract import encode

    try:
        security = kafkasec.from_args(args)
        alerts = asyncio.run(read_alerts(_kafka(args), security=security))
    except (KafkaUnreachable, kafkasec.KafkaSecurityError) as exc:
        print(f"alerts list: {exc}", file=sys.stderr)
        return 2
    shown = [
        a for a in alerts.values() if args.all or a.state.value in ACTIVE_STATES
    ]  # fmt: skip
    shown.sort(key=lambda a: (a.severity.value != "critical", a.started_at))
    if args.json:
        for alert in shown:
            sys.stdout.write(encode(alert).decode() + "\n")
        return 0
    if not shown:
        print("no active alerts" if not args.all else "no alerts")
        return 0
    print(f"{'FINGERPRINT':16}  {'STATE':12}  {'SEVERITY':8}  {'SINCE (UTC)':16}  SUMMARY")
    for alert in shown:
        since = alert.started_at.strftime("%Y-%m-%d %H:%M")
        print(
            f"{alert.fingerprint:16}  {alert.state.value:12}  {alert.severity.value:8}  "
            f"{since:16}  {alert.summary}"
        )
    return 0


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")


def parse_for(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"--for {text!r}: use a number with s, m, h or d (e.g. 2h)")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return timedelta(seconds=float(match.group(1)) * unit)


async def send_action(bootstrap: str, action: Any, security: KafkaSecurity | None = None) -> None:
    """Publish one AlertAction on ``alert-actions`` (what the console calls too)."""
    from aiokafka import AIOKafkaProducer

    from climastream.contract import Topics, encode

    security = security or KafkaSecurity()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", **security.aiokafka_kwargs()
    )
    await _start(producer, bootstrap, security)
    try:
        await producer.send_and_wait(Topics.ALERT_ACTIONS.name, encode(action), key=action.key)
    finally:
        await producer.stop()


_FINGERPRINT = re.compile(r"^[0-9a-f]{8,64}$")


def fingerprint_form(given: str) -> str:
    """``given`` in lower case if it can be (the start of) a fingerprint, else ValueError."""
    text = given.strip().lower()
    if not _FINGERPRINT.match(text):
        raise ValueError(
            f"{given!r} is not an alert fingerprint: 8 to 64 hex digits, as "
            "'climastream alerts list' shows them"
        )
    return text


class AmbiguousFingerprint(ValueError):
    """The start of a fingerprint that several alerts' fingerprints start with."""


def resolve_fingerprint(given: str, known: Iterable[str]) -> str:
    """The fingerprint on the ``alerts`` topic that ``given`` names: itself, or the one it
    is a prefix of (``tail --alerts`` shows 12 digits). ValueError saying what is wrong
    otherwise: the engine ignores an action for a fingerprint it does not know, so sending
    one would report success for nothing."""
    text = fingerprint_form(given)
    known = set(known)
    if text in known:
        return text
    matches = sorted(f for f in known if f.startswith(text))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousFingerprint(f"{given} is the start of several alerts: {', '.join(matches)}")
    raise ValueError(
        f"no alert {given} on the alerts topic ('climastream alerts list --all' lists "
        "them); nothing sent"
    )


def _action(args: argparse.Namespace) -> int:
    quiet_client_logs()
    from climastream.contract import MAX_SILENCE, AlertAction, AlertActionKind, ContractError

    kind = {
        "ack": AlertActionKind.ACKNOWLEDGE,
        "silence": AlertActionKind.SILENCE,
        "unsilence": AlertActionKind.UNSILENCE,
    }[args.kind]
    now = datetime.now(UTC)
    try:
        until = None
        if getattr(args, "duration", None):
            lasts = parse_for(args.duration)
            if not timedelta(0) < lasts <= MAX_SILENCE:
                raise ValueError(
                    f"--for {args.duration!r}: a silence lasts more than 0 s and at most "
                    f"{MAX_SILENCE.days} days"
                )
            until = now + lasts
        fingerprint_form(args.fingerprint)  # before asking Kafka
    except ValueError as exc:
        print(f"alerts {args.kind}: {exc}", file=sys.stderr)
        return 2
    try:  # a KafkaSecurityError is a ValueError
        security = kafkasec.from_args(args)
        alerts = asyncio.run(read_alerts(_kafka(args), security=security))
        fingerprint = resolve_fingerprint(args.fingerprint, alerts)
        action = AlertAction(
            fingerprint=fingerprint,
            action=kind,
            actor=args.actor,
            at=now,
            until=until,
            comment=args.comment,
        )
        asyncio.run(send_action(_kafka(args), action, security))
    except (KafkaUnreachable, ValueError, ContractError) as exc:
        print(f"alerts {args.kind}: {exc}", file=sys.stderr)
        return 2
    print(
        f"alerts {args.kind}: sent {kind.value} for {fingerprint} as {args.actor} "
        f"({alerts[fingerprint].summary}); the engine applies it, see 'alerts list'"
    )
    return 0


def _history(args: argparse.Namespace) -> int:
    quiet_client_logs()
    records: list[Any] = []
    try:
        security = kafkasec.from_args(args)
        asyncio.run(read_alerts(_kafka(args), history=records, security=security))
    except (KafkaUnreachable, kafkasec.KafkaSecurityError) as exc:
        print(f"alerts history: {exc}", file=sys.stderr)
        return 2
    # the forms ack and silence take: the 12 digits 'tail --alerts' shows, any case
    try:
        fingerprint = resolve_fingerprint(args.fingerprint, {a.fingerprint for a in records})
    except AmbiguousFingerprint as exc:
        print(f"alerts history: {exc}", file=sys.stderr)
        return 2
    except ValueError:  # none on the topic: the ledger may still have its deliveries
        fingerprint = args.fingerprint
    changes = [a for a in records if a.fingerprint == fingerprint]
    if not changes:
        print(f"no state changes for {fingerprint} on the alerts topic")
    for alert in changes:
        print(f"{alert.updated_at:%Y-%m-%d %H:%M:%S}Z  {alert.state.value:12}  {alert.summary}")
    if args.ledger:
        from sinks.notify.ledger import Ledger

        if not args.ledger.exists():
            print(f"alerts history: no ledger at {args.ledger}", file=sys.stderr)
            return 2
        ledger = Ledger(args.ledger)
        try:
            for d in ledger.deliveries(fingerprint):
                sent = f" sent {d.sent_at:%H:%M:%S}Z" if d.sent_at else ""
                failing = ""
                if d.failing_since:  # retried since then; given up a day later by default
                    failing = f" first failure {d.failing_since:%Y-%m-%d %H:%M:%S}Z"
                    if d.status == "pending":
                        failing += f", next try {d.due_at:%Y-%m-%d %H:%M:%S}Z"
                error = f" last error: {d.last_error}" if d.last_error else ""
                print(
                    f"  delivery {d.kind:10} {d.channel:12} {d.recipient:28} {d.status:9} "
                    f"attempts={d.attempts}{sent}{failing}{error}"
                )
        finally:
            ledger.close()
    return 0


def _rules(args: argparse.Namespace) -> int:
    from stream.alerts.rules import RulesError, load_rules

    try:
        rules = load_rules(args.check)
    except RulesError as exc:
        print(f"alerts rules: {exc}", file=sys.stderr)
        return 2
    for rule in rules.rules:
        state = "" if rule.enabled else " (disabled)"
        print(f"{rule.id:24} {rule.kind:16} {rule.severity.value:8} {rule.team or '-'}{state}")
    print(f"{len(rules.rules)} rules OK: {args.check or 'shipped defaults'}")
    return 0
