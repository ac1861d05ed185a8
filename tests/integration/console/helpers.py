"""Producing contract records and reading topics for the console tests."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from climastream.contract import (
    Alert,
    AlertSeverity,
    AlertState,
    EvidencePoint,
    Location,
    Quantity,
    Reading,
    ReadingBatch,
    decode,
    encode,
)


def firing_alert(fingerprint: str | None = None, **changes: Any) -> Alert:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "fingerprint": fingerprint or uuid.uuid4().hex[:16],
        "rule_id": "pm25-poor",
        "state": AlertState.FIRING,
        "severity": AlertSeverity.WARNING,
        "summary": "PM2.5 poor in centre",
        "description": "The 10-minute PM2.5 mean is above the EAQI 'poor' band.",
        "zone": "centre",
        "device_id": "pm-centre-1",
        "gateway_id": "gw-demo-1",
        "value": 31.5,
        "threshold": 25.0,
        "unit": "ug/m3",
        "completeness": 0.97,
        "started_at": now - timedelta(minutes=3),
        "updated_at": now,
        "evidence": tuple(
            EvidencePoint(
                time=now - timedelta(seconds=60 * i),
                value=30.0 + i,
                device_id="pm-centre-1",
                quantity=Quantity.PM2_5,
            )
            for i in range(3, 0, -1)
        ),
    }
    fields.update(changes)
    return Alert(**fields)


def batch(
    gateway: str, rows: list[tuple[str, str, int, Quantity, float]], lat: float = 50.85
) -> ReadingBatch:
    """``rows`` of (device, zone, seq, quantity, value), all stamped now."""
    from climastream.quantities import CANONICAL_UNITS

    now = datetime.now(UTC)
    return ReadingBatch(
        gateway_id=gateway,
        readings=tuple(
            Reading(
                device_id=device,
                gateway_id=gateway,
                seq=seq,
                quantity=quantity,
                value=value,
                unit=CANONICAL_UNITS[quantity],
                event_time=now,
                ingest_time=now,
                zone=zone,
                location=Location(lat=lat + seq % 7 * 0.001, lon=4.35 + seq % 11 * 0.001),
            )
            for device, zone, seq, quantity, value in rows
        ),
    )


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(parts)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def wait_for_record(
    bootstrap: str,
    topic: str,
    model: type[Any],
    since: dict[int, int],
    match: Any,
    timeout_s: float = 30.0,
) -> Any:
    """The first record of ``topic`` after offsets ``since`` for which ``match`` is true."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in since]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, since[tp.partition])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    value = decode(record.value, model)
                    if match(value):
                        return value
        raise AssertionError(f"no matching record on {topic} within {timeout_s} s")
    finally:
        await consumer.stop()


__all__ = ["batch", "encode", "end_offsets", "firing_alert", "produce", "wait_for_record"]
