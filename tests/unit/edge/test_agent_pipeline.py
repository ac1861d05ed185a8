"""The agent's delivery pipeline under failure: nothing stalls silently, nothing is lost.

Fakes only (a scripted source, buffer and uplink); no broker, no timing assertions: tests
wait for events, never for a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sqlite3
import types
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from climastream.contract import Quantity, ReadingBatch, SourceState
from edge import agent as agent_module
from edge.agent import Agent, Counters
from edge.buffer import Kind, MemoryBuffer
from edge.config import GatewayConfig
from edge.sources import Sample
from edge.uplink import UplinkError


def _config(**extra: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway_id": "gw1",
            "metrics": {"listen": None},
            "sources": [
                {"kind": "simulated", "devices": [{"device_id": "x", "quantities": ["no2"]}]}
            ],
            **extra,
        }
    )


def _samples(device: str, seqs: range) -> list[Sample]:
    now = datetime.now(UTC)
    return [Sample(device, Quantity.TEMPERATURE, 20.0, "Cel", now, seq=i) for i in seqs]


class ScriptedSource:
    """Hands out the given batches, then waits forever (a quiet sensor)."""

    name = "scripted"
    state = SourceState.UP
    decode_errors: dict[str, int] = {}  # noqa: RUF012

    def __init__(self, batches: list[list[Sample]]) -> None:
        self._batches = list(batches)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def read(self) -> list[Sample]:
        if self._batches:
            return self._batches.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class RecordingUplink:
    """Every record lands; ``stopped`` says whether the agent closed the uplink."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []
        self.stopped = False

    async def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]:
        async def delivered() -> None:
            self.records.append((topic, value))

        return delivered()

    async def stop(self) -> None:
        self.stopped = True


class AckFailsOnce(MemoryBuffer):
    """The disk is full once when the forwarder deletes sent records (a WAL DELETE)."""

    def __init__(self) -> None:
        super().__init__(max_bytes=10**7, max_age_s=3600)
        self.ack_failures = 0
        self.closed = False

    def ack(self, kind: Kind, up_to: int) -> int:
        if kind is Kind.READING and not self.ack_failures:
            self.ack_failures += 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().ack(kind, up_to)

    def close(self) -> None:
        self.closed = True
        super().close()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 (the agent's tasks run in between)
        await asyncio.sleep(0.01)


async def test_the_forwarder_survives_a_buffer_error_while_acking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ack that raised (SQLite disk full) ended the forwarder with nothing logged and
    nothing ever sent again; now it logs, backs off and sends the records again."""
    buffer = AckFailsOnce()
    uplink = RecordingUplink()
    source = ScriptedSource([_samples("dev1", range(5)), _samples("dev1", range(5, 10))])
    agent = Agent(
        _config(), sources=[source], uplink=uplink, models=[], buffer_factory=lambda: buffer
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(_until(lambda: agent.counters.sent == 10), timeout=60)
    stop.set()
    counters = await asyncio.wait_for(run, timeout=60)

    assert buffer.ack_failures == 1
    assert counters.accepted == counters.sent == 10
    assert counters.send_failures == 0  # Kafka was never the problem
    assert buffer.stats().depth == 0
    assert "buffer failed while forwarding" in caplog.text
    assert "database or disk is full" in caplog.text
    assert uplink.stopped
    assert buffer.closed


async def test_the_watchdog_is_fed_only_while_the_pipeline_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A forwarder that ended (a bug) left housekeeping pinging WATCHDOG=1: the agent
    looked healthy to systemd with nothing moving. And at shutdown its exception skipped
    stopping the uplink and closing the buffer (the next start saw a crash)."""
    notified: list[str] = []
    monkeypatch.setattr(agent_module.systemd, "notify", lambda message: notified.append(message))

    async def run(agent: Agent, buffer: AckFailsOnce, ticks: int) -> Counters:
        seen = 0
        real = agent.snapshot

        def snapshot() -> Any:  # housekeeping builds the status once per tick
            nonlocal seen
            seen += 1
            return real()

        agent.snapshot = snapshot  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(_until(lambda: seen >= ticks), timeout=60)
        stop.set()
        return await asyncio.wait_for(task, timeout=60)

    # fsync_window_s sets housekeeping's tick (here 10 ms): fast ticks, not a timing test
    config = _config(buffer={"backend": "memory", "fsync_window_s": 0.01})

    healthy_buffer = AckFailsOnce()
    healthy = Agent(
        config,
        sources=[ScriptedSource([])],
        uplink=RecordingUplink(),
        models=[],
        buffer_factory=lambda: healthy_buffer,
    )
    await run(healthy, healthy_buffer, 3)
    assert notified.count("WATCHDOG=1") >= 2

    notified.clear()
    buffer = AckFailsOnce()
    uplink = RecordingUplink()
    agent = Agent(
        config,
        sources=[ScriptedSource([])],
        uplink=uplink,
        models=[],
        buffer_factory=lambda: buffer,
    )

    async def broken_forwarder(stop: asyncio.Event) -> None:
        raise RuntimeError("forwarder bug")

    agent._forwarder = broken_forwarder  # type: ignore[method-assign]
    with caplog.at_level(logging.CRITICAL, logger="edge.agent"):
        await run(agent, buffer, 3)  # returns: a dead task does not break the shutdown

    assert "WATCHDOG=1" not in notified  # systemd restarts it after WatchdogSec
    assert "READY=1" in notified
    assert "task forwarder ended with RuntimeError('forwarder bug')" in caplog.text
    assert uplink.stopped
    assert buffer.closed


class FirstSendFails:
    """Records land on one partition as their delivery completes, independently of when
    the agent awaits them (as aiokafka's). The first record's delivery fails, once a later
    record was sent or after a while (a batch that expired); later records land at once."""

    def __init__(self, idempotent: bool | None = None) -> None:
        if idempotent is not None:
            self.idempotent = idempotent
        self.partition: list[tuple[str, int]] = []
        self.sends = 0
        self.second_send = asyncio.Event()

    async def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]:
        self.sends += 1
        batch = ReadingBatch.model_validate_json(value)
        readings = [(r.device_id, r.seq) for r in batch.readings]
        if self.sends == 2:
            self.second_send.set()

        async def first() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.second_send.wait(), timeout=0.5)
            raise UplinkError("KafkaTimeoutError: batch expired")

        async def later() -> None:
            self.partition.extend(readings)

        return asyncio.ensure_future(first() if self.sends == 1 else later())

    async def stop(self) -> None:
        return None


