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


async def test_idempotence_is_asked_again_at_each_connect(
    producers: type[FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`idempotent: auto` asked the broker once per process: a probe that timed out (a
    flaky uplink at boot, a broker still starting) or a broker upgraded later left the
    producer without idempotence, one batch in flight and duplicates on retries, until
    the agent restarted. It is asked again whenever the producer reconnects."""
    from aiokafka.errors import KafkaConnectionError

    from edge import uplink as uplink_module

    answers = iter([False, True])

    async def probe(producer: Any, timeout_s: float = 5.0) -> bool:
        return next(answers)

    monkeypatch.setattr(uplink_module, "broker_supports_idempotence", probe)
    producers.may_start.set()
    uplink = KafkaUplink(KafkaConfig(idempotent="auto"), client_id="gw1")
    await uplink.send_and_wait("readings", b"gw1", b"batch-1")
    assert uplink.idempotent is False

    async def lost(topic: str, value: bytes, key: bytes) -> Any:
        raise KafkaConnectionError("connection lost")

    producers.made[-1].send = lost  # type: ignore[method-assign]
    with pytest.raises(uplink_module.UplinkError):
        await uplink.send("readings", b"gw1", b"batch-2")
    await uplink.send_and_wait("readings", b"gw1", b"batch-2")  # a new producer
    assert uplink.idempotent is True
    await uplink.stop()
