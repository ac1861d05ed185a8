"""Kafka uplink: an aiokafka producer that tolerates a broker that is not there yet.

Contract: :meth:`KafkaUplink.send` enqueues one record and returns an awaitable that
resolves when the broker acknowledged it (``acks=all``) or raises :class:`UplinkError`.
The producer keeps records of one partition in order (aiokafka sends one batch per
partition at a time), and the agent keys every ``readings`` record by gateway id, so each
device's readings stay in order on Kafka.

Idempotence: ``idempotent: auto`` asks the broker for a producer id (InitProducerId) at
each connect and turns the idempotent producer on only if that works. Tansu's in-memory
engine answers InitProducerId with an error, so locally the producer runs without it;
retries may then duplicate a record, which consumers absorb by (device, seq). Asked once
per process, a probe that timed out on a flaky uplink at boot, or hit a broker still
starting, left the gateway without idempotence (one batch in flight, duplicates on
retries) until it restarted; at each connect it follows the broker.

One producer at a time: the forwarder and the status publisher both send, and a lock
around connecting makes the second wait for the first's producer instead of starting one
of its own (which leaked, and could carry consecutive reading batches out of order).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from typing import Any

from climastream import kafkasec
from climastream.extras import require
from edge.config import KafkaConfig

log = logging.getLogger(__name__)


class UplinkError(RuntimeError):
    """Sending failed; the records stay in the buffer and are retried. Always retriable."""

    retriable = True


def ssl_context(cfg: KafkaConfig) -> ssl.SSLContext:
    return kafkasec.ssl_context(cfg)


def producer_kwargs(cfg: KafkaConfig, client_id: str, idempotent: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": client_id,
        "acks": "all",
        "linger_ms": cfg.linger_ms,
        "max_batch_size": min(cfg.max_batch_bytes + 64 * 1024, 16 * 1024 * 1024),
        "max_request_size": cfg.max_batch_bytes + 64 * 1024,
        "request_timeout_ms": cfg.request_timeout_ms,
        "compression_type": None if cfg.compression == "none" else cfg.compression,
        "enable_idempotence": idempotent,
    }
    kwargs.update(kafkasec.aiokafka_kwargs(cfg))  # TLS and SASL: as every cloud-side client
    return kwargs


async def broker_supports_idempotence(producer: Any, timeout_s: float = 5.0) -> bool:
    """Ask a started producer's broker for a producer id; False on any error code."""
    from aiokafka.protocol.transaction import InitProducerIdRequest

    client = producer.client
    node = client.get_random_node()
    try:
        request = InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60000)
    except TypeError:  # aiokafka < 0.13 indexes request classes by version
        request = InitProducerIdRequest[0](transactional_id=None, transaction_timeout_ms=60000)
    try:
        response = await asyncio.wait_for(client.send(node, request), timeout_s)
    except Exception as exc:
        log.debug("InitProducerId probe failed: %r", exc)
        return False
    return bool(response.error_code == 0)


def check_compression(name: str) -> None:
    """Fail at start, naming the key, when the codec's library is not installed."""
    if name == "none":
        return
    codec = require("aiokafka.codec", "edge")
    if not getattr(codec, f"has_{name}")():
        raise ValueError(
            f"kafka.compression: {name} needs aiokafka's codec library (pip install cramjam, "
            "part of the edge extra); gzip is always available"
        )


class KafkaUplink:
    """Send records; connect lazily so an absent broker never blocks ingestion."""

    def __init__(self, config: KafkaConfig, client_id: str) -> None:
        check_compression(config.compression)
        self._config = config
        self._client_id = client_id
        self._producer: Any = None
        self._connecting = asyncio.Lock()
        self.idempotent: bool | None = None

    async def _connect(self) -> Any:
        aiokafka = require("aiokafka", "edge")
        cfg = self._config
        want = {"on": True, "off": False}.get(cfg.idempotent)
        if want is None:
            probe = aiokafka.AIOKafkaProducer(**producer_kwargs(cfg, self._client_id, False))
            try:
                await probe.start()
                supported = await broker_supports_idempotence(probe)
            finally:
                await probe.stop()
            if not supported and self.idempotent is not False:  # logged when it changes
                log.warning(
                    "broker refuses InitProducerId: idempotent producer off; retries may "
                    "duplicate records, consumers deduplicate by (device, seq)"
                )
            elif supported and self.idempotent is False:
                log.info("broker grants InitProducerId now: idempotent producer on")
            self.idempotent = supported
        else:
            self.idempotent = want
        producer = aiokafka.AIOKafkaProducer(
            **producer_kwargs(cfg, self._client_id, bool(self.idempotent))
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        log.info(
            "kafka connected bootstrap=%s idempotent=%s", cfg.bootstrap_servers, self.idempotent
        )
        return producer

    async def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]:
        """Enqueue one record; the returned awaitable resolves on the broker's ack.

        Both this call and the awaitable raise :class:`UplinkError` on failure.
        """
        errors = require("aiokafka.errors", "edge")
        producer = None
        try:
            producer = await self._producer_now()
            future = await producer.send(topic, value=value, key=key)
        except (errors.KafkaError, OSError, TimeoutError) as exc:
            await self._reset(producer)
            raise UplinkError(f"{type(exc).__name__}: {exc}") from exc
        return self._wrap(future, errors.KafkaError)

    async def _producer_now(self) -> Any:
        """The producer, connecting it first if needed; concurrent callers share one."""
        producer = self._producer
        if producer is None:
            async with self._connecting:
                if self._producer is None:
                    self._producer = await self._connect()
                producer = self._producer
        return producer

    async def _wrap(self, future: Any, kafka_error: type[Exception]) -> Any:
        try:
            return await future
        except (kafka_error, OSError, TimeoutError) as exc:
            raise UplinkError(f"{type(exc).__name__}: {exc}") from exc

    async def send_and_wait(self, topic: str, key: bytes, value: bytes) -> None:
        await (await self.send(topic, key, value))

    async def _reset(self, failed: Any) -> None:
        """Drop the producer a send failed on (not one another task has connected since)."""
        if failed is None or failed is not self._producer:
            return
        self._producer = None
        try:
            await asyncio.wait_for(failed.stop(), 10)
        except Exception as exc:
            log.debug("producer stop failed: %r", exc)

    async def stop(self) -> None:
        """Flush and close; idempotent. Waits for a connect in progress, then closes it."""
        async with self._connecting:
            await self._reset(self._producer)