async def _forward(agent: Agent, done: Callable[[], bool]) -> None:
    """Run the forwarder alone over what the agent's buffer holds until ``done``."""
    stop = asyncio.Event()
    forwarder = asyncio.create_task(agent._forwarder(stop))
    await asyncio.wait_for(_until(done), timeout=60)
    stop.set()
    agent._new_data.set()
    await asyncio.wait_for(forwarder, timeout=60)


async def test_a_failed_send_never_lets_later_readings_land_first() -> None:
    """With several batches in flight and no idempotent producer, the later batches landed
    after the oldest failed, then all were resent from the oldest: one device's seqs on
    the partition were 2..5, 0..5."""
    uplink = FirstSendFails(idempotent=False)  # like the local Tansu's
    agent = Agent(_config(batch_max_readings=2), sources=[], uplink=uplink, models=[])
    agent.buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    agent.ingest(_samples("dev1", range(6)))

    await _forward(agent, lambda: agent.counters.sent == 6)

    assert uplink.partition == [("dev1", seq) for seq in range(6)]
    assert agent.counters.send_failures == 1


class Pipelined:
    """Counts records sent and not yet acknowledged; a delivery completes when the agent
    awaits it (the forwarder sends as many as it may, then awaits the oldest)."""

    def __init__(self, idempotent: bool | None) -> None:
        if idempotent is not None:
            self.idempotent = idempotent
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return self._delivered()

    async def _delivered(self) -> None:
        self.in_flight -= 1

    async def stop(self) -> None:
        return None


@pytest.mark.parametrize(
    ("idempotent", "configured", "expected"),
    [(None, 4, 1), (False, 4, 1), (True, 4, 4), (True, 8, 5), (True, 1, 1)],
)
async def test_batches_in_flight_follow_kafkas_rule_for_ordered_retries(
    idempotent: bool | None, configured: int, expected: int
) -> None:
    """Several batches in flight only with the idempotent producer, and at most 5; an
    uplink that does not say (None: not connected yet) counts as not idempotent."""
    uplink = Pipelined(idempotent)
    buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    agent = Agent(
        _config(batch_max_readings=1, kafka={"max_in_flight": configured}),
        sources=[],
        uplink=uplink,
        models=[],
        buffer_factory=lambda: buffer,
    )
    agent.buffer = buffer
    agent.ingest(_samples("dev1", range(12)))

    await _forward(agent, lambda: agent.counters.sent == 12)

    assert uplink.most_in_flight == expected


