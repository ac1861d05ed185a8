"""The Faust agents in ``test_context()``: stage 1 turns a ReadingBatch into device
partials re-keyed by zone, stage 2 turns partials plus watermarks into KpiValues."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
import pytest

from climastream.contract import KpiValue, Quantity, Reading, ReadingBatch, decode, encode
from stream.app import StreamSettings, create_app
from stream.config import StreamConfig
from stream.windows import DeviceWindows, to_us

T0 = datetime(2024, 7, 1, 10, 0, tzinfo=UTC)


def temperature(
    device: str, seq: int, seconds: float, *, value: float = 20.0, zone: str = "centre"
) -> Reading:
    """A temperature reading of gateway "gw", made (and received) ``seconds`` after T0."""
    at = T0 + timedelta(seconds=seconds)
    return Reading(device_id=device, gateway_id="gw", seq=seq, quantity=Quantity.TEMPERATURE,
                   value=value, unit="Cel", event_time=at, ingest_time=at,
                   zone=zone)  # fmt: skip


def batch_of(readings: list[Reading]) -> bytes:
    """The encoded ReadingBatch record of gateway "gw"."""
    return encode(ReadingBatch(gateway_id="gw", readings=tuple(readings)))


def _agent(app: Any, name: str) -> Any:
    return next(a for key, a in app.agents.items() if key.endswith(name))


class Sent:
    """The records the app hands to its producer, by topic: (key, value, partition)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes, int | None]] = []

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None,
        headers: dict[str, bytes] | None,
    ) -> None:
        self.records.append((topic, key, value, partition))

    def values(self, topic: str) -> list[bytes]:
        return [value for name, _, value, _ in self.records if name == topic]


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def app(tmp_path: Any, sent: Sent) -> Any:
    config = StreamConfig.model_validate({"window": "10s", "grace": "1s"})
    return create_app(
        StreamSettings(config=config, store="memory", data_dir=str(tmp_path), app_id="t"),
        produce=sent,
    )


async def test_devices_agent_closes_windows_by_event_time(app: Any, sent: Sent) -> None:
    # 0, 4, 8 s in window 0; 12 s closes it (12 >= 10 + 1 grace)
    readings = [temperature("d1", i, 4 * i, value=20.0 + i) for i in range(4)]
    agent = _agent(app, "devices")
    async with agent.test_context() as ctx:
        await ctx.put(key=b"gw", value=batch_of(readings))
    items = [item for raw in sent.values("t-kpi-partials") for item in orjson.loads(raw)["items"]]
    assert len(items) == 1
    key, reference, partial = items[0]
    assert (key, reference) == ("centre", False)
    assert partial["q"] == {"temperature": [20.0, 21.0, 22.0]}
    assert partial["ws"] == to_us(T0)


async def test_the_devices_agent_cuts_hour_windows_on_the_citys_clock(
    tmp_path: Any, sent: Sent
) -> None:
    """In Kolkata (+05:30) an hour window starts at :30 UTC, the local :00."""
    config = StreamConfig.model_validate({"window": "1h", "grace": "1s",
                                          "timezone": "Asia/Kolkata"})  # fmt: skip
    kolkata = create_app(
        StreamSettings(config=config, store="memory", data_dir=str(tmp_path), app_id="t"),
        produce=sent,
    )
    # 10:00 UTC (15:30 IST) and 10:40 UTC, then 11:31 UTC closes 10:30-11:30 UTC
    readings = [temperature("d1", i, s) for i, s in enumerate([0, 2400, 5460])]
    async with _agent(kolkata, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch_of(readings))
    items = [item for raw in sent.values("t-kpi-partials") for item in orjson.loads(raw)["items"]]
    assert [(p["ws"], p["we"], len(p["q"]["temperature"])) for _, _, p in items] == [
        (to_us(T0 - timedelta(minutes=30)), to_us(T0 + timedelta(minutes=30)), 1),
        (to_us(T0 + timedelta(minutes=30)), to_us(T0 + timedelta(minutes=90)), 1),
    ]


async def test_zones_agent_emits_kpis_on_watermark(app: Any, sent: Sent) -> None:
    partial = {"d": "d1", "g": "gw", "z": "centre", "ws": to_us(T0),
               "we": to_us(T0 + timedelta(seconds=10)), "q": {"noise_laeq": [60.0, 70.0]},
               "l": {}, "m": []}  # fmt: skip
    agent = _agent(app, "zones")
    async with agent.test_context() as ctx:
        await ctx.put(key=b"0", value=orjson.dumps(
            {"src": 0, "wm": None, "items": [["centre", False, partial]]}))  # fmt: skip
        assert sent.values("kpi") == []  # no watermark from the 4 stage-1 partitions yet
        for src in range(4):
            await ctx.put(key=b"0", value=orjson.dumps(
                {"src": src, "wm": partial["we"], "items": []}))  # fmt: skip
    out = [decode(raw, KpiValue) for raw in sent.values("kpi")]
    laeq = [k for k in out if k.kpi_id == "noise.laeq" and k.device_id is None]
    assert laeq[0].value == pytest.approx(67.4036, abs=1e-3)  # 10*log10((1e6+1e7)/2)
    assert laeq[0].window_start == T0


