"""The Kafka uplink with a fake aiokafka producer: one producer, whoever sends first."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import aiokafka
import pytest

from edge.config import KafkaConfig
from edge.uplink import KafkaUplink


class FakeProducer:
    """Starting takes until the test lets it (a broker that is just coming back)."""

    made: ClassVar[list[FakeProducer]] = []
    may_start: ClassVar[asyncio.Event]

    def __init__(self, **kwargs: Any) -> None:
        self.started = False
        self.stopped = False
        self.sent: list[bytes] = []
        FakeProducer.made.append(self)

    async def start(self) -> None:
        await FakeProducer.may_start.wait()
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append(value)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", FakeProducer)
    FakeProducer.made = []
    FakeProducer.may_start = asyncio.Event()
    return FakeProducer


async def test_concurrent_first_sends_share_one_producer(producers: type[FakeProducer]) -> None:
    """The forwarder and the status publisher sending as the broker came back each started
    a producer: one leaked (not even uplink.stop() closed it) and consecutive reading
    batches could leave on different producers, so partition order was not guaranteed."""
    uplink = KafkaUplink(KafkaConfig(idempotent="off"), client_id="gw1")
    readings = asyncio.create_task(uplink.send("readings", b"gw1", b"batch-1"))
    status = asyncio.create_task(uplink.send("gateway-status", b"gw1", b"status"))
    for _ in range(5):  # let both tasks run up to waiting for a producer (no clock)
        await asyncio.sleep(0)
    producers.may_start.set()
    for future in await asyncio.gather(readings, status):
        await future
    await uplink.send_and_wait("readings", b"gw1", b"batch-2")

    (producer,) = producers.made
    assert producer.sent == [b"batch-1", b"status", b"batch-2"]
    await uplink.stop()
    assert producer.stopped