class FakeSession:
    """A broker's persistent session: QoS-1 messages stay until acknowledged and each new
    connection of the session gets every unacknowledged one (redelivery)."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.unacked = {mid: payload for mid, payload in enumerate(payloads, 1)}
        self.connections: list[FakeMqttClient] = []

    def client(self, *args: Any, **kwargs: Any) -> FakeMqttClient:
        return FakeMqttClient(self)


class FakeMqttClient:
    def __init__(self, session: FakeSession) -> None:
        self._session = session
        self._client = types.SimpleNamespace(manual_ack_set=lambda on: None, ack=self._puback)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._gone = asyncio.Event()
        self.messages = self

    def _puback(self, mid: int, qos: int) -> None:
        assert not self._gone.is_set(), "ack on a closed connection"
        self._session.unacked.pop(mid, None)

    async def __aenter__(self) -> FakeMqttClient:
        self._session.connections.append(self)
        for mid, payload in self._session.unacked.items():
            self._queue.put_nowait(
                types.SimpleNamespace(mid=mid, qos=1, topic="city/a", payload=payload)
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._gone.set()

    async def subscribe(self, topic: str, qos: int) -> None:
        return None

    def __aiter__(self) -> FakeMqttClient:
        return self

    def __len__(self) -> int:
        return self._queue.qsize()

    async def __anext__(self) -> Any:
        import aiomqtt

        get = asyncio.ensure_future(self._queue.get())
        gone = asyncio.ensure_future(self._gone.wait())
        await asyncio.wait((get, gone), return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if get.done():
            return get.result()
        get.cancel()
        raise aiomqtt.MqttError("Disconnected during message iteration")


def _senml_source(session: FakeSession, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An MQTT source of SenML payloads whose broker is ``session``; reconnects at once."""
    import aiomqtt

    from edge.config import MqttSourceConfig
    from edge.sources.mqtt_source import MqttSource

    monkeypatch.setattr(aiomqtt, "Client", session.client)
    return MqttSource(
        MqttSourceConfig(
            name="lora",
            topics=("city/#",),
            format="senml",
            reconnect_min_s=0.001,
            reconnect_max_s=0.002,
        ),
        gateway_id="gw1",
    )


class DiskFullWhile(MemoryBuffer):
    """Refuses readings while ``full``; counts the refused appends."""

    def __init__(self) -> None:
        super().__init__(max_bytes=10**7, max_age_s=3600)
        self.full = True
        self.refused = 0

    def append(self, records: Any) -> Any:
        if self.full and any(r.kind is Kind.READING for r in records):
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().append(records)