async def test_metrics_count_duplicates_resets_and_readings(app: Any, sent: Sent) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from stream.app import EngineCollector

    def batch(seqs_and_seconds: list[tuple[int, int]]) -> bytes:
        return batch_of([temperature("d1", seq, at) for seq, at in seqs_and_seconds])

    registry = CollectorRegistry()
    registry.register(EngineCollector(app))
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch([(40, 0), (41, 1), (42, 2)]))
        await ctx.put(key=b"gw", value=batch([(41, 1)]))  # redelivered: a duplicate
        await ctx.put(key=b"gw", value=batch([(0, 3), (1, 4)]))  # the counter restarted
    text = generate_latest(registry).decode()
    assert "climastream_stream_readings_total 6.0" in text
    assert "climastream_stream_duplicate_readings_total 1.0" in text
    assert "climastream_stream_counter_resets_total 1.0" in text
    assert 'climastream_stream_partitions{stage="devices"} 1.0' in text


async def test_a_catch_up_that_closes_many_windows_is_split_into_bounded_records(
    tmp_path: Any,
) -> None:
    """Thousands of device windows closing at once must not make one oversized record
    (the producer refuses records over 1 MiB, and the worker crashed on it)."""

    async def kpis_with(limit: int) -> tuple[list[bytes], list[str]]:
        sent = Sent()
        config = StreamConfig.model_validate({"window": "10s", "grace": "1s"})
        settings = StreamSettings(
            config=config, store="memory", data_dir=str(tmp_path / str(limit)), app_id="t",
            partials_record_bytes=limit,
        )  # fmt: skip
        app = create_app(settings, produce=sent)
        # windows [0,10) of 40 devices close when t=12 s arrives
        readings = [
            temperature(f"d{d}", s, 3 * s, zone=f"z{d % 3}") for s in range(5) for d in range(40)
        ]
        async with _agent(app, "devices").test_context() as ctx:
            await ctx.put(key=b"gw", value=batch_of(readings))
        partials = sent.values("t-kpi-partials")
        async with _agent(app, "zones").test_context() as ctx:
            # each record to the partition it was sent to (a source's watermark in one
            # partition covers only the items that partition got before it)
            for topic, _, raw, target in sent.records:
                if topic == "t-kpi-partials":
                    await ctx.put(key=b"0", value=raw, partition=target)
            end = to_us(T0 + timedelta(seconds=60))
            for src in range(1, 4):  # the other stage-1 partitions' watermarks
                mark = {"src": src, "wm": end, "items": []}
                for target in range(4):
                    await ctx.put(key=b"0", value=orjson.dumps(mark), partition=target)
        kpis = sorted(
            f"{k.kpi_id} {k.zone} {k.device_id} {k.window_start} {k.value} {k.sample_count}"
            for k in (decode(raw, KpiValue) for raw in sent.values("kpi"))
        )
        return partials, kpis

    big_records, reference = await kpis_with(1024 * 1024)
    small_records, kpis = await kpis_with(2048)
    assert len(small_records) >= len(big_records) + 2  # some target got several records
    for raw in small_records:
        record = orjson.loads(raw)
        assert len(raw) <= 2048 + 64 or len(record["items"]) == 1
    marks = [orjson.loads(raw)["wm"] is not None for raw in small_records]
    assert sum(marks) <= 4  # one watermark per target partition, after its items
    assert reference
    assert kpis == reference


async def test_checkpoint_size_is_a_metric_and_a_big_one_is_logged_once(
    tmp_path: Any, sent: Sent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole partition's state is one Kafka record: operators see it approach 1 MB."""
    from prometheus_client import CollectorRegistry, generate_latest

    import stream.app
    from stream.app import EngineCollector

    monkeypatch.setattr(stream.app, "CHECKPOINT_WARN_BYTES", 1000)
    config = StreamConfig.model_validate({"window": "10s", "grace": "1s"})
    app = create_app(
        StreamSettings(
            config=config, store="memory", data_dir=str(tmp_path), app_id="t",
            checkpoint_interval_s=0,
        ),
        produce=sent,
    )  # fmt: skip
    registry = CollectorRegistry()
    registry.register(EngineCollector(app))

    def batch(devices: int, seq: int) -> bytes:
        return batch_of([temperature(f"d{i}", seq, seq) for i in range(devices)])

    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch(1, 0))
        small = generate_latest(registry).decode()
        with caplog.at_level(logging.WARNING, logger="stream.app"):
            await ctx.put(key=b"gw", value=batch(20, 1))
            await ctx.put(key=b"gw", value=batch(20, 2))
    big = generate_latest(registry).decode()

    def size(text: str) -> float:
        line = next(
            line for line in text.splitlines()
            if line.startswith('climastream_stream_checkpoint_bytes{partition="0",stage="devices"}')
        )  # fmt: skip
        return float(line.rsplit(" ", 1)[1])

    assert 0 < size(small) < 1000 < size(big)
    warnings = [r.getMessage() for r in caplog.records if "rewritten every" in r.getMessage()]
    assert len(warnings) == 1
    assert "stage=s1 partition=0" in warnings[0]


