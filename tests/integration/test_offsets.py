"""End offsets on the real broker: ``confirmed_end_offsets`` finds where each partition
really ends, whatever ``ListOffsets`` said (Tansu counts only the first record of the last
batch), and Faust's recovery asks for ends through it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from climastream.offsets import confirmed_end_offsets
from climastream.stack import Stack

pytestmark = pytest.mark.integration


async def _batches_then_ends(bootstrap: str, sizes: dict[int, list[int]]) -> tuple[Any, Any]:
    """Send batches of the given sizes to each partition of a new topic (one batch per
    size: all its records in flight together); return (ListOffsets ends, true ends)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"offsets-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, len(sizes), 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    true_ends = {}
    try:
        for partition, batches in sizes.items():
            count = 0
            for size in batches:
                futures = [
                    await producer.send(topic, b"%d" % i, key=b"k", partition=partition)
                    for i in range(size)
                ]
                for future in futures:
                    await future
                count += size
            true_ends[TopicPartition(topic, partition)] = count
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        listed = await consumer.end_offsets(list(true_ends))
    finally:
        await consumer.stop()
    return listed, true_ends


def test_confirmed_end_offsets_are_where_the_partitions_end(stack: Stack) -> None:
    bootstrap = stack.config.kafka_bootstrap
    listed, true_ends = asyncio.run(
        _batches_then_ends(bootstrap, {0: [5], 1: [3, 4], 2: [2, 1], 3: []})
    )
    assert all(listed[tp] <= end for tp, end in true_ends.items())
    confirmed = asyncio.run(confirmed_end_offsets(listed, bootstrap_servers=bootstrap))
    assert confirmed == true_ends


def test_faust_recovery_asks_for_confirmed_ends(stack: Stack) -> None:
    """What the stream worker's table recovery gets as changelog ends (Faust's consumer
    thread, wrapped by ``confirm_recovery_highwaters``)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from stream.app import confirm_recovery_highwaters

    bootstrap = stack.config.kafka_bootstrap
    listed, true_ends = asyncio.run(_batches_then_ends(bootstrap, {0: [4, 3]}))
    assert listed != true_ends, "the broker now counts ends right: the wrapper can go"

    class Thread:  # the parts of AIOKafkaConsumerThread that _highwaters uses
        consumer = type("Consumer", (), {"in_transaction": False})()

        def __init__(self, client: Any) -> None:
            self.client = client

        def _ensure_consumer(self) -> Any:
            return self.client

    async def highwaters() -> Any:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            return await AIOKafkaConsumerThread._highwaters(
                Thread(consumer),
                list(true_ends),  # type: ignore[arg-type]
            )
        finally:
            await consumer.stop()

    confirm_recovery_highwaters()
    confirm_recovery_highwaters()  # idempotent: still one fetch, not two wrappers
    assert asyncio.run(highwaters()) == true_ends