async def test_unstored_mqtt_messages_are_redelivered_not_counted_as_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused write counted MQTT readings as store_failed while their messages stayed
    unacked on a live connection: never redelivered until something else dropped it (then
    counted as both dropped and delivered), and piling up until the broker stopped
    delivering. Now the source reconnects and the broker redelivers them; only readings
    no source can send again (serial, simulated) count as store_failed."""

    session = FakeSession(
        [
            json.dumps([{"bn": f"st{i}:", "n": "temperature", "v": 20.0 + i}]).encode()
            for i in range(3)
        ]
    )
    mqtt = _senml_source(session, monkeypatch)
    serial = ScriptedSource([_samples("serial-1", range(2))])
    buffer = DiskFullWhile()
    agent = Agent(
        _config(),
        sources=[mqtt, serial],
        uplink=RecordingUplink(),
        models=[],
        buffer_factory=lambda: buffer,
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    # the disk stays full until the serial readings were refused and the broker has
    # redelivered the MQTT messages on a new connection at least once
    await asyncio.wait_for(
        _until(
            lambda: (
                agent.counters.dropped.get("store_failed") == 2
                and len(session.connections) >= 2
                and buffer.refused >= 2
            )
        ),
        timeout=60,
    )
    assert len(session.unacked) == 3  # nothing acked while it could not be stored
    buffer.full = False
    await asyncio.wait_for(_until(lambda: not session.unacked), timeout=60)
    stop.set()
    counters = await asyncio.wait_for(run, timeout=60)

    assert counters.dropped == {"store_failed": 2}  # the serial readings only
    assert counters.accepted == 3  # each MQTT reading once, after the disk had room
    assert mqtt.reconnects == len(session.connections) - 1 >= 1


async def test_a_read_waiting_on_a_connection_dropped_for_redelivery_returns_nothing_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pump waits in read_acked while the writer asks for redelivery; a message that
    reached the dropped connection meanwhile was returned, stored, and then redelivered
    after the failed batch: stored twice, and before it (a review found [2, 1, 2])."""

    def payload(value: float) -> bytes:
        return json.dumps([{"bn": "st1:", "n": "temperature", "v": value}]).encode()

    session = FakeSession([payload(1.0)])
    source = _senml_source(session, monkeypatch)
    await source.start()
    first, delivery = await source.read_acked()
    pending = asyncio.create_task(source.read_acked())  # the pump is back, waiting
    await asyncio.sleep(0)
    connection = session.connections[-1]
    session.unacked[2] = payload(2.0)  # reaches the live connection ...
    connection._queue.put_nowait(
        types.SimpleNamespace(mid=2, qos=1, topic="city/a", payload=payload(2.0))
    )
    delivery.redeliver()  # ... as the writer reports batch 1 unstored
    assert [s.value for s in first] == [1.0]
    stored: list[float] = []  # batch 1 was not stored
    while session.unacked:
        samples, ack = await asyncio.wait_for(pending, timeout=10)
        stored += [s.value for s in samples]
        ack()
        pending = asyncio.create_task(source.read_acked())
    pending.cancel()
    await source.stop()
    assert stored == [1.0, 2.0]  # each once, in the order they were sent


async def test_a_connection_dropped_at_once_is_retried_with_a_growing_delay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A second agent with the same gateway config (same client id) takes the session
    over: the broker drops the other one right after it connects. Each then reconnected at
    once, kicking the other out: thousands of reconnects and log lines a second on both.
    Now a connection lost before it was stable doubles the delay before the next connect,
    the log says what may be going on, and a connection that was stable is retried after
    reconnect_min_s again."""
    import aiomqtt

    from edge.config import MqttSourceConfig
    from edge.sources import mqtt_source
    from edge.sources.mqtt_source import MqttSource

    now = [datetime(2026, 11, 24, 7, 0, tzinfo=UTC)]
    mono = [100.0]  # the monotonic clock, which times connections
    session = FakeSession([])
    up_for = [0.0] * 5 + [3600.0] + [0.0]  # how long each connection lasts

    class TakenOver(FakeMqttClient):
        async def __anext__(self) -> Any:
            if len(session.connections) > 50:  # reconnecting in a tight loop
                raise asyncio.CancelledError
            up = up_for[min(len(session.connections), len(up_for)) - 1]
            now[0] += timedelta(seconds=up)
            mono[0] += up
            raise aiomqtt.MqttError("Disconnected during message iteration")

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        now[0] += timedelta(seconds=seconds)
        mono[0] += seconds
        if len(delays) >= len(up_for):
            raise asyncio.CancelledError

    monkeypatch.setattr(aiomqtt, "Client", lambda *a, **k: TakenOver(session))
    monkeypatch.setattr(mqtt_source.asyncio, "sleep", sleep)
    source = MqttSource(
        MqttSourceConfig(
            name="lora",
            topics=("city/#",),
            format="senml",
            reconnect_min_s=0.5,
            reconnect_max_s=4,
        ),
        gateway_id="gw1",
        clock=lambda: now[0],
        monotonic=lambda: mono[0],
    )
    await source.start()
    with caplog.at_level(logging.WARNING), pytest.raises(asyncio.CancelledError):
        await source.read_acked()

    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 0.5, 1.0]
    assert len(session.connections) == len(up_for)
    assert "another client may be using client id 'climastream-gw1-lora'" in caplog.text


async def test_how_long_an_mqtt_connection_lasted_ignores_wall_clock_steps(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """NTP steps a Pi's wall clock (by days after boot, sometimes back): a connection that
    was up for an hour while the clock stepped back two was judged lost 'after -7200.0s',
    so its retry waited the doubled delay and the log blamed another client with the same
    client id. How long a connection lasted is the monotonic clock's."""
    import aiomqtt

    from edge.config import MqttSourceConfig
    from edge.sources import mqtt_source
    from edge.sources.mqtt_source import MqttSource

    now = [datetime(2026, 11, 24, 7, 0, tzinfo=UTC)]
    mono = [100.0]
    session = FakeSession([])
    refused = [3]  # the broker is down for the first three connects

    class Flaky(FakeMqttClient):
        async def __aenter__(self) -> Flaky:
            if refused[0]:
                refused[0] -= 1
                raise aiomqtt.MqttError("connection refused")
            return await super().__aenter__()  # type: ignore[return-value]

        async def __anext__(self) -> Any:
            mono[0] += 3600.0  # up for an hour, while NTP steps the wall clock back 2 h
            now[0] -= timedelta(hours=2)
            raise aiomqtt.MqttError("Disconnected during message iteration")

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        mono[0] += seconds
        if len(delays) == 4:
            raise asyncio.CancelledError

    monkeypatch.setattr(aiomqtt, "Client", lambda *a, **k: Flaky(session))
    monkeypatch.setattr(mqtt_source.asyncio, "sleep", sleep)
    source = MqttSource(
        MqttSourceConfig(
            name="lora", topics=("city/#",), format="senml", reconnect_min_s=0.5, reconnect_max_s=4
        ),
        gateway_id="gw1",
        clock=lambda: now[0],
        monotonic=lambda: mono[0],
    )
    await source.start()
    with caplog.at_level(logging.WARNING), pytest.raises(asyncio.CancelledError):
        await source.read_acked()

    assert delays == [0.5, 1.0, 2.0, 0.5]  # three refused connects, then a stable hour
    assert "another client may be using" not in caplog.text