async def test_a_checkpoint_bigger_than_a_part_is_stored_in_parts_and_restored(
    tmp_path: Any, sent: Sent
) -> None:
    """Past ``checkpoint_part_bytes`` the state goes in parts under a manifest; a partition
    loaded again (a new owner) restores it whole: redelivered readings are duplicates."""
    config = StreamConfig.model_validate({"window": "10s", "grace": "1s"})
    app = create_app(
        StreamSettings(
            config=config, store="memory", data_dir=str(tmp_path), app_id="t",
            checkpoint_interval_s=0, checkpoint_part_bytes=300,
        ),
        produce=sent,
    )  # fmt: skip
    stage1, _ = app.climastream_stages
    first = batch_of([temperature(f"d{i}", 1, 1) for i in range(20)])
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=first)
        table = app.tables["kpi-state"]
        manifest = orjson.loads(table[b"s1:0"])
        assert manifest["parts"] > 1
        assert all(len(table[b"s1:0:%d:%d" % (manifest["gen"], i)]) <= 300
                   for i in range(manifest["parts"]))  # fmt: skip
        restored_before = stage1[0].engine.stats.added
        stage1.clear()  # the partition's next event loads it from the table
        await ctx.put(key=b"gw", value=first)  # redelivered after the "crash"
        engine = stage1[0].engine
        assert (engine.stats.added, engine.stats.duplicates) == (restored_before, 20)


async def test_stale_and_replayed_partials_are_metrics(app: Any, sent: Sent) -> None:
    """A device window for a zone window already closed is dropped under a named reason,
    exported: ``stale`` (lost readings) apart from ``replayed`` (sent again by a restarted
    stage-1 partition, already counted)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from stream.app import EngineCollector

    registry = CollectorRegistry()
    registry.register(EngineCollector(app))
    partial = {"d": "d1", "g": "gw", "z": "centre", "ws": to_us(T0),
               "we": to_us(T0 + timedelta(seconds=10)), "q": {"temperature": [20.0, 21.0]},
               "l": {}, "m": []}  # fmt: skip
    item = orjson.dumps({"src": 0, "wm": None, "items": [["centre", False, partial]]})
    async with _agent(app, "zones").test_context() as ctx:
        await ctx.put(key=b"0", value=item)
        for src in range(4):
            mark = {"src": src, "wm": partial["we"], "items": []}
            await ctx.put(key=b"0", value=orjson.dumps(mark))
        assert sent.values("kpi")
        await ctx.put(key=b"0", value=item)  # stage-1 partition 0 replaying: skipped
        _, stage2 = app.climastream_stages
        stage2[0].engine.add("centre", partial, False)  # from no known source: stale
    text = generate_latest(registry).decode()
    assert "climastream_stream_replayed_partials_total 1.0" in text
    assert "climastream_stream_stale_partials_total 1.0" in text
    assert "climastream_stream_stale_readings_total 2.0" in text


def _ms(seconds: float) -> int:
    """A fetch stamp (aiokafka's, ms of the wall clock), ``seconds`` after T0."""
    return to_us(T0 + timedelta(seconds=seconds)) // 1000


def _items(sent: Sent) -> list[Any]:
    return [item for raw in sent.values("t-kpi-partials") for item in orjson.loads(raw)["items"]]


class _Synced:
    """``changelog_synced``: records, per call, how many device windows had been sent and
    the checkpoint of stage-1 partition 0 the table held (what a new owner restores)."""

    def __init__(self, sent: Sent) -> None:
        self.sent = sent
        self.app: Any = None
        self.calls: list[tuple[int, bytes]] = []

    async def __call__(self, p: int) -> None:
        self.calls.append((len(_items(self.sent)), self.app.tables["kpi-state"][b"s1:%d" % p]))


class _Timer(NamedTuple):
    app: Any
    synced: _Synced  # what the changelog held at each sync (unless one was given)
    close: Any  # the close tick of one stage-1 partition (app.climastream_close_partition)
    stage1: Any  # the stage-1 partitions, by number


def _timer_app(
    tmp_path: Any, sent: Sent, changelog_synced: Callable[[int], Awaitable[None]] | None = None
) -> _Timer:
    """An app of 10 s windows with 1 s grace, whose close tick the test calls itself."""
    config = StreamConfig.model_validate({"window": "10s", "grace": "1s"})
    settings = StreamSettings(config=config, store="memory", data_dir=str(tmp_path),
                              app_id="t", checkpoint_interval_s=3600)  # fmt: skip
    synced = _Synced(sent)
    synced.app = app = create_app(
        settings, produce=sent, changelog_synced=changelog_synced or synced
    )
    stage1, _ = app.climastream_stages
    return _Timer(app, synced, app.climastream_close_partition, stage1)


async def test_a_wall_clock_close_reaches_the_changelog_before_its_window_is_sent(
    tmp_path: Any, sent: Sent
) -> None:
    """The close timer checkpoints a wall-clock close and waits for the changelog before it
    sends the window: a worker killed in between used to leave the checkpoint from before
    the close, and its successor put a later reading into the window, sent it again, and
    the zone stage skipped it as a replay: the reading was lost. Restored from what the
    changelog holds when the window leaves, that reading is late (counted and routed)."""
    app, synced, close, stage1 = _timer_app(tmp_path, sent)
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", i, 2 * i) for i in range(4)]))
        caught_up = stage1[0].offset + 1  # the high watermark: nothing more to read
        await close(0, _ms(11.5), caught_up)
        assert synced.calls == []  # one fetch seen: caught up as of no time yet
        await close(0, _ms(12.0), caught_up)  # caught up as of 11.5 s: [0,10) + 1 s passed
    assert [partial["q"] for _, _, partial in _items(sent)] == [
        {"temperature": [20.0, 20.0, 20.0, 20.0]}
    ]
    ((sent_before, stored),) = synced.calls
    assert sent_before == 0
    successor = DeviceWindows(timedelta(seconds=10), timedelta(seconds=1))
    successor.restore(orjson.loads(stored)["state"])
    assert [p["q"] for p in successor.close()] == [{"temperature": [20.0] * 4}]  # sent again
    after = temperature("d1", 4, 8.0)  # in the broker, not read before the worker died
    assert successor.add([after]) == [after]


async def test_a_restored_partition_checkpoints_a_wall_clock_close_before_any_event(
    tmp_path: Any, sent: Sent
) -> None:
    """A partition loaded from the table that has read nothing since (its gateways are
    quiet) still closes on the wall clock, and still checkpoints that first."""
    app, synced, close, stage1 = _timer_app(tmp_path, sent)
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 0, 1.0)]))
        caught_up = stage1[0].offset + 1
        await close(0, _ms(5.0), caught_up)
        await close(0, _ms(6.0), caught_up)  # caught up as of 5 s: checkpointed, nothing closes
        stage1.clear()  # a new owner: loaded from the table at the next tick, no event read
        await close(0, _ms(11.0), caught_up)
        await close(0, _ms(12.5), caught_up)  # caught up as of 11 s: [0,10) + 1 s passed
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 1, 25.0)]))  # reads on
        assert sent.values("late-readings") == []
    assert len(synced.calls) == 2
    sent_before, stored = synced.calls[1]
    assert sent_before == 0
    assert orjson.loads(stored)["state"]["wall"] == to_us(T0 + timedelta(seconds=10))
    assert [partial["ws"] for _, _, partial in _items(sent)] == [to_us(T0)]


