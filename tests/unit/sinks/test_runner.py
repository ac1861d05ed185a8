"""SinkRunner delivery semantics with a fake consumer, producer and writer (no services)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition

from climastream.contract import GatewayStatus, Quantity, Reading, ReadingBatch, encode
from sinks.config import load_config
from sinks.errors import AuthError, TransportError
from sinks.influx import SinkRunner
from sinks.metrics import SinkMetrics

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@dataclass
class Record:
    offset: int
    key: bytes | None
    value: bytes


class FakeConsumer:
    """Serves scripted records per partition; records commits, pauses and positions."""

    def __init__(self, records: dict[TopicPartition, list[bytes]]) -> None:
        self.records = {
            tp: [Record(i, None, v) for i, v in enumerate(vs)] for tp, vs in records.items()
        }
        self.position = dict.fromkeys(records, 0)
        self.commits: list[dict[TopicPartition, int]] = []
        self._paused: set[TopicPartition] = set()
        self.pause_calls = 0
        self.stopped = False
        #: partitions a rebalance moved to another member
        self.revoked: set[TopicPartition] = set()

    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.stopped = True

    def assignment(self) -> set[TopicPartition]:
        return set(self.records) - self.revoked

    def pause(self, *tps: TopicPartition) -> None:
        self.pause_calls += 1
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def highwater(self, tp: TopicPartition) -> int:
        assert tp in self.assignment(), "Partition is not assigned"  # as aiokafka does
        return len(self.records[tp])

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, Any]:
        out: dict[TopicPartition, list[Record]] = {}
        for tp, records in self.records.items():
            if tp in self._paused or tp in self.revoked:
                continue
            start = self.position[tp]
            chunk = records[start : start + max_records]
            if chunk:
                out[tp] = chunk
                self.position[tp] += len(chunk)
                max_records -= len(chunk)
            if max_records <= 0:
                break
        if not out:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp in offsets:
            if tp not in self.assignment():  # as aiokafka does
                raise IllegalStateError(f"Partition {tp} is not assigned")
        self.commits.append(dict(offsets))

    def committed(self) -> dict[TopicPartition, int]:
        merged: dict[TopicPartition, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        self.sent.append((topic, value, headers))


class GateWriter:
    """Acknowledges a write only when ``gate`` is set; can fail first with errors."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = failures or []
        self.stored: list[tuple[str, str]] = []
        self.started = asyncio.Event()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, bucket: str, lines: Sequence[str]) -> None:
        self.started.set()
        await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.stored.extend((bucket, line) for line in lines)


def batch(gateway: str, first_seq: int, n: int) -> bytes:
    readings = tuple(
        Reading(
            device_id=f"{gateway}-d",
            gateway_id=gateway,
            seq=first_seq + i,
            quantity=Quantity.TEMPERATURE,
            value=20.0 + i,
            unit="Cel",
            event_time=T0 + timedelta(seconds=first_seq + i),
            ingest_time=T0,
        )
        for i in range(n)
    )
    return encode(ReadingBatch(gateway_id=gateway, readings=readings))


def make_runner(
    consumer: FakeConsumer, writer: GateWriter, producer: FakeProducer | None = None, **influx: Any
) -> tuple[SinkRunner, FakeProducer]:
    producer = producer or FakeProducer()
    config = load_config(
        None,
        {
            "influx": {"linger": 0.01, "retry_initial": 0.001, "retry_max": 0.01, **influx},
            "metrics": {"port": 0},
            "shutdown_timeout": 2,
        },
    )
    runner = SinkRunner(
        config,
        writer=writer,
        metrics=SinkMetrics(),
        consumer_factory=lambda: consumer,
        producer_factory=lambda: producer,
    )
    return runner, producer


READINGS0 = TopicPartition("readings", 0)
READINGS1 = TopicPartition("readings", 1)
KPI0 = TopicPartition("kpi", 0)


