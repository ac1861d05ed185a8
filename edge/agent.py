"""The gateway agent: the runner that wraps every source with inference, buffering, delivery.

Path of a reading::

    source.read() -> Sample -> reading dict (gateway, zone, ingest time)
        -> models (score / corrected value / derived readings, micro-batched)
        -> gateway seq for devices without their own -> contract validation
        -> durable buffer (accepted; MQTT acked now) -> ReadingBatch record on Kafka (sent)
        -> ack (removed from the buffer)

Nothing is dropped silently: a sample that fails the contract is counted under
``invalid_reading`` (logged once per device and reason); the buffer counts its own drops
(``buffer_full``, ``max_age``, ``power_cut_unsynced``) persistently.

Clocks: a Pi has no real-time clock, and NTP steps the wall clock (by days after a long
power cut) once the uplink is up. Timers, rates, uptime and buffer ages use the monotonic
clock; the wall clock only stamps readings and the status. A reading whose event time the
gateway stamped while its clock is not synchronized (:mod:`edge.clock`) is kept and
flagged ``clock_unsynced``, never dropped; a status says the same in
``clock_synchronized``.

The stored payload of a reading is exactly ``contract.encode`` of the validated
:class:`~climastream.contract.Reading`, produced by :mod:`climastream.fastpath` (same
verdicts and bytes as pydantic, about 1 µs instead of 7; a differential test holds it to
that). The buffer stores the readings of one ingest batch as one chunk, their payloads
already joined with ``,``; a ``readings`` record is a few chunks joined between the batch
prefix and suffix, never re-encoded or re-split.

Threads: the event loop runs sources, the Kafka producer and status; one worker thread
runs the models and every buffer call, so SQLite and onnxruntime never block the loop.
Ingestion and delivery share that thread with bounded steps, so a long backlog drain
never starves live readings of their turn to become durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from climastream import __version__
from climastream.contract import (
    ContractError,
    GatewayStatus,
    Location,
    QualityFlag,
    Quantity,
    SourceState,
    encode,
)
from climastream.fastpath import ReadingEncoder
from edge import systemd
from edge.buffer import (
    Buffer,
    DropReason,
    Kind,
    MemoryBuffer,
    Pending,
    Record,
    SqliteBuffer,
    accounted,
)
from edge.clock import system_clock_synchronized
from edge.config import GatewayConfig, MqttSourceConfig, SimulatedSourceConfig
from edge.inference import ModelRunner
from edge.sources import Sample, Source
from edge.uplink import KafkaUplink, UplinkError

log = logging.getLogger(__name__)

_BATCH_PREFIX = b'{"schema_version":1,"gateway_id":"%s","readings":['
_BATCH_SUFFIX = b"]}"
_FRAME_OVERHEAD = 128
#: Kafka keeps a partition's order across retries with at most 5 requests in flight, and
#: only with the idempotent producer
MAX_IN_FLIGHT_IDEMPOTENT = 5
#: ``outage_capacity_hours`` divides the free space by the ingest rate of this window: long
#: enough that sensors reporting every 5 or 15 minutes (LoRaWAN) give a steady rate
RATE_WINDOW_S = 3600.0
_RATE_BUCKET_S = 60.0
#: Quantity -> its wire name as an exact str (a dict lookup is several times cheaper than
#: the enum's ``.value`` descriptor; a plain-str quantity falls through unchanged)
_QUANTITY_NAMES: dict[Any, str] = {q: q.value for q in Quantity}
_CLOCK_UNSYNCED = QualityFlag.CLOCK_UNSYNCED.value
#: How far behind the true time an unsynchronized gateway clock may be: fake-hwclock
#: restores the last save, so a gateway switched off for months boots that far behind.
#: Until NTP syncs, a device's own time up to this far ahead of the gateway's clock is
#: kept (the stream checks it again against its synchronized clock), not refused as
#: "in the future".
UNSYNCED_MAX_BEHIND = timedelta(days=400)
#: (device, error) pairs an invalid reading was logged for, before the set starts again: it
#: only keeps the log to a line per pair, and devices come and go over months of uptime
WARNED_MAX = 10_000


class Uplink(Protocol):
    async def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]: ...

    async def stop(self) -> None: ...


class StorageError(RuntimeError):
    """A buffer call of the forwarder failed (SQLite: disk full, I/O error); retried."""


#: one read of a source: its samples and, for an acking source, the ack
_Item = tuple[list[Sample], Callable[[], bool | None] | None]


@runtime_checkable
class AckingSource(Protocol):
    """A source whose input must be acknowledged once it is durable (MQTT QoS 1).

    The ack may also have a ``redeliver()`` method: the agent calls it instead when the
    batch could not be stored, and the source has its input sent again (the MQTT source
    reconnects; the broker redelivers what was not acknowledged). Such readings are not
    counted as dropped. Without it, unstored readings count as ``store_failed``.

    An ack that returns False did not acknowledge (the connection is gone): the input
    comes again. The batch's readings that failed the contract are counted as
    ``invalid_reading`` only with an ack that went through (or returned None), so a
    redelivered message's bad readings count once, like the source's decode errors.
    """

    async def read_acked(self) -> tuple[list[Sample], Callable[[], bool | None]]: ...


#: while the buffer refuses writes, a summary is logged this often (not a line per batch)
STORE_FAILING_LOG_S = 60.0


@dataclass
class _StoreFailure:
    """Batches the buffer refused since storing started failing or the last summary."""

    since: float = 0.0
    last_log: float = 0.0
    batches: int = 0
    lost: int = 0
    again: int = 0

    def add(self, lost: int, again: int) -> None:
        self.batches += 1
        self.lost += lost
        self.again += again


@dataclass
class Counters:
    accepted: int = 0
    sent: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    send_failures: int = 0
    #: readings flagged ``clock_unsynced`` at ingest (kept, not dropped)
    clock_unsynced: int = 0

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


#: gen0 collection after this many net container allocations (CPython's default: 700)
GC_GEN0_THRESHOLD = 10_000
#: with the agent's GC settings, housekeeping also collects this often (see tune_gc)
GC_INTERVAL_S = 60.0


def tune_gc() -> None:
    """Garbage-collector settings for the agent's process, applied once start-up is done.

    The hot path allocates a few container objects per reading (sample, reading dict,
    record), nearly all freed by reference counting; the cyclic collector finds nothing in
    them but still scans them, and every full collection also walks the tens of thousands
    of start-up objects (modules, pydantic schemas, the onnxruntime sessions) that live
    for the whole run. Measured on the ``make bench-edge`` path: 16.4 µs per reading with
    CPython's defaults, 14.2 with these two settings, 14.0 with the collector off.

    1. :func:`gc.freeze` moves everything alive after start-up out of the collector's view
       (it is still freed normally if it ever becomes garbage).
    2. A generation-0 threshold of :data:`GC_GEN0_THRESHOLD` instead of 700: cycles are
       still collected, in fewer and larger passes; the garbage it can hold in between is
       bounded by that count.
    3. By time as well: the agent's housekeeping collects every :data:`GC_INTERVAL_S`.
       The threshold counts allocations, so a gateway with few readings reaches it
       rarely: with the demo's ~50 readings/s, every ~12 minutes, while cyclic garbage
       (paho builds a closure cycle per MQTT message it matches) piled up to it. Each
       pile raised the high-water mark of Python's small-object arenas, and RSS rose
       step by step (97.4 to 99.9 MB in 40 minutes, next to the 100 MB budget) with the
       live memory flat. A collection walks only what is not frozen: under 1 ms here.

    ``climastream edge run`` applies it; an :class:`Agent` embedded in another program
    (tests, the benchmark) only when asked (``tune_gc=True``), as it changes the process.
    """
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    gc.freeze()


def build_sources(config: GatewayConfig, *, check: bool = False) -> list[Source]:
    """One source per config entry; unknown kinds cannot get here (the config is typed).

    ``check``: sources for ``climastream edge check``, which must not consume what belongs
    to the running service (an MQTT source connects as its own client, clean session).
    """
    from edge.sources.simulated import SimulatedSource

    sources: list[Source] = []
    for source_config in config.sources:
        if isinstance(source_config, SimulatedSourceConfig):
            sources.append(SimulatedSource(source_config))
        elif check and isinstance(source_config, MqttSourceConfig):
            from edge.sources.mqtt_source import MqttSource

            sources.append(MqttSource(source_config, gateway_id=config.gateway_id, check=True))
        else:
            from edge.sources.factory import build_source

            sources.append(build_source(source_config, config.gateway_id))
    return sources


def batch_payload_bytes(config: GatewayConfig) -> int:
    """Room for joined reading payloads in one ``ReadingBatch`` record (prefix, suffix out)."""
    prefix = _BATCH_PREFIX % config.gateway_id.encode()
    return config.kafka.max_batch_bytes - len(prefix) - _FRAME_OVERHEAD


def open_buffer(config: GatewayConfig) -> Buffer:
    """The configured buffer, chunked like the batches it feeds: a whole chunk of readings
    is the inside of one ``ReadingBatch`` record."""
    cfg = config.buffer
    chunk_records, chunk_bytes = config.batch_max_readings, batch_payload_bytes(config)
    if cfg.backend == "memory":
        return MemoryBuffer(
            max_bytes=cfg.max_bytes,
            max_age_s=cfg.max_age.total_seconds(),
            overflow=cfg.overflow,
            chunk_records=chunk_records,
            chunk_bytes=chunk_bytes,
        )
    return SqliteBuffer(
        cfg.path,
        max_bytes=cfg.max_bytes,
        max_age_s=cfg.max_age.total_seconds(),
        overflow=cfg.overflow,
        fsync_window_s=cfg.fsync_window_s,
        seq_lease=cfg.seq_lease,
        chunk_records=chunk_records,
        chunk_bytes=chunk_bytes,
    )


class Agent:
    """Runs sources, models, the durable buffer and the Kafka uplink until ``stop`` is set."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        sources: Sequence[Source] | None = None,
        uplink: Uplink | None = None,
        buffer_factory: Callable[[], Buffer] | None = None,
        models: Sequence[ModelRunner] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock_synced: Callable[[], bool | None] = system_clock_synchronized,
        status_file: Path | None = None,
        drain_timeout_s: float = 15.0,
        tune_gc: bool = False,
    ) -> None:
        self.config = config
        self.sources = list(sources) if sources is not None else build_sources(config)
        self.uplink: Uplink = uplink or KafkaUplink(config.kafka, client_id=config.gateway_id)
        self._buffer_factory = buffer_factory or (lambda: open_buffer(config))
        self._models_given = models
        self.models: list[ModelRunner] = []
        self.clock = clock
        self._clock_synced = clock_synced
        #: whether ``clock`` was synchronized at the last ingest (None: cannot tell)
        self.clock_synchronized: bool | None = None
        self._clock_check_failed = False
        self.status_file = status_file
        self.drain_timeout_s = drain_timeout_s
        self.tune_gc = tune_gc
        self.counters = Counters()
        self.buffer: Buffer | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=256)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-worker")
        self._new_data = asyncio.Event()
        self._started = time.monotonic()
        self._warned: set[tuple[str, str]] = set()
        self._prefix = _BATCH_PREFIX % config.gateway_id.encode()
        self._batch_bytes = batch_payload_bytes(config)
        self._key = config.gateway_id.encode()
        self._locations: dict[int, tuple[Location, dict[str, float]]] = {}
        self._rate_buckets: deque[list[float]] = deque()  # [start, bytes] per minute
        self._rate_counted = 0  # of _bytes_in, in the buckets
        self._bytes_in = 0
        self.kafka_up = False
        self.last_status: GatewayStatus | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        #: the sources' states when a stop was asked for: the last status reports them, not
        #: the "down" the agent's own stop leaves them in (see :meth:`_shut_down`)
        self._states_at_stop: dict[str, SourceState] | None = None
        #: the buffer refused the last ingest batch (disk full): a gauge on /metrics
        self.store_failing = False
        self._store_failure = _StoreFailure()
        self._status_unbuffered = False  # the last status could not be buffered either

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def _store(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A buffer call of the forwarder; its failure is a :class:`StorageError`."""
        try:
            return await self._in_worker(fn, *args)
        except Exception as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc

    def _essential(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """Watch a task the pipeline needs: the watchdog is fed only while all of them run.

        Each catches and retries its own errors; one that ends anyway (a bug) is logged at
        once with its exception, and the agent stops feeding the watchdog so that systemd
        restarts it rather than leave it up, reporting healthy, with nothing moving.
        """
        self._tasks.append(task)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None and self._stopping:
            return  # the forwarder's drain is done
        log.critical(
            "task %s ended%s; the watchdog is no longer fed",
            task.get_name(),
            "" if exc is None else f" with {exc!r}",
            exc_info=exc,
        )

    def pipeline_alive(self) -> bool:
        """Every essential task (source pumps, writer, forwarder, housekeeping) still runs."""
        return all(not task.done() for task in self._tasks)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the buffer and load models (worker thread), then start every source."""
        self.buffer = await self._in_worker(self._buffer_factory)
        if self._models_given is not None:
            self.models = list(self._models_given)
        else:
            self.models = await self._in_worker(
                lambda: [ModelRunner(m) for m in self.config.models]
            )
        recovered = getattr(self.buffer, "recovered", "clean")
        if recovered != "clean":
            log.warning("buffer recovered after %s dropped=%s", recovered, self.buffer.dropped())
        if self.tune_gc:
            tune_gc()
        for source in self.sources:
            await source.start()

    async def run(self, stop: asyncio.Event) -> Counters:
        await self.start()
        self._stopping = False
        self._states_at_stop = None
        self._tasks = []
        pumps = [
            self._essential(asyncio.create_task(self._pump(s), name=f"pump-{s.name}"))
            for s in self.sources
        ]
        writer = self._essential(asyncio.create_task(self._writer(), name="writer"))
        forwarder_stop = asyncio.Event()
        forwarder = self._essential(
            asyncio.create_task(self._forwarder(forwarder_stop), name="forwarder")
        )
        housekeeping = self._essential(
            asyncio.create_task(self._housekeeping(), name="housekeeping")
        )
        systemd.notify("READY=1")
        try:
            await stop.wait()
        finally:
            # every step is guarded: a task that failed must not keep the uplink open or
            # the buffer unclosed (the next start would take it for a crash)
            self._stopping = True
            systemd.notify("STOPPING=1")
            try:
                await self._shut_down(pumps, writer, forwarder, forwarder_stop, housekeeping)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.uplink.stop(), timeout=10)
                try:
                    assert self.buffer is not None
                    await self._in_worker(self.buffer.close)
                except Exception:
                    log.exception("closing the buffer failed")
                self._worker.shutdown(wait=True)
        return self.counters

    async def _shut_down(
        self,
        pumps: list[asyncio.Task[Any]],
        writer: asyncio.Task[Any],
        forwarder: asyncio.Task[Any],
        forwarder_stop: asyncio.Event,
        housekeeping: asyncio.Task[Any],
    ) -> None:
        # The last status reports the sources as they were, not "down": stopped by the
        # agent itself, they are not failing. Every source down makes the cloud page
        # gateway-offline at once (critical), so a restart (a config change, an upgrade)
        # paged the city. The silence that follows a stop is what the cloud judges: a
        # gateway that does not come back within its timeout is paged, as after a power cut.
        self._states_at_stop = {s.name: s.state for s in self.sources}
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.stop()
        # everything read is now durable (unless the writer is gone: then never)
        joined = asyncio.ensure_future(self._queue.join())
        await asyncio.wait((joined, writer), return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()
        writer.cancel()
        forwarder_stop.set()
        self._new_data.set()
        try:
            await asyncio.wait_for(forwarder, timeout=self.drain_timeout_s)
        except TimeoutError:
            log.warning("shutdown with readings still buffered; they are sent on restart")
        except Exception:
            pass  # logged as it ended (_task_ended)
        housekeeping.cancel()
        await asyncio.gather(writer, housekeeping, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._publish_status(), timeout=10)

    # ------------------------------------------------------------------ ingestion

    async def _pump(self, source: Source) -> None:
        acking = isinstance(source, AckingSource)
        while True:
            try:
                if acking:
                    samples, ack = await source.read_acked()  # type: ignore[attr-defined]
                else:
                    samples, ack = await source.read(), None
            except asyncio.CancelledError:
                raise
            except Exception:
                # A source bug must not end ingestion from the others; it retries.
                log.exception("source read failed source=%s", source.name)
                await asyncio.sleep(1.0)
                continue
            if samples or ack is not None:
                await self._queue.put((samples, ack))

    async def _writer(self) -> None:
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < 64:
                items.append(self._queue.get_nowait())
            samples = [s for chunk, _ in items for s in chunk]
            invalid: list[int] = []
            try:
                stored = await self._in_worker(self.ingest, samples, invalid)
            except Exception as exc:
                self._not_stored(items, exc)
            else:
                if self.store_failing and stored:  # an empty append writes nothing
                    self._stored_again()
                self._acknowledge(items, invalid)
            finally:
                for _ in items:
                    self._queue.task_done()
            self._new_data.set()

    def _acknowledge(self, items: list[_Item], invalid: list[int]) -> None:
        """Ack the stored items; count their invalid readings (positions in the batch).

        The invalid readings of an item whose ack did not go through (False: its MQTT
        connection is gone, the broker sends the message again) are counted when it comes
        again, not now as well. A reading a model derived (past the samples) counts now.
        """
        start = 0
        counted = 0
        marks = iter(invalid)
        mark = next(marks, None)
        for samples, ack in items:
            end = start + len(samples)
            here = 0
            while mark is not None and mark < end:
                here += 1
                mark = next(marks, None)
            start = end
            if ack is not None:
                try:
                    acked = ack()  # durable now: the broker may forget the message
                except Exception:
                    log.exception("acknowledging stored input failed")
                    acked = None
                if acked is False:
                    continue
            counted += here
        counted += sum(1 for _ in marks) + (mark is not None)  # derived readings
        if counted:
            self.counters.drop("invalid_reading", counted)

    def _not_stored(self, items: list[_Item], exc: Exception) -> None:
        """A batch the buffer refused (disk full): its sources redeliver it, or it is lost.

        Readings whose source sends them again (unacked MQTT messages: ``redeliver`` drops
        the connection, the broker redelivers after the reconnect) are not dropped, and
        counting them would count them twice when they are stored later; the others are
        lost here and counted as ``store_failed``.

        Logged once when storing starts failing (with the traceback), then summed up every
        :data:`STORE_FAILING_LOG_S` and when it works again (:meth:`_stored_again`): a full
        disk refuses every batch, and a line with a traceback per batch (every reading of
        a serial sensor) filled the journal of the gateway whose disk was full already.
        """
        lost = again = 0
        for samples, ack in items:
            redeliver = getattr(ack, "redeliver", None)
            if redeliver is None:
                lost += len(samples)
                continue
            again += len(samples)
            try:
                redeliver()
            except Exception:
                log.exception("asking a source to redeliver failed")
        if lost:
            self.counters.drop("store_failed", lost)
        failure, now = self._store_failure, time.monotonic()
        if not self.store_failing:
            self.store_failing = True
            self._store_failure = _StoreFailure(since=now, last_log=now)
            log.error(
                "storing readings failed: %d lost (store_failed), %d to be redelivered; "
                "until it works again this is summed up every %.0fs",
                lost,
                again,
                STORE_FAILING_LOG_S,
                exc_info=exc,
            )
            return
        failure.add(lost, again)
        if now - failure.last_log >= STORE_FAILING_LOG_S:
            log.error(
                "storing readings still fails after %.0fs: %d more batches refused, %d lost "
                "(store_failed), %d to be redelivered: %s",
                now - failure.since,
                failure.batches,
                failure.lost,
                failure.again,
                exc,
            )
            self._store_failure = _StoreFailure(since=failure.since, last_log=now)

    def _stored_again(self) -> None:
        failure = self._store_failure
        self.store_failing = False
        log.warning(
            "storing readings works again after %.0fs (since the last report: %d batches "
            "refused, %d lost as store_failed, %d to be redelivered)",
            time.monotonic() - failure.since,
            failure.batches,
            failure.lost,
            failure.again,
        )

    def _location(self, location: Location) -> dict[str, float]:
        """A device's configured location as the reading carries it (dumped once)."""
        cached = self._locations.get(id(location))
        if cached is None or cached[0] is not location:  # the entry keeps the id in use
            if len(self._locations) >= 10_000:  # config locations are few; stay bounded
                self._locations.clear()
            cached = (location, location.model_dump(exclude_none=True))
            self._locations[id(location)] = cached
        return cached[1]

    def ingest(self, samples: list[Sample], invalid: list[int] | None = None) -> int:
        """Stamp, infer, validate and durably append (worker thread). Returns stored count.

        Readings that fail the contract are counted as ``invalid_reading`` once the append
        succeeded (a batch the buffer refuses is redelivered or counted as ``store_failed``
        as a whole), or, given ``invalid``, their positions are added to it (in order;
        past ``len(samples)``: a reading a model derived) for the caller to count.
        """
        assert self.buffer is not None
        gateway_id = self.config.gateway_id
        default_zone = self.config.zone
        ingest_time = self.clock()
        unsynced = self._check_clock() is False
        flagged = 0
        readings: list[dict[str, Any]] = []
        append_reading = readings.append
        names = _QUANTITY_NAMES
        for (
            device_id,
            quantity,
            value,
            unit,
            event_time,
            seq,
            zone,
            location,
            gateway_time,
        ) in samples:
            reading: dict[str, Any] = {
                "schema_version": 1,
                "device_id": device_id,
                "gateway_id": gateway_id,
                "seq": seq,
                "quantity": names.get(quantity, quantity),
                "value": value,
                "unit": unit,
                "event_time": event_time,
                "ingest_time": ingest_time,
            }
            if location is not None:
                reading["location"] = self._location(location)
            zone = zone or default_zone
            if zone is not None:
                reading["zone"] = zone
            if gateway_time and unsynced:
                reading["quality"] = [_CLOCK_UNSYNCED]
                flagged += 1
            append_reading(reading)
        self.counters.clock_unsynced += flagged
        for model in self.models:
            readings.extend(model.process(readings))
        need: dict[str, int] = {}
        for reading in readings:
            if reading["seq"] is None:
                need[reading["device_id"]] = need.get(reading["device_id"], 0) + 1
        next_seq = self.buffer.next_seqs(need) if need else {}
        records: list[Record] = []
        # one clock read per batch bounds future timestamps; the encoder validates exactly
        # like contract.Reading and returns contract.encode's bytes (tests/unit/contract).
        # An unsynchronized clock is behind (fake-hwclock): it cannot tell a device's
        # right time from a future one, so it refuses only what is far ahead of it.
        bound = ingest_time + UNSYNCED_MAX_BEHIND if unsynced else ingest_time
        encode_reading = ReadingEncoder(bound).encode
        append = records.append
        failed: list[int] = []
        for position, reading in enumerate(readings):
            device_id = reading["device_id"]
            if reading["seq"] is None:
                reading["seq"] = next_seq[device_id]
                next_seq[device_id] += 1
            try:
                payload = encode_reading(reading)
            except (ContractError, ValueError, TypeError) as exc:
                failed.append(position)
                key = (device_id, type(exc).__name__)
                if key not in self._warned:
                    if len(self._warned) >= WARNED_MAX:
                        self._warned.clear()
                    self._warned.add(key)
                    log.warning("invalid reading device=%s error=%s", device_id, exc)
                continue
            append(Record(device_id, reading["seq"], payload))
        admission = self.buffer.append(records)
        self.counters.accepted += admission.stored
        if invalid is not None:
            invalid += failed
        elif failed:
            self.counters.drop("invalid_reading", len(failed))
        if records:
            # what the buffer charges for them (records of one append share a chunk or a
            # few), so the outage-capacity estimate divides like by like
            self._bytes_in += accounted([len(r.payload) for r in records])
        return admission.stored

    def _check_clock(self) -> bool | None:
        """Ask whether the wall clock is synchronized (once per ingest batch, ~3 µs);
        log when that changes."""
        try:
            synced = self._clock_synced()
        except Exception:
            if not self._clock_check_failed:  # once, not once per batch
                log.exception("checking the clock synchronization failed")
            self._clock_check_failed = True
            synced = None
        if synced is not self.clock_synchronized:
            if synced is False:
                log.warning(
                    "gateway clock not synchronized (no NTP yet): readings it stamps are "
                    "flagged clock_unsynced"
                )
            elif synced and self.clock_synchronized is False:
                log.info("gateway clock synchronized now=%s", self.clock().isoformat())
            self.clock_synchronized = synced
        return synced

    # ------------------------------------------------------------------ delivery

    def _take(self, kind: Kind) -> list[Pending]:
        assert self.buffer is not None
        if kind is Kind.STATUS:
            return self.buffer.take(kind, 20)
        return self.buffer.take(kind, self.config.batch_max_readings, self._batch_bytes)

    def _batch_record(self, pending: list[Pending]) -> bytes:
        """The ``ReadingBatch`` record of taken readings, in one copy.

        Each slice is already its readings joined with ``,`` (usually a whole chunk), so the
        record is built without splitting or re-encoding. One ``join`` of all the parts:
        ``prefix + b",".join(...) + suffix`` copied ~600 KB three times per batch, 0.3 µs
        per reading more, mostly page faults of the fresh buffers.
        """
        parts = [self._prefix]
        for p in pending:
            parts += (p.payload, b",")
        parts[-1] = _BATCH_SUFFIX
        return b"".join(parts)

    def _max_in_flight(self) -> int:
        """Batches in flight: ``kafka.max_in_flight`` (at most 5) with an idempotent
        producer, else one.

        Without idempotence a failed batch is not the end of its successors: with several
        in flight the later ones can land after the oldest failed, then everything is
        resent from the oldest, and a device's readings reach the partition out of order
        (seqs 2..5, 0..5). Kafka's own rule: only one request in flight keeps order across
        retries without idempotence. An uplink that does not know yet (not connected) or
        does not say (``idempotent`` absent) counts as not idempotent.
        """
        if getattr(self.uplink, "idempotent", None) is True:
            return min(self.config.kafka.max_in_flight, MAX_IN_FLIGHT_IDEMPOTENT)
        return 1

    async def _forwarder(self, stop: asyncio.Event) -> None:
        """Send buffered records in order, batches in flight as :meth:`_max_in_flight`
        allows; ack in order.

        Never ends on an error: a failed send (:class:`UplinkError`) or buffer call (disk
        full: in WAL mode even the DELETE of an ack needs room) is logged, the taken
        records are released and, after a backoff, sent again from the oldest unacked one
        (a resend repeats ``(device, seq)`` pairs; consumers deduplicate). Records Kafka
        has acknowledged are never sent again because their ack failed: the retry repeats
        only the ack (a full disk refused every ack and the same batch went to Kafka again
        at each retry, every 10 s for as long as the disk stayed full). It returns once
        ``stop`` is set and nothing is left to send, or still failing at an 8 s backoff.
        """
        assert self.buffer is not None
        buffer = self.buffer
        backoff = 0.5
        topic = self.config.kafka.readings_topic
        in_flight: deque[tuple[Awaitable[Any], int, int]] = deque()
        #: (last, count) of records Kafka acknowledged whose ack the buffer has not taken
        delivered: tuple[int, int] | None = None
        traced = False  # a failing buffer's traceback is logged once until it works again
        while True:
            try:
                if delivered is not None:
                    await self._store(buffer.ack, Kind.READING, delivered[0])
                    self.counters.sent += delivered[1]
                    delivered = None
                while len(in_flight) < self._max_in_flight():  # known once connected
                    pending = await self._store(self._take, Kind.READING)
                    if not pending:
                        break
                    record = self._batch_record(pending)
                    future = await self.uplink.send(topic, self._key, record)
                    in_flight.append((future, pending[-1].last, sum(p.count for p in pending)))
                if not in_flight:
                    await self._send_buffered_status()
                    if stop.is_set():
                        return
                    self._new_data.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._new_data.wait(), timeout=self.config.batch_max_wait_s
                        )
                    continue
                future, last, count = in_flight.popleft()
                await future
                self.kafka_up = True
                delivered = (last, count)
                await self._store(buffer.ack, Kind.READING, last)
                self.counters.sent += count
                delivered = None
                backoff = 0.5
                traced = False
            except Exception as exc:
                if isinstance(exc, StorageError):
                    # Kafka has the records (or will not get them yet): sent again later
                    log.error(
                        "buffer failed while forwarding, retrying in %.1fs: %s",
                        backoff,
                        exc,
                        exc_info=None if traced else exc.__cause__,
                    )
                    traced = True
                else:
                    if not isinstance(exc, UplinkError):
                        log.exception("unexpected error while sending; retrying")
                    self.kafka_up = False
                    self.counters.send_failures += 1
                    log.warning("kafka send failed, retrying in %.1fs: %s", backoff, exc)
                # settle the rest before retrying in order; those Kafka acknowledged right
                # after records whose ack failed join them (acked, not sent again)
                chained = delivered is not None
                for future, last, count in in_flight:
                    try:
                        await future
                    except Exception:
                        chained = False  # resent from here, with everything after it
                        continue
                    if chained and delivered is not None:
                        delivered = (last, delivered[1] + count)
                in_flight.clear()
                await self._in_worker(buffer.release, Kind.READING)  # a cursor reset
                if stop.is_set() and backoff >= 8.0:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _send_buffered_status(self) -> None:
        assert self.buffer is not None
        pending = await self._store(self._take, Kind.STATUS)
        if not pending:
            return
        try:
            futures = [  # one Kafka message per status record
                await self.uplink.send(self.config.kafka.status_topic, self._key, payload)
                for item in pending
                for payload in item.payloads()
            ]
            for future in futures:
                await future
            await self._store(self.buffer.ack, Kind.STATUS, pending[-1].last)
        except UplinkError:
            await self._in_worker(self.buffer.release, Kind.STATUS)
            return
        except Exception:  # the forwarder logs it and retries
            await self._in_worker(self.buffer.release, Kind.STATUS)
            raise

    # ------------------------------------------------------------------ health

    def snapshot(self) -> GatewayStatus:
        """Build the current GatewayStatus (worker thread: it reads the buffer)."""
        assert self.buffer is not None
        stats = self.buffer.stats()
        now = time.monotonic()
        rate = self._ingest_rate(now)
        capacity_h: float | None = None
        if rate > 0:
            free = max(0, self.buffer.max_bytes - stats.bytes)
            capacity_h = free / rate / 3600.0
            capacity_h = min(capacity_h, self.config.buffer.max_age.total_seconds() / 3600.0)
        dropped = dict(self.counters.dropped)
        for reason, count in self.buffer.dropped().items():
            dropped[reason] = dropped.get(reason, 0) + count
        decode_errors: dict[str, int] = {}
        for source in self.sources:
            for reason, count in source.decode_errors.items():
                decode_errors[reason] = decode_errors.get(reason, 0) + count
        latency = {m.id: m.last_latency_ms for m in self.models if m.last_latency_ms is not None}
        model_errors = {m.id: sum(m.failures.values()) for m in self.models if m.failures}
        return GatewayStatus(
            gateway_id=self.config.gateway_id,
            time=self.clock(),
            software_version=__version__,
            uptime_s=now - self._started,
            # read with ``time``: the cloud must not take an unsynchronized clock's time
            # for when the gateway came back (stream/alerts/README.md, Inhibition)
            clock_synchronized=self._check_clock(),
            buffer_depth=stats.depth,
            buffer_bytes=stats.bytes,
            buffer_capacity_bytes=self.buffer.max_bytes,
            buffer_oldest_age_s=stats.oldest_age_s,
            outage_capacity_hours=capacity_h,
            readings_accepted_total=self.counters.accepted,
            readings_sent_total=self.counters.sent,
            dropped=dropped,
            decode_errors=decode_errors,
            sources=self._states_at_stop or {s.name: s.state for s in self.sources},
            model_latency_ms=latency,
            model_errors=model_errors,
        )

    def _ingest_rate(self, now: float) -> float:
        """Bytes per second accepted over the last :data:`RATE_WINDOW_S` (worker thread).

        Bytes are counted in one-minute buckets as snapshots see them; the window is the
        whole buckets of the last hour, or the time since the agent started if that is
        shorter (at least a second): a plain average of what was seen, steady for a sensor
        that reports every few minutes. Just after a start it errs towards a shorter
        capacity, never a longer one, while a few readings stand for the whole rate.
        """
        added = self._bytes_in - self._rate_counted
        self._rate_counted = self._bytes_in
        buckets = self._rate_buckets
        start = now - now % _RATE_BUCKET_S
        if added:
            if buckets and buckets[-1][0] == start:
                buckets[-1][1] += added
            else:
                buckets.append([start, float(added)])
        oldest = start + _RATE_BUCKET_S - RATE_WINDOW_S  # whole buckets, this one included
        while buckets and buckets[0][0] < oldest:
            buckets.popleft()
        span = max(now - max(oldest, self._started), 1.0)
        return sum(b for _, b in buckets) / span

    async def status(self) -> GatewayStatus:
        return await self._in_worker(self.snapshot)

    async def _publish_status(self) -> GatewayStatus:
        """Send the status, or buffer it while Kafka is away.

        A full disk stops neither the send (the status file failing to write is logged)
        nor the next status: one that can be neither sent nor buffered is counted as
        ``status_evicted`` (a newer one follows), its traceback logged once a run.
        """
        status = await self.status()
        self.last_status = status
        if self.status_file is not None:
            try:
                tmp = self.status_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(status.model_dump(mode="json")))
                os.replace(tmp, self.status_file)
            except OSError as exc:
                log.warning("writing the status file failed: %s", exc)
        payload = encode(status)
        try:
            future = await asyncio.wait_for(
                self.uplink.send(self.config.kafka.status_topic, status.key, payload), timeout=5
            )
            await asyncio.wait_for(future, timeout=5)
        except (UplinkError, TimeoutError):
            # buffered; evicted first when the buffer is full (a newer status supersedes it)
            assert self.buffer is not None
            record = Record(self.config.gateway_id, 0, payload, Kind.STATUS)
            try:
                await self._in_worker(self.buffer.append, [record])
            except Exception as exc:
                self.counters.drop(DropReason.STATUS_EVICTED)
                log.warning(
                    "gateway status neither sent nor buffered, counted as status_evicted "
                    "(a newer one follows): %s",
                    exc,
                    exc_info=None if self._status_unbuffered else exc,
                )
                self._status_unbuffered = True
            else:
                self._status_unbuffered = False
        return status

    async def _housekeeping(self) -> None:
        """Status, age expiry, fsync window, the systemd watchdog and (with ``tune_gc``) the
        garbage collector, each on its cadence.

        The watchdog is fed only while every essential task runs (:meth:`pipeline_alive`):
        an agent whose forwarder, writer or a source's pump has ended is restarted by
        systemd (``WatchdogSec``), not left reporting itself healthy.

        The buffer is synced every ``fsync_window_s`` (not every tick: a window of 5 s is
        five times fewer fsyncs than one of 1 s, which is what it is set for); the tick,
        one second or a shorter window, paces the rest.
        """
        assert self.buffer is not None
        buffer = self.buffer
        window = self.config.buffer.fsync_window_s
        tick = min(1.0, window) if window > 0 else 1.0
        next_status = time.monotonic() + self.config.status_interval_s
        next_expire = time.monotonic() + 60.0
        next_sync = time.monotonic() + window
        next_gc = time.monotonic() + GC_INTERVAL_S
        while True:
            delay = tick
            if window > 0:  # wake for the sync on time, not at the next whole tick
                delay = max(0.0, min(tick, next_sync - time.monotonic()))
            await asyncio.sleep(delay)
            if self.pipeline_alive():
                systemd.notify("WATCHDOG=1")
            if window > 0 and time.monotonic() >= next_sync:
                next_sync = time.monotonic() + window
                try:
                    await self._in_worker(buffer.sync)
                except Exception:
                    log.exception("syncing the buffer failed")
            try:
                self.last_status = await self.status()  # what /metrics serves
            except Exception:
                # a status that cannot be built must not end this loop (and with it the
                # watchdog pings, fsyncs and expiry): log it and try again next tick
                log.exception("building the gateway status failed")
            now = time.monotonic()
            if self.tune_gc and now >= next_gc:  # see tune_gc
                next_gc = now + GC_INTERVAL_S
                gc.collect()
            if now >= next_expire:
                next_expire = now + 60.0
                try:
                    await self._in_worker(buffer.expire)
                except Exception:
                    log.exception("expiring old readings failed")
            if now >= next_status:
                next_status = now + self.config.status_interval_s
                try:
                    await self._publish_status()
                except Exception:
                    log.exception("publishing gateway status failed")
