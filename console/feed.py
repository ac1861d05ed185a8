"""Kafka in and out of the console: the live feed and the alert-action producer.

The feed is a group-less consumer (every console instance sees every record, and reading
never moves a committed offset another part depends on). At start it rewinds each
partition a few records per topic so the page is not empty: the recent alert state changes
rebuild the inbox, the recent gateway reports fill the health table.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from climastream.contract import (
    Alert,
    AlertAction,
    ContractError,
    GatewayStatus,
    KpiValue,
    Topics,
    decode,
    decode_batch,
    encode,
)
from climastream.extras import require
from climastream.kafkasec import KafkaSecurity
from climastream.topics import unreachable
from console.state import DeviceInfo, LiveState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    #: TLS and SASL (``CLIMASTREAM_KAFKA_SECURITY_PROTOCOL`` ...)
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: records re-read per partition at start, per topic
    backfill: dict[str, int] = field(
        default_factory=lambda: {
            Topics.READINGS.name: 20,
            Topics.KPI.name: 2000,
            Topics.ALERTS.name: 5000,
            Topics.GATEWAY_STATUS.name: 200,
        }
    )
    max_records: int = 2000


class FeedError(RuntimeError):
    """Kafka could not be reached or a topic is missing."""


def apply_record(state: LiveState, topic: str, raw: bytes) -> None:
    """Decode one record of ``topic`` into ``state``; a contract failure is counted."""
    try:
        if topic == Topics.READINGS.name:
            # the readings the stream keeps of the record (a partial batch counts rejected)
            split = decode_batch(raw)
            state.add_readings(split.readings)
            if split.rejected:
                state.reject(topic)
        elif topic == Topics.KPI.name:
            state.add_kpi(decode(raw, KpiValue))
        elif topic == Topics.ALERTS.name:
            state.add_alert(decode(raw, Alert))
        elif topic == Topics.GATEWAY_STATUS.name:
            state.add_gateway_status(decode(raw, GatewayStatus))
    except ContractError as exc:
        log.debug("rejected record topic=%s: %s", topic, exc)
        state.reject(topic)


class KafkaFeed:
    """Consumes the four result topics into a :class:`LiveState` until stopped."""

    def __init__(self, settings: FeedSettings, state: LiveState) -> None:
        self.settings = settings
        self.state = state
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        aiokafka = require("aiokafka", "console")
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            **self.settings.kafka_security.aiokafka_kwargs(),
        )
        try:
            try:
                await consumer.start()
            except aiokafka.errors.KafkaConnectionError:
                where = unreachable(self.settings.bootstrap_servers, self.settings.kafka_security)
                raise FeedError(where) from None
            await self._assign(consumer, aiokafka.TopicPartition)
            self.state.feed_up()
            self.ready.set()
            while not stop.is_set():
                batches = await consumer.getmany(
                    timeout_ms=300, max_records=self.settings.max_records
                )
                for tp, records in batches.items():
                    for record in records:
                        if record.value is not None:
                            apply_record(self.state, tp.topic, record.value)
                # let the hub and the HTTP handlers run between large batches
                await asyncio.sleep(0)
        finally:
            await consumer.stop()

    async def _assign(self, consumer: Any, topic_partition: Any) -> None:
        await consumer.topics()  # fetch metadata
        partitions: list[Any] = []
        for topic in self.settings.backfill:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise FeedError(
                    f"topic {topic!r} does not exist on {self.settings.bootstrap_servers}"
                )
            partitions.extend(topic_partition(topic, p) for p in sorted(ids))
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        begins = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            back = self.settings.backfill.get(tp.topic, 0)
            consumer.seek(tp, max(begins[tp], ends[tp] - back))


class ActionSink(Protocol):
    """Where acknowledge/silence requests go. ``send`` returns once it is durable."""

    async def send(self, action: AlertAction) -> None: ...


class ListActionSink:
    """Keeps actions in a list: for unit tests and ``--no-kafka`` page development."""

    def __init__(self) -> None:
        self.actions: list[AlertAction] = []

    async def send(self, action: AlertAction) -> None:
        self.actions.append(action)


class KafkaActionSink:
    """Publishes :class:`AlertAction` on ``alert-actions`` with acks=all.

    The alert engine is the only writer of alert state; the console never writes
    ``alerts``. ``send`` raises if Kafka does not acknowledge, so the operator sees an
    error instead of believing an acknowledgement that was lost.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        timeout_s: float = 10.0,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.security = security or KafkaSecurity()
        self.timeout_s = timeout_s
        self._producer: Any = None

    async def start(self) -> None:
        aiokafka = require("aiokafka", "console")
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            request_timeout_ms=int(self.timeout_s * 1000),
            **self.security.aiokafka_kwargs(),
        )
        try:
            await asyncio.wait_for(producer.start(), self.timeout_s)
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def send(self, action: AlertAction) -> None:
        if self._producer is None:
            await self.start()  # lazily, so a console started during an outage recovers
        await asyncio.wait_for(
            self._producer.send_and_wait(
                Topics.ALERT_ACTIONS.name, value=encode(action), key=action.key
            ),
            self.timeout_s,
        )

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def load_site(gateway_configs: list[Path]) -> list[DeviceInfo]:
    """Device positions and zones from gateway YAML files (the installer's config).

    Simulated sources list their devices; MQTT sources map device ids (DevEUIs, station ids)
    to their zone and location; a serial source with a fixed ``device_id`` is one device. A
    gateway-level ``zone`` applies to devices without one. Devices that name themselves on
    the wire (framed nodes) appear once their first reading arrives. The gateways' secrets
    (``${KAFKA_PASSWORD}``, ``password_file``) are not read: the console host has neither.
    """
    from edge.config import (
        MqttSourceConfig,
        SerialSourceConfig,
        SimulatedSourceConfig,
        load_config,
    )

    devices: list[DeviceInfo] = []

    def add(gateway: str, device_id: str, meta: object, fallback_zone: str | None) -> None:
        location = getattr(meta, "location", None)
        devices.append(
            DeviceInfo(
                device_id=device_id,
                gateway_id=gateway,
                zone=getattr(meta, "zone", None) or fallback_zone,
                lat=location.lat if location else None,
                lon=location.lon if location else None,
            )
        )

    for path in gateway_configs:
        config = load_config(path, read_secrets=False)  # never the gateway's secrets
        for source in config.sources:
            if isinstance(source, MqttSourceConfig):  # device id -> metadata
                for device_id, meta in source.device_meta().items():
                    add(config.gateway_id, device_id, meta, config.zone)
            elif isinstance(source, SimulatedSourceConfig):
                for device in source.devices:
                    add(config.gateway_id, device.device_id, device, config.zone)
            elif isinstance(source, SerialSourceConfig) and source.device_id:
                add(config.gateway_id, source.device_id, source, config.zone)
    return devices