class SyncCounting(MemoryBuffer):
    def __init__(self) -> None:
        super().__init__(max_bytes=10**7, max_age_s=3600)
        self.syncs: list[float] = []


@pytest.mark.parametrize(("window", "syncs"), [(5.0, 6), (2.5, 12), (0.5, 60)])
async def test_the_buffer_is_synced_every_fsync_window_not_every_second(
    monkeypatch: pytest.MonkeyPatch, window: float, syncs: int
) -> None:
    """``fsync_window_s: 5`` (the example config's "1-5: less SD wear") synced every
    second all the same: housekeeping synced on each 1 s tick, so a window above 1 s saved
    no SD wear. Now the sync follows the window while the watchdog keeps its second.
    Simulated time (housekeeping's clock and sleep), so no timing is measured."""
    notified: list[str] = []
    monkeypatch.setattr(agent_module.systemd, "notify", lambda message: notified.append(message))
    clock = [1000.0]
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        clock[0] += seconds
        if clock[0] > 1030.0:  # 30 simulated seconds
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr(agent_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(
        agent_module, "asyncio", types.SimpleNamespace(**{**vars(asyncio), "sleep": sleep})
    )
    buffer = SyncCounting()
    buffer.sync = lambda: buffer.syncs.append(clock[0])  # type: ignore[method-assign]
    agent = Agent(
        _config(buffer={"backend": "memory", "fsync_window_s": window}, status_interval_s=3600),
        sources=[],
        uplink=RecordingUplink(),
        models=[],
        buffer_factory=lambda: buffer,
    )
    agent.buffer = buffer
    with pytest.raises(asyncio.CancelledError):
        await agent._housekeeping()

    assert len(buffer.syncs) == syncs
    assert buffer.syncs[0] == 1000.0 + window
    assert notified.count("WATCHDOG=1") >= 30  # still every second (or window)


class _Cycle:
    """A reference cycle: freed only by the cyclic garbage collector."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.parametrize("tune_gc", [True, False])
async def test_housekeeping_collects_garbage_cycles_by_time_with_the_agent_gc_settings(
    monkeypatch: pytest.MonkeyPatch, tune_gc: bool
) -> None:
    """With ``tune_gc`` the collector runs after 10 000 net allocations; at the demo's
    ~50 readings/s that took ~12 minutes, while paho's per-message cycles piled up and
    RSS rose in steps towards the 100 MB budget. Housekeeping now also collects every
    GC_INTERVAL_S; an agent embedded without ``tune_gc`` leaves the process's GC alone.
    The automatic collector is off in this test and time is simulated."""
    monkeypatch.setattr(agent_module.systemd, "notify", lambda message: None)
    clock = [1000.0]
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        clock[0] += seconds
        if clock[0] > 1000.0 + 2 * agent_module.GC_INTERVAL_S:
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr(agent_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(
        agent_module, "asyncio", types.SimpleNamespace(**{**vars(asyncio), "sleep": sleep})
    )
    buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    agent = Agent(
        _config(status_interval_s=3600),
        sources=[],
        uplink=RecordingUplink(),
        models=[],
        buffer_factory=lambda: buffer,
        tune_gc=tune_gc,  # start() is not called: the process's thresholds stay as they are
    )
    agent.buffer = buffer
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        garbage = weakref.ref(_Cycle())
        assert garbage() is not None  # unreachable, but not freed without a collection
        with pytest.raises(asyncio.CancelledError):
            await agent._housekeeping()
        assert (garbage() is None) is tune_gc
    finally:
        gc.collect()
        if was_enabled:
            gc.enable()


class IdempotentRecordingUplink(RecordingUplink):
    idempotent = True


@pytest.mark.parametrize("idempotent", [False, True])
async def test_records_kafka_acknowledged_are_not_sent_again_when_their_ack_fails(
    idempotent: bool,
) -> None:
    """With the disk full, the buffer's ack (a DELETE, which needs WAL room) failed after
    Kafka had acknowledged the batch; the forwarder released it and sent the same batch
    again at every retry: every 10 s for as long as the disk stayed full (reproduced with
    RLIMIT_FSIZE: 1000 duplicate readings in 25 s). Now only the ack is retried; with
    several batches in flight, those acknowledged after it are acked with it."""
    buffer = AckFailsOnce()
    uplink = IdempotentRecordingUplink() if idempotent else RecordingUplink()
    agent = Agent(
        _config(batch_max_readings=5, kafka={"max_in_flight": 5}),
        sources=[],
        uplink=uplink,
        models=[],
        buffer_factory=lambda: buffer,
    )
    agent.buffer = buffer
    agent.ingest(_samples("dev1", range(5)))
    agent.ingest(_samples("dev1", range(5, 10)))
    agent.ingest(_samples("dev1", range(10, 20)))

    await _forward(agent, lambda: agent.counters.sent == 20)

    assert buffer.ack_failures == 1
    sent = [
        (r.device_id, r.seq)
        for topic, value in uplink.records
        if topic == "readings"
        for r in ReadingBatch.model_validate_json(value).readings
    ]
    assert sorted(sent) == [("dev1", i) for i in range(20)]  # each once
    assert buffer.stats().depth == 0


async def test_a_full_disk_is_logged_once_then_summed_up_and_shown_until_it_recovers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While the buffer's disk was full every refused batch logged an ERROR with its
    traceback: 20 a second from one simulated source (RLIMIT_FSIZE reproduction), one per
    reading of a serial sensor, filling the journal on the disk that was full already.
    Nothing but the store_failed counter showed it, and nothing said when it was over.
    Now: the first failure with its traceback, a summary a minute, a line when it works
    again, and ``climastream_edge_buffer_store_failing`` meanwhile."""
    from edge.metrics import AgentCollector

    clock = [5000.0]
    monkeypatch.setattr(agent_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    buffer = DiskFullWhile()
    agent = Agent(
        _config(), sources=[], uplink=RecordingUplink(), models=[], buffer_factory=lambda: buffer
    )
    agent.buffer = buffer
    writer = asyncio.create_task(agent._writer())

    async def batches(n: int, start: int) -> None:
        for i in range(n):
            await agent._queue.put((_samples("serial-1", range(start + i, start + i + 1)), None))
            await agent._queue.join()  # one batch each

    def store_failing() -> float:
        snapshot = agent.snapshot()
        for family in AgentCollector(lambda: snapshot, agent).collect():
            if family.name == "climastream_edge_buffer_store_failing":
                return float(family.samples[0].value)
        raise AssertionError("no buffer_store_failing metric")

    with caplog.at_level(logging.INFO, logger="edge.agent"):
        assert store_failing() == 0.0
        await batches(40, 0)
        assert buffer.refused == 40
        assert store_failing() == 1.0
        clock[0] += 61.0
        await batches(1, 40)
        buffer.full = False
        await batches(1, 41)
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer

    lines = [r for r in caplog.records if "storing readings" in r.getMessage()]
    assert [r.levelname for r in lines] == ["ERROR", "ERROR", "WARNING"]
    assert lines[0].exc_info is not None  # the first with its traceback
    assert "40 more batches refused, 40 lost (store_failed)" in lines[1].getMessage()
    assert "works again" in lines[2].getMessage()
    assert agent.counters.dropped == {"store_failed": 41}
    assert agent.counters.accepted == 1
    assert store_failing() == 0.0


async def test_bad_input_of_a_redelivered_mqtt_message_is_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message the buffer could not store is redelivered by design (never acked before
    it is durable), and its bad input was counted again at every delivery: undecodable
    payloads under their decode-error reason by the source, readings that fail the
    contract as invalid_reading by the agent. Three refused deliveries made 'one bad
    payload, one implausible reading' read as three of each. Now bad input counts when its
    message is acknowledged, as the readings it came with are stored: once."""
    session = FakeSession(
        [
            b"not json",
            json.dumps([{"bn": "st1:", "n": "temperature", "v": 20.0}]).encode(),
            json.dumps([{"bn": "st2:", "n": "temperature", "v": 900.0}]).encode(),
        ]
    )
    mqtt = _senml_source(session, monkeypatch)
    buffer = DiskFullWhile()
    agent = Agent(
        _config(),
        sources=[mqtt],
        uplink=RecordingUplink(),
        models=[],
        buffer_factory=lambda: buffer,
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(
        _until(lambda: len(session.connections) >= 3 and buffer.refused >= 3), timeout=60
    )
    buffer.full = False
    await asyncio.wait_for(_until(lambda: not session.unacked), timeout=60)
    stop.set()
    counters = await asyncio.wait_for(run, timeout=60)

    assert counters.accepted == 1
    assert counters.dropped == {"invalid_reading": 1}
    assert sum(mqtt.decode_errors.values()) == 1, mqtt.decode_errors


class AckLostOnce:
    """An acking source whose first ack finds its connection gone (returns False): the
    broker sends the same message again, which is then acked."""

    name = "acking"
    state = SourceState.UP
    decode_errors: dict[str, int] = {}  # noqa: RUF012

    def __init__(self, samples: list[Sample]) -> None:
        self._samples = samples
        self.deliveries = 0
        self.acked = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def read(self) -> list[Sample]:
        raise AssertionError("the agent reads with read_acked")

    async def read_acked(self) -> tuple[list[Sample], Callable[[], bool]]:
        if self.acked or self.deliveries >= 2:
            await asyncio.Event().wait()
        self.deliveries += 1
        first = self.deliveries == 1

        def ack() -> bool:
            self.acked = not first
            return self.acked

        return list(self._samples), ack


async def test_invalid_readings_of_a_message_whose_ack_was_lost_count_once() -> None:
    """Stored, but the connection dropped before the ack: the broker redelivers the
    message, and its invalid readings were counted at both deliveries."""
    now = datetime.now(UTC)
    source = AckLostOnce(
        [
            Sample("dev1", Quantity.TEMPERATURE, 900.0, "Cel", now, seq=1),
            Sample("dev1", Quantity.TEMPERATURE, 20.0, "Cel", now, seq=2),
        ]
    )
    agent = Agent(
        _config(),
        sources=[source],
        uplink=RecordingUplink(),
        models=[],
        buffer_factory=lambda: MemoryBuffer(max_bytes=10**7, max_age_s=3600),
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(_until(lambda: source.acked), timeout=60)
    stop.set()
    counters = await asyncio.wait_for(run, timeout=60)

    assert source.deliveries == 2
    assert counters.accepted == 2  # the valid reading twice (same seq: deduplicated later)
    assert counters.dropped == {"invalid_reading": 1}


async def test_decode_errors_count_when_the_message_is_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The MQTT source counted a payload's decode error as it decoded it; a delivery whose
    connection was lost before the ack came again and counted it again."""
    session = FakeSession([b"not json"])
    source = _senml_source(session, monkeypatch)
    await source.start()
    samples, delivery = await source.read_acked()
    assert samples == []
    assert source.decode_errors == {}  # not before the ack
    await source._drop()  # the connection is lost before the agent acks
    assert delivery() is False
    assert source.decode_errors == {}
    _, again = await source.read_acked()  # the broker redelivers it
    assert again() is True
    await source.stop()
    assert sum(source.decode_errors.values()) == 1
    assert not session.unacked


async def test_a_retained_message_replayed_at_subscribe_is_acked_not_ingested(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MQTT replays a topic's retained message at every subscribe, so at every reconnect
    (reproduced with Mosquitto: the same retained SenML value came back on three
    connections). Each became a reading: without a device time, a stale value stamped
    with the receive time; without a device counter, a new gateway seq each time, a
    duplicate no consumer can recognise. It is acknowledged and skipped now; a message
    matching the subscription (live or queued in the session) has RETAIN cleared."""

    def payload(value: float) -> bytes:
        return json.dumps([{"bn": "st1:", "n": "temperature", "v": value}]).encode()

    session = FakeSession([])
    source = _senml_source(session, monkeypatch)
    await source.start()
    pending = asyncio.create_task(source.read_acked())
    await asyncio.wait_for(_until(lambda: bool(session.connections)), timeout=60)
    connection = session.connections[-1]
    for mid, value, retain in [(1, 1.0, True), (2, 2.0, False)]:
        session.unacked[mid] = payload(value)
        connection._queue.put_nowait(
            types.SimpleNamespace(
                mid=mid, qos=1, retain=retain, topic="city/a", payload=payload(value)
            )
        )
    samples, ack = await asyncio.wait_for(pending, timeout=60)
    ack()
    await source.stop()

    assert [s.value for s in samples] == [2.0]
    assert source.retained == 1
    # not silent: the gateway status and /metrics carry it as a decode-error reason
    assert source.decode_errors == {"retained_replay": 1}
    assert not session.unacked  # the retained replay is acknowledged too


class DownUplink(RecordingUplink):
    async def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]:
        raise UplinkError("KafkaConnectionError: down")


class DiskFull(MemoryBuffer):
    def __init__(self) -> None:
        super().__init__(max_bytes=10**7, max_age_s=3600)

    def append(self, records: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")


async def test_a_status_neither_sent_nor_buffered_is_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Kafka away and the disk full: buffering the status raised, and housekeeping
    logged 'publishing gateway status failed' with a traceback at every status interval,
    the status lost without a count."""
    buffer = DiskFull()
    agent = Agent(
        _config(),
        sources=[],
        uplink=DownUplink(),
        models=[],
        buffer_factory=lambda: buffer,
    )
    agent.buffer = buffer
    with caplog.at_level(logging.WARNING, logger="edge.agent"):
        await agent._publish_status()
        status = await agent._publish_status()

    assert status.dropped == {"status_evicted": 1}  # the first one, when the second was built
    assert agent.counters.dropped == {"status_evicted": 2}
    unbuffered = [r for r in caplog.records if "neither sent nor buffered" in r.getMessage()]
    assert [r.exc_info is not None for r in unbuffered] == [True, False]


async def test_a_status_file_that_cannot_be_written_does_not_stop_the_send(
    tmp_path: Any,
) -> None:
    """A status file on the full disk raised before the send was even tried, so the
    status (where the cloud side sees store_failed rising) never left while it was."""
    uplink = RecordingUplink()
    buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    agent = Agent(
        _config(),
        sources=[],
        uplink=uplink,
        models=[],
        buffer_factory=lambda: buffer,
        status_file=tmp_path / "missing-dir" / "status.json",
    )
    agent.buffer = buffer
    await agent._publish_status()
    assert [topic for topic, _ in uplink.records] == ["gateway-status"]


class StoppableSource(ScriptedSource):
    """A source whose stop leaves it disabled, as the serial and MQTT sources' do."""

    def __init__(self, name: str, state: SourceState) -> None:
        super().__init__([])
        self.name = name
        self.state = state

    async def stop(self) -> None:
        self.state = SourceState.DISABLED


async def test_the_last_status_of_a_stop_reports_the_sources_as_they_were() -> None:
    """The status sent on a stop (SIGTERM: a restart for a config change or an upgrade)
    said every source was down, the agent having stopped them itself, and the cloud's
    gateway-offline rule pages that at once, as critical. It now says how the sources
    were when the stop came; one really down stays down."""
    uplink = RecordingUplink()
    buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    sources = [
        StoppableSource("plugged", SourceState.UP),
        StoppableSource("unplugged", SourceState.DOWN),
    ]
    agent = Agent(
        _config(), sources=sources, uplink=uplink, models=[], buffer_factory=lambda: buffer
    )
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(_until(lambda: agent.buffer is not None), timeout=60)
    stop.set()
    await asyncio.wait_for(run, timeout=60)

    assert [s.state for s in sources] == [SourceState.DISABLED] * 2  # really stopped
    last = json.loads([v for topic, v in uplink.records if topic == "gateway-status"][-1])
    assert last["sources"] == {"plugged": "up", "unplugged": "down"}
