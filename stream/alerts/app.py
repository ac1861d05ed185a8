"""The alert engine as a Faust app (``climastream alerts engine``): Kafka in, alerts out.

Consumes ``kpi``, ``readings``, ``gateway-status`` and ``alert-actions``; feeds each record
to the pure :class:`~stream.alerts.engine.AlertEngine`; publishes every state change it
returns to ``alerts`` (key = fingerprint). A 1 s timer drives the time-based rules (stale
sensors, silent gateways, pending durations, silence expiry).

State lives in two Faust tables (``alerts-state`` and ``alerts-signals``) with changelog
topics, so a restarted worker recovers every alert's phase, acknowledgement, silence and
evidence before it processes anything. The tables have one partition and write their
changelog by key (``use_partitioner``): updates come from four topics with different
partition counts *and* from the timer, which Faust's default (changelog partition = source
partition) cannot express. Consequence: one engine worker is active at a time; a second
worker with the same app id is a hot standby that takes over on rebalance. Alert traffic
is small (the readings agent keeps only liveness and the quantities rules watch), so one
worker is ample.

Faust does not create topics here (``topic_allow_declare=False``, as in the KPI worker):
:func:`ensure_changelog_topics` creates the two changelog topics through the Kafka admin
API before the worker starts; the contract topics come from ``climastream stack up``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from climastream.contract import (
    Alert,
    AlertAction,
    ContractError,
    GatewayStatus,
    KpiValue,
    Topics,
    contract_dead_letter_headers,
    dead_letter_source,
    decode,
    decode_batch,
    encode,
)
from climastream.extras import require
from climastream.kafkasec import KafkaSecurity
from climastream.topics import Durability
from stream.alerts.engine import NEVER, AlertEngine
from stream.alerts.rules import RuleSet, load_rules
from stream.app import DEFAULT_SESSION_TIMEOUT_S, last_fetch_ms, session_timeout_from_env

log = logging.getLogger(__name__)

STATE_TABLE = "alerts-state"
SIGNALS_TABLE = "alerts-signals"
SINCE_KEY = "meta|since"


@dataclass(frozen=True)
class AlertsSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "climastream-alerts"
    rules_path: Path | None = None
    tick_interval_s: float = 1.0
    data_dir: str = ".faust-alerts"
    metrics_port: int | None = None
    #: on the very first start, also evaluate records up to this old (seconds)
    catch_up_s: float = 0.0
    #: written once the tables are recovered and input is being evaluated (readiness probe)
    ready_file: Path | None = None
    #: replicas of the changelog topics (the only copy of alert state off the worker)
    durability: Durability = field(default_factory=Durability)
    #: consumer-group session timeout (``stream.app.session_timeout_from_env``)
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    #: TLS and SASL (``CLIMASTREAM_KAFKA_SECURITY_PROTOCOL`` ...), for Faust and the admin
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @classmethod
    def from_env(cls, kafka_security: KafkaSecurity | None = None) -> AlertsSettings:
        """TLS and SASL from ``kafka_security`` if given (the command line's, on top of the
        environment), else the environment. Raises
        :class:`~climastream.topics.DurabilityError` for a bad ``CLIMASTREAM_TOPICS_*``
        variable (the same as ``climastream topics create``) and
        ``stream.app.SessionTimeoutError`` for a bad ``CLIMASTREAM_KAFKA_SESSION_TIMEOUT``,
        :class:`~climastream.kafkasec.KafkaSecurityError` for a bad TLS/SASL variable."""
        rules = os.environ.get("CLIMASTREAM_ALERT_RULES")
        return cls(
            bootstrap_servers=os.environ.get("CLIMASTREAM_KAFKA_BOOTSTRAP", cls.bootstrap_servers),
            app_id=os.environ.get("CLIMASTREAM_ALERTS_APP_ID", cls.app_id),
            rules_path=Path(rules) if rules else None,
            durability=Durability.from_env(),
            session_timeout_s=session_timeout_from_env(),
            kafka_security=kafka_security or KafkaSecurity.from_env(),
        )

    def changelog_topics(self) -> list[str]:
        return [f"{self.app_id}-{name}-changelog" for name in (STATE_TABLE, SIGNALS_TABLE)]


async def ensure_changelog_topics(settings: AlertsSettings) -> list[str]:
    """Create the tables' changelog topics (1 partition, compacted, replicated as
    ``settings.durability`` says) if missing; returns those created."""
    from stream.app import start_admin

    admin_mod = require("aiokafka.admin", "stream")
    admin = await start_admin(settings.bootstrap_servers, settings.kafka_security)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in settings.changelog_topics() if t not in existing]
        if missing:
            await admin.create_topics(
                [
                    admin_mod.NewTopic(
                        name=t,
                        num_partitions=1,
                        replication_factor=settings.durability.replication_factor,
                        topic_configs=settings.durability.topic_configs(compacted=True),
                    )
                    for t in missing
                ]
            )
        return missing
    finally:
        await admin.close()


def _mark_ready(path: Path) -> None:
    path.write_text(f"{os.getpid()}\n")


class _Metrics:
    """Prometheus counters for the engine (registered once per process)."""

    def __init__(self) -> None:
        prometheus = require("prometheus_client", "stream")
        self.inputs = prometheus.Counter(
            "climastream_alerts_inputs_total", "records consumed by the alert engine", ["topic"]
        )
        self.rejected = prometheus.Counter(
            "climastream_alerts_rejected_total",
            "records that failed the contract (sent to dead-letter)",
            ["topic"],
        )
        self.rejected_readings = prometheus.Counter(
            "climastream_alerts_rejected_readings_total",
            "readings of a readings record that failed the contract alone (sent to "
            "dead-letter; the record's other readings were evaluated)",
            ["topic", "reason"],
        )
        self.skipped = prometheus.Counter(
            "climastream_alerts_skipped_total",
            "records older than the engine's first start (never evaluated)",
            ["topic"],
        )
        self.transitions = prometheus.Counter(
            "climastream_alerts_transitions_total", "alert state changes published", ["state"]
        )
        self.input_stalled = prometheus.Gauge(
            "climastream_alerts_input_stalled",
            "1 while the engine's consumer gets no fetch responses from Kafka (gateway and "
            "sensor silence is not judged meanwhile)",
        )


#: a dead letter to send: (value, headers, readings it holds; 0 for a whole record)
DeadLetter = tuple[bytes, dict[str, bytes], int]


def read_record(
    topic: str,
    model: type[Any] | None,
    raw: bytes,
    partition: int | None = None,
    offset: int | None = None,
) -> tuple[Any | None, list[DeadLetter]]:
    """The record to feed to the engine (None: nothing) and the dead letters it makes.

    ``model`` None: a ``readings`` record, split as every consumer of that topic splits
    it (:func:`climastream.contract.decode_batch`): the valid readings are evaluated and
    the others dead-lettered as one partial-batch record. A dead letter names this
    consumer and the record's topic, partition and offset (``dead_letter_source``).
    """
    source = dead_letter_source("alerts", topic, partition, offset)
    try:
        record = decode_batch(raw) if model is None else decode(raw, model)
    except ContractError as exc:
        headers = {**contract_dead_letter_headers(exc), **source}
        return None, [(raw, headers, 0)]
    if model is not None or not record.rejected:
        return record, []
    headers = {**record.dead_letter_headers(), **source}
    return record, [(record.dead_letter_value(), headers, len(record.rejected))]


def create_app(settings: AlertsSettings, rules: RuleSet | None = None) -> Any:
    """Build the Faust app; ``rules`` defaults to ``settings.rules_path`` or the defaults."""
    from stream.app import cluster_settings

    faust = require("faust", "stream")
    ruleset = rules or load_rules(settings.rules_path)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        **cluster_settings(
            settings.durability, settings.session_timeout_s, settings.kafka_security
        ),
        store="memory://",
        datadir=settings.data_dir,
        consumer_auto_offset_reset="earliest",
        topic_partitions=1,
        web_enabled=False,
        producer_linger_ms=0,
    )

    def raw_topic(name: str) -> Any:
        return app.topic(name, value_serializer="raw", key_serializer="raw")

    alerts_topic = raw_topic(Topics.ALERTS.name)
    dead_letter = raw_topic(Topics.DEAD_LETTER.name)
    state = app.Table(STATE_TABLE, partitions=1, use_partitioner=True, key_type=str)
    signals = app.Table(SIGNALS_TABLE, partitions=1, use_partitioner=True, key_type=str)
    engine = AlertEngine(
        ruleset, state, signals, tick_interval=timedelta(seconds=settings.tick_interval_s)
    )
    metrics = _Metrics()
    app.climastream_engine = engine

    def since() -> float:
        """Epoch seconds before which records are history, not news.

        Set once, at the first start of this app id, and kept in the signals table: a
        fresh engine does not page staff about last week's data, and a restarted one
        resumes from its committed offsets without skipping anything.
        """
        stored = signals.get(SINCE_KEY)
        if stored is None:
            stored = time.time() - settings.catch_up_s
            signals[SINCE_KEY] = stored
        return float(stored)

    async def publish(alerts: list[Alert]) -> None:
        for alert in alerts:
            metrics.transitions.labels(alert.state.value).inc()
            await alerts_topic.send(key=alert.key, value=encode(alert))

    def consume(
        topic: str, model: type[Any] | None, apply: Callable[[Any], list[Alert]]
    ) -> Callable[[Any], Awaitable[None]]:
        async def agent(stream: Any) -> None:
            async for event in stream.events():
                metrics.inputs.labels(topic).inc()
                if event.message.timestamp < since():
                    metrics.skipped.labels(topic).inc()
                    continue
                message = event.message
                record, letters = read_record(
                    topic, model, event.value, message.partition, message.offset
                )
                for value, headers, readings in letters:
                    if readings:
                        metrics.rejected_readings.labels(topic, "contract").inc(readings)
                    else:
                        metrics.rejected.labels(topic).inc()
                    await dead_letter.send(key=event.key, value=value, headers=headers)
                if record is not None:
                    await publish(apply(record))

        agent.__name__ = f"alerts_{topic.replace('-', '_')}"
        return agent

    for spec, model, apply in (
        (Topics.KPI, KpiValue, engine.on_kpi),
        (Topics.READINGS, None, engine.on_batch),
        (Topics.GATEWAY_STATUS, GatewayStatus, engine.on_gateway_status),
        (Topics.ALERT_ACTIONS, AlertAction, engine.on_action),
    ):
        app.agent(raw_topic(spec.name), name=f"alerts-{spec.name}")(
            consume(spec.name, model, apply)
        )

    ready: list[bool] = []
    silence_topics = {Topics.READINGS.name, Topics.GATEWAY_STATUS.name}

    def input_as_of() -> datetime:
        """When the consumer last got a fetch response for every partition it reads
        readings and gateway status from (the engine's input is current up to then)."""
        stamps = [
            last_fetch_ms(app.consumer, tp)
            for tp in app.consumer.assignment()
            if tp.topic in silence_topics
        ]
        if not stamps or None in stamps:
            return NEVER  # no fetch yet, or a rebalance under way
        return datetime.fromtimestamp(min(s for s in stamps if s is not None) / 1000, UTC)

    @app.timer(settings.tick_interval_s)
    async def tick() -> None:
        # Time-based rules must not run on half-recovered tables.
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        since()
        await publish(engine.tick(input_as_of()))
        metrics.input_stalled.set(1 if engine.input_stalled else 0)
        if settings.ready_file and not ready:
            ready.append(True)
            _mark_ready(settings.ready_file)

    return app