async def _until(predicate: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls fakes that have no event
            await asyncio.sleep(0.005)


async def test_offsets_are_committed_only_after_the_database_ack() -> None:
    consumer = FakeConsumer({READINGS0: [batch("gw", 0, 3), batch("gw", 3, 2)]})
    writer = GateWriter()
    writer.gate.clear()
    runner, _ = make_runner(consumer, writer)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(writer.started.wait(), 5)
    await asyncio.sleep(0.1)
    assert consumer.commits == []  # the write is pending: nothing committed
    writer.gate.set()
    await _until(lambda: consumer.committed().get(READINGS0) == 2)
    stop.set()
    counters = await task
    assert counters.points == 5
    assert len(writer.stored) == 5
    assert all(bucket == "climastream-raw" for bucket, _ in writer.stored)


async def test_a_partition_revoked_while_its_batch_is_in_flight_is_not_committed() -> None:
    # a second sink joined the group: readings-1 moved to it while our write was pending
    consumer = FakeConsumer({READINGS0: [batch("gw", 0, 3)], READINGS1: [batch("gx", 0, 2)]})
    writer = GateWriter()
    writer.gate.clear()
    runner, _ = make_runner(consumer, writer, linger=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(writer.started.wait(), 5)
    assert consumer.position == {READINGS0: 1, READINGS1: 1}
    consumer.revoked.add(READINGS1)
    writer.gate.set()
    await _until(lambda: task.done() or consumer.committed().get(READINGS0) == 1)
    assert not task.done(), task.exception()  # the sink keeps running
    stop.set()
    await task
    assert consumer.committed() == {READINGS0: 1}  # the new owner commits readings-1
    assert len(writer.stored) == 5


async def test_consumption_pauses_while_writes_are_pending() -> None:
    records = [batch("gw", i * 10, 10) for i in range(20)]
    consumer = FakeConsumer({READINGS0: records})
    writer = GateWriter()
    writer.gate.clear()
    runner, _ = make_runner(consumer, writer, batch_lines=10, max_in_flight=2)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await _until(lambda: consumer.pause_calls > 0)
    await asyncio.sleep(0.1)
    # Two batches in flight plus at most one being assembled: bounded, whatever the backlog.
    assert consumer.position[READINGS0] <= 3
    assert runner.metrics.value("climastream_sink_paused") == 1
    writer.gate.set()
    await _until(lambda: consumer.committed().get(READINGS0) == 20)
    stop.set()
    await task
    assert len(writer.stored) == 200


async def test_outage_retries_keep_the_batch_and_commit_once_written() -> None:
    consumer = FakeConsumer({READINGS0: [batch("gw", 0, 4)]})
    writer = GateWriter([TransportError("refused")] * 5)
    runner, _ = make_runner(consumer, writer)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await _until(lambda: consumer.committed().get(READINGS0) == 1)
    stop.set()
    counters = await task
    assert counters.retries == 5
    assert len(writer.stored) == 4


async def test_contract_errors_go_to_dead_letter_before_commit() -> None:
    consumer = FakeConsumer({READINGS0: [b'{"gateway_id": "bad id"}', batch("gw", 0, 1)]})
    writer = GateWriter()
    runner, producer = make_runner(consumer, writer)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await _until(lambda: consumer.committed().get(READINGS0) == 2)
    stop.set()
    counters = await task
    ((topic, value, headers),) = producer.sent
    assert topic == "dead-letter"
    assert value == b'{"gateway_id": "bad id"}'
    header = dict(headers)
    assert header["reason"] == b"contract"
    assert b"gateway_id" in header["error"]
    assert (header["source_topic"], header["source_offset"]) == (b"readings", b"0")
    assert header["consumer"] == b"sink"  # the worker and the alert engine send their own
    assert counters.dead_letters == 1
    assert len(writer.stored) == 1


async def test_lines_the_database_refuses_are_dead_lettered_and_the_rest_written() -> None:
    from sinks.errors import PartialWriteError

    class RefusingWriter(GateWriter):
        async def write(self, bucket: str, lines: Sequence[str]) -> None:
            if any("seq=2i" in line for line in lines):
                raise PartialWriteError("HTTP 422: outside retention", status=422, body="old")
            await super().write(bucket, lines)

    consumer = FakeConsumer({READINGS0: [batch("gw", 0, 5)]})
    writer = RefusingWriter()
    runner, producer = make_runner(consumer, writer)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await _until(lambda: consumer.committed().get(READINGS0) == 1)
    stop.set()
    await task
    assert len(writer.stored) == 4
    ((_topic, value, headers),) = producer.sent
    assert b"seq=2i" in value
    assert dict(headers)["reason"] == b"rejected"
    assert b"HTTP 422" in dict(headers)["error"]
    assert runner.metrics.value("climastream_sink_dead_letters_total", reason="rejected") == 1


async def test_fatal_auth_error_stops_without_committing() -> None:
    consumer = FakeConsumer({READINGS0: [batch("gw", 0, 1)]})
    writer = GateWriter([AuthError("HTTP 401 token", status=401)])
    runner, _ = make_runner(consumer, writer)
    with pytest.raises(AuthError):
        await runner.run(asyncio.Event())
    assert consumer.commits == []
    assert consumer.stopped


async def test_sigterm_flushes_the_partial_batch_and_commits() -> None:
    consumer = FakeConsumer({READINGS0: [batch("gw", 0, 3)], KPI0: []})
    writer = GateWriter()
    # A long linger: the batch would wait; stop must flush it anyway.
    runner, _ = make_runner(consumer, writer, linger=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await _until(lambda: consumer.position[READINGS0] == 1)
    await asyncio.sleep(0.05)
    assert writer.stored == []
    stop.set()
    await task
    assert len(writer.stored) == 3
    assert consumer.committed() == {READINGS0: 1}


async def test_shutdown_with_database_down_commits_nothing() -> None:
    consumer = FakeConsumer({READINGS0: [batch("gw", 0, 3)]})
    writer = GateWriter([TransportError("down")] * 10_000)
    runner, _ = make_runner(consumer, writer)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(writer.started.wait(), 5)
    stop.set()
    await task
    assert consumer.commits == []
    assert runner.abort.is_set()


async def test_a_reading_that_fails_the_contract_alone_is_dead_lettered_and_the_rest_written() -> (
    None
):
    """One reading 2 h ahead of the sink's clock used to send its whole record, with the
    good readings, to dead-letter: none of them reached the database."""
    good = orjson.loads(batch("gw", 0, 3))
    now = datetime.now(UTC)
    for reading in good["readings"]:
        reading["event_time"] = reading["ingest_time"] = now.isoformat()
    ahead = {**good["readings"][0], "device_id": "fast-clock",
             "event_time": (now + timedelta(hours=2)).isoformat()}  # fmt: skip
    good["readings"].insert(1, ahead)
    consumer = FakeConsumer({READINGS0: [orjson.dumps(good)]})
    writer = GateWriter()
    runner, producer = make_runner(consumer, writer)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await _until(lambda: consumer.committed().get(READINGS0) == 1)
    stop.set()
    counters = await task
    assert len(writer.stored) == 3
    ((topic, value, headers),) = producer.sent
    assert topic == "dead-letter"
    assert orjson.loads(value) == {"schema_version": 1, "gateway_id": "gw", "readings": [ahead]}
    header = dict(headers)
    assert header["reason"] == b"partial-batch"
    assert b"readings.1 (device fast-clock): " in header["error"]
    assert (header["source_topic"], header["source_offset"]) == (b"readings", b"0")
    assert header["consumer"] == b"sink"  # the worker and the alert engine send their own
    assert counters.dead_letters == 1
    metrics = runner.metrics
    assert metrics.value("climastream_sink_dead_letter_readings_total", reason="contract") == 1


@dataclass
class StampedRecord(Record):
    timestamp: int
    timestamp_type: int


def _status(time: datetime, uptime_s: float, synced: bool | None) -> bytes:
    return encode(
        GatewayStatus(
            gateway_id="gw-pi",
            time=time,
            software_version="0.1.0",
            uptime_s=uptime_s,
            clock_synchronized=synced,
            buffer_depth=0,
            buffer_bytes=0,
            buffer_capacity_bytes=1000,
        )
    )


def _point_time(line: str) -> datetime:
    return datetime.fromtimestamp(int(line.rsplit(" ", 1)[1]) / 1e9, UTC)


async def test_a_status_with_a_wrong_clock_is_written_when_the_broker_appended_it() -> None:
    """A Pi ran until T0 and came back from a power cut with its clock 30 min behind: its
    statuses were written 30 min before the old run's last, and a "last value" panel
    showed the old run until NTP synced. On a LogAppendTime topic an unsynchronized status
    is written at the broker's time, the same on every replay; a synchronized one (the old
    run's, buffered and sent late) keeps its own time."""
    status = TopicPartition("gateway-status", 0)
    ms = int(T0.timestamp() * 1000)
    records = [
        StampedRecord(0, b"gw-pi", _status(T0, 3600, True), ms, 1),
        StampedRecord(1, b"gw-pi", _status(T0 - timedelta(minutes=29), 60, False), ms + 60_000, 1),
        StampedRecord(2, b"gw-pi", _status(T0 - timedelta(seconds=10), 3590, True), ms + 70_000, 1),
        # a create-time topic (Tansu, an existing topic): the gateway's time, as before
        StampedRecord(3, b"gw-pi", _status(T0 - timedelta(minutes=28), 120, False), ms, 0),
    ]
    written: list[list[str]] = []
    for _replay in range(2):
        consumer = FakeConsumer({})
        consumer.records = {status: list(records)}
        consumer.position = {status: 0}
        writer = GateWriter()
        runner, _ = make_runner(consumer, writer)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await _until(lambda c=consumer: c.committed().get(status) == 4)
        stop.set()
        await task
        written.append([line for _, line in writer.stored])
    first, again = written
    assert first == again  # a replay writes the same points
    assert [_point_time(line) for line in first] == [
        T0,
        T0 + timedelta(minutes=1),
        T0 - timedelta(seconds=10),
        T0 - timedelta(minutes=28),
    ]
    assert "clock_synchronized=false" in first[1]
    assert f"gateway_time={int((T0 - timedelta(minutes=29)).timestamp()) * 10**9}i" in first[1]
    assert "clock_synchronized=true" in first[0]