async def test_a_wall_clock_close_whose_checkpoint_fails_sends_nothing(
    tmp_path: Any, sent: Sent
) -> None:
    """The broker refused the checkpoint: the worker stops (the timer's wrapper crashes the
    app on this error) rather than act on a close that a replay would not repeat."""
    from stream.checkpoints import CheckpointNotWritten

    async def refused(p: int) -> None:
        raise OSError("broker gone")

    app, _, close, stage1 = _timer_app(tmp_path, sent, refused)
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 0, 1.0)]))
        caught_up = stage1[0].offset + 1
        await close(0, _ms(11.0), caught_up)
        with pytest.raises(CheckpointNotWritten, match=r"s1:0 .*broker gone"):
            await close(0, _ms(12.0), caught_up)
        with pytest.raises(CheckpointNotWritten):  # while the worker stops: the next tick
            await close(0, _ms(12.5), caught_up)
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 1, 25.0)]))  # the agent
    assert _items(sent) == []
    assert stage1[0].engine.stats.added == 1


async def test_a_worker_resuming_from_a_stall_does_not_close_on_its_old_high_watermark(
    tmp_path: Any, sent: Sent
) -> None:
    """A worker that did not run for 2 s resumes with the high watermark of its last fetch,
    from before, while the readings of those 2 s wait at the broker. The timer used to
    close windows on the wall clock of the resumed tick, so that window's readings of
    the pause came late. Caught up is as of the fetch *before* the one that reported the
    high watermark (that fetch was requested after it): a response the broker built before
    the pause, stamped when the worker resumed, does not count as after it."""
    app, _, close, stage1 = _timer_app(tmp_path, sent)
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 0, 5.0)]))
        caught_up = stage1[0].offset + 1
        await close(0, _ms(8.0), caught_up)
        await close(0, _ms(9.5), caught_up)  # caught up as of 8 s
        # the worker stops from 9.6 s to 13 s; [0,10) + 1 s grace passes meanwhile
        await close(0, _ms(9.5), caught_up)  # resumed: no fetch since
        await close(0, _ms(13.0), caught_up)  # the empty long poll of 9.5 s, stamped now
        assert _items(sent) == []
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 1, 9.0)]))  # next fetch
        assert sent.values("late-readings") == []
        await close(0, _ms(13.5), stage1[0].offset + 1)  # caught up as of 13 s
    assert [partial["q"] for _, _, partial in _items(sent)] == [{"temperature": [20.0, 20.0]}]


@pytest.mark.parametrize("stall_seen_before_the_rebalance", [False, True])
async def test_a_rebalance_when_the_broker_returns_keeps_the_wall_clock_held(
    tmp_path: Any, sent: Sent, stall_seen_before_the_rebalance: bool
) -> None:
    """The broker's return after a minute-long outage often brings a rebalance (the group's
    sessions expired meanwhile): the worker reloads its partitions with new fetch clocks.
    A new clock used to know nothing of the stall, so the worker closed the outage's
    windows on the wall clock before the gateways reconnected, and their buffered readings
    were late (the cloud broker outage test, on CI). It starts from what the worker's
    clocks knew, whether or not one had seen the stall end before the rebalance."""
    app, _, close, stage1 = _timer_app(tmp_path, sent)
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 0, 1.0)]))
        caught_up = stage1[0].offset + 1
        await close(0, _ms(5.0), caught_up)
        await close(0, _ms(6.5), caught_up)  # caught up as of 5 s: [0,10) stays open
        # the broker is paused from 6.5 s to 70 s; then it returns
        if stall_seen_before_the_rebalance:
            await close(0, _ms(70.0), caught_up)
        stage1.clear()  # revoked and assigned again: reloaded with a new clock
        await close(0, _ms(71.5), caught_up)
        await close(0, _ms(73.0), caught_up)
        await close(0, _ms(74.5), caught_up)
        assert _items(sent) == []  # without the hold: caught up as of 73 s closes [0,10)
        # the gateway reconnects and delivers what it buffered during the outage
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 1, 8.0)]))
        assert sent.values("late-readings") == []
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 2, 75.0)]))  # live again
    assert [partial["q"] for _, _, partial in _items(sent)] == [{"temperature": [20.0, 20.0]}]


def test_a_worker_remembers_a_hold_until_its_fetches_pass_its_end() -> None:
    from stream.app import FetchClock, WorkerFetches

    worker = WorkerFetches()
    assert worker.clock() == FetchClock()  # a new worker: nothing to start from
    worker.note(FetchClock(latest_ms=70_000, held_at_ms=6_500, held_until_ms=110_000))
    worker.note(FetchClock(latest_ms=71_000))  # another partition, no stall seen
    assert worker.clock() == FetchClock(since_ms=71_000, held_at_ms=6_500, held_until_ms=110_000)
    worker.note(FetchClock(latest_ms=109_000))
    assert worker.clock().held_at_ms == 6_500
    worker.note(FetchClock(latest_ms=110_000))  # the allowance is over
    assert worker.clock() == FetchClock(since_ms=110_000)


async def test_a_partition_without_traffic_passes_its_watermark_on_by_the_wall_clock(
    tmp_path: Any, sent: Sent
) -> None:
    """A city with fewer gateways than partitions: a stage-1 partition that never gets a
    record is caught up (its high watermark is 0) and moves its watermark on the wall
    clock, so the zone stage does not wait for it forever."""
    app, synced, close, _ = _timer_app(tmp_path, sent)
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=batch_of([temperature("d1", 0, 1.0)]))  # partition 0
        await close(3, _ms(20.0), 0)
        await close(3, _ms(21.5), 0)  # caught up as of 20 s: 19 s is past [0,10) + grace
    marks = [orjson.loads(value) for value in sent.values("t-kpi-partials")]
    assert [(m["src"], m["wm"], m["items"]) for m in marks] == [
        (3, to_us(T0 + timedelta(seconds=10)), [])
    ] * 4  # to every partition of the zone stage
    assert len(synced.calls) == 1  # checkpointed before it was sent


async def test_a_stage1_partition_holding_the_zone_windows_back_is_a_metric_and_a_log_line(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The zone stage waits for every stage-1 partition's watermark by design; when one
    stops (its worker hangs without losing its partitions), KPIs stopped and neither a
    metric nor the log said why. Now each partition's watermark lag is a metric, the held
    zone windows are, and a warning names the partition, at most once a minute."""
    from prometheus_client import CollectorRegistry, generate_latest

    from stream.app import EngineCollector

    now = T0 + timedelta(minutes=10)
    registry = CollectorRegistry()
    registry.register(EngineCollector(app, clock=lambda: now))
    partial = {"d": "d1", "g": "gw", "z": "centre", "ws": to_us(T0),
               "we": to_us(T0 + timedelta(seconds=10)), "q": {"temperature": [20.0]},
               "l": {}, "m": []}  # fmt: skip
    watch = app.climastream_watch_watermarks
    async with _agent(app, "zones").test_context() as ctx:
        item = {"src": 0, "wm": None, "items": [["centre", False, partial]]}
        await ctx.put(key=b"0", value=orjson.dumps(item))
        for src in (0, 1, 2):  # partition 3 sends nothing
            mark = {"src": src, "wm": to_us(now - timedelta(seconds=15)), "items": []}
            await ctx.put(key=b"0", value=orjson.dumps(mark))
        with caplog.at_level(logging.WARNING, logger="stream.app"):
            watch(now)
            watch(now + timedelta(seconds=1))  # within the minute: not again
        text = generate_latest(registry).decode()
        assert 'climastream_stream_watermark_lag_seconds{source="3"} +Inf' in text
        assert 'climastream_stream_watermark_lag_seconds{source="0"} 15.0' in text
        assert 'climastream_stream_held_zone_windows{partition="0"} 1.0' in text
        assert 'climastream_stream_oldest_held_zone_window_seconds{partition="0"} 590.0' in text
        (record,) = [r for r in caplog.records if "waits for stage-1" in r.getMessage()]
        assert "partition(s) 3 (no watermark received yet)" in record.getMessage()
        assert "holds 1 zone windows from 2024-07-01T10:00:00+00:00" in record.getMessage()
        # partition 3 comes back, its worker having caught up to the 10:00:10 window
        mark = {"src": 3, "wm": partial["we"], "items": []}
        await ctx.put(key=b"0", value=orjson.dumps(mark))
        assert app.climastream_stages[1][0].engine.held() is None  # the window closed
        text = generate_latest(registry).decode()
        assert 'climastream_stream_watermark_lag_seconds{source="3"} 590.0' in text
        assert 'climastream_stream_held_zone_windows{partition="0"} 0.0' in text


class _Thread:
    """Faust's aiokafka consumer thread, holding ``consumer`` (aiokafka's)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> Any:
        return self.consumer


class _Faust:
    def __init__(self, thread: Any) -> None:
        self._thread = thread


class _NoPollStamp:
    """An aiokafka consumer without ``last_poll_timestamp`` (renamed in some version)."""

    def highwater(self, tp: Any) -> int:
        return 1


@pytest.mark.parametrize(
    "consumer",
    [object(), _Faust(object()), _Faust(_Thread(_NoPollStamp()))],
    ids=["no consumer thread", "no _ensure_consumer", "no last_poll_timestamp"],
)
def test_without_aiokafka_fetch_stamps_a_quiet_partition_closes_as_of_the_previous_tick(
    consumer: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fetch stamp comes through Faust's private consumer thread. When any step of
    that is missing (another driver, a Faust or aiokafka release that renamed it), the
    time of the tick stands in for it, so windows still close on the wall clock, as of
    the previous tick, and a warning says the pause protection is off. Before, an aiokafka
    consumer without ``last_poll_timestamp`` raised AttributeError in the close timer on
    every tick: no window closed on the wall clock again."""
    from stream import app as app_module
    from stream.app import FetchClock, last_fetch_ms

    now = [100.0]
    monkeypatch.setattr(app_module.time, "time", lambda: now[0])
    monkeypatch.setattr(app_module, "_warned_no_fetch_stamp", False, raising=False)
    clock = FetchClock()
    with caplog.at_level(logging.WARNING, logger="stream.app"):
        first = last_fetch_ms(consumer, "tp")
        assert first == 100_000
        assert clock.caught_up_as_of(first, 1, 0) is None  # one tick: as of no time yet
        now[0] = 100.25
        second = last_fetch_ms(consumer, "tp")
        assert clock.caught_up_as_of(second, 1, 0) == datetime.fromtimestamp(100.0, UTC)
        now[0] = 100.5
        assert clock.caught_up_as_of(last_fetch_ms(consumer, "tp"), 2, 0) is None  # behind
    warnings = [r for r in caplog.records if "fetch" in r.getMessage()]
    assert len(warnings) == 1  # once per process


def test_with_aiokafka_fetch_stamps_the_stamp_is_the_consumers() -> None:
    from stream.app import last_fetch_ms

    class Stamped(_NoPollStamp):
        def last_poll_timestamp(self, tp: Any) -> int | None:
            return 1234 if tp == "tp" else None

    faust_consumer = _Faust(_Thread(Stamped()))
    assert last_fetch_ms(faust_consumer, "tp") == 1234
    assert last_fetch_ms(faust_consumer, "other") is None  # no fetch response yet


class _FakeAdmin:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.created: list[str] = []
        self.new_topics: list[Any] = []

    async def list_topics(self) -> list[str]:
        return ["readings"]

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"topic": n, "error_code": 0, "partitions": [{}] * self.partitions} for n in names]

    async def create_topics(self, topics: list[Any]) -> None:
        self.created += [t.name for t in topics]
        self.new_topics += topics

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("partitions", [4, 6])
async def test_a_readings_topic_with_another_partition_count_is_refused(
    partitions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream import app as stream_app

    admin = _FakeAdmin(partitions)

    async def start_admin(_bootstrap: str, _security: object = None) -> _FakeAdmin:
        return admin

    monkeypatch.setattr(stream_app, "start_admin", start_admin)
    settings = stream_app.StreamSettings(app_id="t")
    if partitions == 4:
        await stream_app.ensure_topics(settings)
        assert admin.created == ["t-kpi-partials", "t-kpi-state-changelog"]
    else:
        with pytest.raises(stream_app.TopicMismatch, match="'readings' has 6 partitions"):
            await stream_app.ensure_topics(settings)
        assert admin.created == []


async def test_internal_topics_are_replicated_as_the_settings_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The changelog is the KPI state's only copy off the worker: one replica on a
    cluster would lose it with one broker."""
    from climastream.topics import Durability
    from stream import app as stream_app

    admin = _FakeAdmin(4)

    async def start_admin(_bootstrap: str, _security: object = None) -> _FakeAdmin:
        return admin

    monkeypatch.setattr(stream_app, "start_admin", start_admin)
    settings = stream_app.StreamSettings(app_id="t", durability=Durability(3, 2))
    await stream_app.ensure_topics(settings)
    shapes = {
        t.name: (t.num_partitions, t.replication_factor, t.topic_configs["min.insync.replicas"])
        for t in admin.new_topics
    }
    assert shapes == {"t-kpi-partials": (4, 3, "2"), "t-kpi-state-changelog": (4, 3, "2")}


def test_settings_take_the_replication_of_topics_create_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from climastream import topics
    from climastream.topics import Durability

    monkeypatch.delenv("CLIMASTREAM_STREAM_CONFIG", raising=False)
    monkeypatch.delenv(topics.MIN_INSYNC_ENV, raising=False)
    monkeypatch.setenv(topics.REPLICATION_ENV, "3")
    settings = StreamSettings.from_env()
    assert settings.durability == Durability(3, 2)
    app = create_app(replace(settings, store="memory", app_id="t"), produce=Sent())
    assert app.conf.topic_replication_factor == 3
    monkeypatch.delenv(topics.REPLICATION_ENV)
    assert StreamSettings.from_env().durability == Durability(1, 1)  # the local stack's


def test_a_bad_replication_variable_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from climastream import topics
    from climastream.cli import main

    monkeypatch.delenv("CLIMASTREAM_STREAM_CONFIG", raising=False)
    monkeypatch.setenv(topics.REPLICATION_ENV, "2")
    monkeypatch.setenv(topics.MIN_INSYNC_ENV, "3")
    assert main(["stream", "worker", "--kafka", "127.0.0.1:1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("stream worker: min.insync.replicas 3 is more than the replication")


async def test_the_state_changelog_is_compacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery reads the changelog from its start: with the delete policy it held every
    checkpoint of the last 7 days (Kafka's default retention), each the whole state of a
    partition, rewritten every second, instead of the last one per key."""
    from stream import app as stream_app

    admin = _FakeAdmin(4)

    async def start_admin(_bootstrap: str, _security: object = None) -> _FakeAdmin:
        return admin

    monkeypatch.setattr(stream_app, "start_admin", start_admin)
    await stream_app.ensure_topics(stream_app.StreamSettings(app_id="t"))
    policies = {t.name: t.topic_configs.get("cleanup.policy") for t in admin.new_topics}
    # the partials are a stream between the stages, not a table: kept by time
    assert policies == {"t-kpi-state-changelog": "compact", "t-kpi-partials": None}


def faust_topics(app: Any) -> set[str]:
    """Every topic a Faust app consumes or keeps a table in, as its consumer subscribes."""
    names = {t for agent in app.agents.values() for t in agent.channel.topics}
    names |= {table.changelog_topic.get_topic_name() for table in app.tables.values()}
    if not app.conf.topic_disable_leader:
        names.add(app._leader_assignor._leader_topic_name)
    return names


async def test_the_worker_subscribes_only_to_topics_created_before_it_starts(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production broker does not auto-create topics: each one must be made by
    'climastream topics create' (the contract) or by ensure_topics (internal ones)."""
    from climastream.contract import TOPICS
    from stream import app as stream_app

    admin = _FakeAdmin(4)

    async def start_admin(_bootstrap: str, _security: object = None) -> _FakeAdmin:
        return admin

    monkeypatch.setattr(stream_app, "start_admin", start_admin)
    await stream_app.ensure_topics(StreamSettings(app_id="t"))
    created = {spec.name for spec in TOPICS} | set(admin.created)
    assert faust_topics(app) <= created, faust_topics(app) - created


@pytest.mark.parametrize(
    ("text", "seconds"), [("", 3.0), ("10s", 10.0), ("10", 10.0), ("1m", 60.0), (" 6.5 ", 6.5)]
)
def test_the_session_timeout_comes_from_the_environment(text: str, seconds: float) -> None:
    from stream.app import SESSION_TIMEOUT_ENV, session_timeout_from_env

    assert session_timeout_from_env({SESSION_TIMEOUT_ENV: text}) == seconds


@pytest.mark.parametrize("text", ["ten", "0s", "-5", "PT10S"])
def test_a_bad_session_timeout_names_the_variable(text: str) -> None:
    from stream.app import SESSION_TIMEOUT_ENV, SessionTimeoutError, session_timeout_from_env

    with pytest.raises(SessionTimeoutError, match=SESSION_TIMEOUT_ENV):
        session_timeout_from_env({SESSION_TIMEOUT_ENV: text})


def test_the_app_joins_its_group_with_the_settings_session_timeout(tmp_path: Any) -> None:
    """Apache Kafka refuses a join below group.min.session.timeout.ms (6 s by default)."""
    settings = StreamSettings(
        store="memory", data_dir=str(tmp_path), app_id="t", session_timeout_s=10.0
    )
    conf = create_app(settings, produce=Sent()).conf
    assert (conf.broker_session_timeout, conf.broker_heartbeat_interval) == (10.0, 1.0)
    local = create_app(replace(settings, session_timeout_s=3.0), produce=Sent()).conf
    assert (local.broker_session_timeout, local.broker_heartbeat_interval) == (3.0, 1.0)
    short = create_app(replace(settings, session_timeout_s=1.5), produce=Sent()).conf
    assert short.broker_heartbeat_interval == 0.5  # a third of the session at most


class SentWithHeaders(Sent):
    """:class:`Sent` that also keeps each record's headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[tuple[str, dict[str, bytes] | None]] = []

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None,
        headers: dict[str, bytes] | None,
    ) -> None:
        await super().__call__(topic, key, value, partition, headers)
        self.headers.append((topic, headers))


async def test_one_reading_from_the_future_does_not_dead_letter_its_batch(
    tmp_path: Any,
) -> None:
    """A device clock 2 h ahead of the stream's used to send its gateway's whole record
    (all the good readings with it) to dead-letter. Now the good readings are processed and
    only the bad one is dead-lettered, named, and counted per reading."""
    from prometheus_client import CollectorRegistry, generate_latest

    from stream.app import EngineCollector

    sent = SentWithHeaders()
    config = StreamConfig.model_validate({"window": "10s", "grace": "1s"})
    app = create_app(
        StreamSettings(config=config, store="memory", data_dir=str(tmp_path), app_id="t"),
        produce=sent,
    )
    registry = CollectorRegistry()
    registry.register(EngineCollector(app))
    now = datetime.now(UTC)
    start = now - timedelta(minutes=10)

    def reading(device: str, seq: int, at: datetime) -> dict[str, Any]:
        return {"device_id": device, "gateway_id": "gw", "seq": seq, "quantity": "temperature",
                "value": 20.0, "unit": "Cel", "event_time": at.isoformat(),
                "ingest_time": now.isoformat(), "zone": "centre"}  # fmt: skip

    good = [reading(f"d{i % 5}", i, start + timedelta(seconds=i)) for i in range(40)]
    ahead = reading("fast-clock", 7, now + timedelta(hours=2))
    record = orjson.dumps({"gateway_id": "gw", "readings": [*good[:17], ahead, *good[17:]]})
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=record)
    text = generate_latest(registry).decode()
    assert "climastream_stream_readings_total 40.0" in text
    assert 'climastream_stream_dead_letter_readings_total{reason="contract"} 1.0' in text
    (dead,) = sent.values("dead-letter")
    ((_, headers),) = [(t, h) for t, h in sent.headers if t == "dead-letter"]
    assert headers is not None
    assert headers["reason"] == b"partial-batch"
    # the sink and the alert engine dead-letter the same reading: say whose this is
    assert headers["consumer"] == b"stream"
    assert (headers["source_topic"], headers["source_offset"]) == (b"readings", b"0")
    error = headers["error"].decode()
    assert "readings.17 (device fast-clock): " in error
    assert "event_time" in error
    assert orjson.loads(dead) == {"schema_version": 1, "gateway_id": "gw", "readings": [ahead]}
    # the 40 good readings went on to the windows: their first windows closed
    partials = [orjson.loads(raw) for raw in sent.values("t-kpi-partials")]
    assert sum(len(p["items"]) for p in partials) > 0


async def test_a_partial_batch_replayed_after_a_restore_splits_the_same_way(
    tmp_path: Any,
) -> None:
    """Redelivered after a crash, the record's kept readings are duplicates of the restored
    checkpoint and its rejected reading is dead-lettered again, identically."""
    sent = SentWithHeaders()
    config = StreamConfig.model_validate({"window": "10s", "grace": "1s"})
    app = create_app(
        StreamSettings(
            config=config, store="memory", data_dir=str(tmp_path), app_id="t",
            checkpoint_interval_s=0,
        ),
        produce=sent,
    )  # fmt: skip
    stage1, _ = app.climastream_stages
    now = datetime.now(UTC)
    good = [orjson.loads(encode(r)) for r in (temperature(f"d{i}", 1, 1) for i in range(5))]
    for item in good:
        item["event_time"] = item["ingest_time"] = now.isoformat()
    ahead = {
        **good[0],
        "device_id": "fast-clock",
        "event_time": (now + timedelta(hours=2)).isoformat(),
    }
    record = orjson.dumps({"gateway_id": "gw", "readings": [ahead, *good]})
    async with _agent(app, "devices").test_context() as ctx:
        await ctx.put(key=b"gw", value=record)
        added = stage1[0].engine.stats.added
        stage1.clear()  # the partition's next event restores it from the table
        await ctx.put(key=b"gw", value=record)
        engine = stage1[0].engine
        assert (added, engine.stats.added, engine.stats.duplicates) == (5, 5, 5)
    first, again = sent.values("dead-letter")
    assert first == again
    assert orjson.loads(first)["readings"] == [ahead]


def test_after_a_broker_outage_the_wall_clock_waits_for_the_gateways_to_reconnect() -> None:
    """A minute-long broker outage: the gateways buffer their readings and deliver them
    only after they reconnect, seconds after the worker's fetches resume. Closing windows
    on the wall clock of the resumed fetches made the outage's readings late (its windows'
    KPIs lost them). The wall clock stays where the stall began for the allowance."""
    from stream.app import FetchClock

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    clock = FetchClock()  # allowance: 40 s
    stamps = [100_000, 101_500, 103_000]  # live: a fetch response every 1.5 s
    answers = [clock.caught_up_as_of(ms, 1, 0) for ms in stamps]
    assert answers == [None, at(100.0), at(101.5)]
    # paused from 103 s to 163 s: no response meanwhile, then one every 1.5 s again
    for ms in range(163_000, 203_000, 1_500):
        assert clock.caught_up_as_of(ms, 1, 0) == at(103.0)
    assert clock.caught_up_as_of(203_500, 1, 0) == at(202.0)  # the allowance is over
    assert clock.caught_up_as_of(205_000, 1, 0) == at(203.5)


def test_fetches_a_few_seconds_apart_hold_nothing() -> None:
    from stream.app import FetchClock

    clock = FetchClock()
    assert clock.caught_up_as_of(100_000, 1, 0) is None
    assert clock.caught_up_as_of(105_000, 1, 0) == datetime.fromtimestamp(100.0, UTC)
    assert clock.caught_up_as_of(106_500, 1, 0) == datetime.fromtimestamp(105.0, UTC)
