"""The InfluxDB sink: Kafka result topics -> line protocol -> InfluxDB v2 write API.

Three layers, each with one job (Telegraf's output / running_output split):

* :class:`InfluxWriter` is the plugin: one gzip'd line-protocol request to
  ``/api/v2/write`` with explicit precision, and the translation of every HTTP outcome into
  the typed errors of :mod:`sinks.errors`. No retries, no state.
* :class:`BatchWriter` wraps it: retries retriable errors with capped exponential backoff
  and jitter, honouring ``Retry-After``; bisects a batch the database partly refused
  (400/422/413) down to the refused lines; counts everything. It never drops a line
  silently: a line is either acknowledged or returned as rejected with the reason.
* :class:`SinkRunner` drives Kafka: decode, render, batch (about 5,000 lines or the linger
  time), write with at most ``max_in_flight`` batches pending, and commit each batch's
  offsets only after the database acknowledged it (in order). While the in-flight limit is
  reached the consumer's partitions are paused, so memory stays bounded while the database
  is slow or down. Records that fail the contract and lines the database refused go to the
  ``dead-letter`` topic with reason headers before their offsets are committed.

Delivery is at least once; a replay rewrites identical points (same series, same
timestamp), so nothing is duplicated in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, SecretStr

from climastream.contract import (
    PARTIAL_BATCH_REASON,
    Alert,
    BatchSplit,
    ContractError,
    GatewayStatus,
    KpiValue,
    Topics,
    dead_letter_source,
    decode,
    decode_batch,
)
from climastream.extras import require
from climastream.topics import start_client
from sinks.config import SinkConfig
from sinks.errors import (
    AuthError,
    BackpressureError,
    FatalWriteError,
    PartialWriteError,
    RetriableWriteError,
    ServerError,
    SinkError,
    TransportError,
)
from sinks.lineprotocol import (
    LineProtocolError,
    Precision,
    alert_line,
    gateway_status_line,
    kpi_line,
    reading_line,
)
from sinks.metrics import SinkMetrics

log = logging.getLogger(__name__)

#: the ``error`` header of a dead letter is cut at this many bytes
DEAD_LETTER_ERROR_BYTES = 2000
#: a partial-batch dead letter names rejected readings up to about this many characters
DEAD_LETTER_ERROR_CHARS = 1800

#: a gzip stream (wbits 16+15) compressed in a worker thread above this size
_THREAD_GZIP_BYTES = 64 * 1024


def lines_for(topic: str, raw: bytes, precision: Precision = Precision.NS) -> list[str]:
    """Decode one record of ``topic`` and render its points.

    Raises ContractError (the record breaks the contract) or LineProtocolError. Of a
    ``readings`` record whose envelope is sound, only the valid readings are rendered
    (:func:`render_record` also returns the rejected ones).
    """
    return render_record(topic, raw, precision)[0]


def render_record(
    topic: str,
    raw: bytes,
    precision: Precision = Precision.NS,
    appended_at: datetime | None = None,
) -> tuple[list[str], BatchSplit | None]:
    """The points of one record of ``topic``, and for ``readings`` the record's split
    (:func:`climastream.contract.decode_batch`, the decision every consumer makes).
    ``appended_at``: when the broker appended the record, if its topic stamps that
    (LogAppendTime; see :func:`~sinks.lineprotocol.gateway_status_line`).

    Raises ContractError (the record breaks the contract) or LineProtocolError.
    """
    if topic == Topics.READINGS.name:
        split = decode_batch(raw)
        return [reading_line(r, precision) for r in split.readings], split
    if topic == Topics.GATEWAY_STATUS.name:
        status = decode(raw, GatewayStatus)
        return [gateway_status_line(status, precision, appended_at)], None
    return _lines_of(topic, raw, precision), None


#: aiokafka's ConsumerRecord.timestamp_type of a broker-stamped record
LOG_APPEND_TIME = 1


def appended_at(record: Any) -> datetime | None:
    """When the broker appended ``record``, if its topic stamps the log-append time; None
    for a producer's create time (a gateway's clock, as wrong as its status's time)."""
    if getattr(record, "timestamp_type", None) != LOG_APPEND_TIME or record.timestamp is None:
        return None
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)


def _lines_of(topic: str, raw: bytes, precision: Precision) -> list[str]:
    renderers: dict[str, tuple[type[BaseModel], Callable[[Any, Precision], str]]] = {
        Topics.KPI.name: (KpiValue, kpi_line),
        Topics.ALERTS.name: (Alert, alert_line),
    }
    if topic not in renderers:
        raise ContractError(f"no line-protocol schema for topic {topic!r}")
    model, render = renderers[topic]
    return [render(decode(raw, model), precision)]


def gzip_bytes(payload: bytes, level: int) -> bytes:
    """A gzip member (what ``Content-Encoding: gzip`` means); zlib releases the GIL."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(payload) + compressor.flush()


def parse_retry_after(value: str | None, now: Callable[[], datetime]) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


class InfluxWriter:
    """One InfluxDB v2 write request per call; every outcome becomes a typed error.

    ``start()`` opens the HTTP session, ``write()`` may be called concurrently, ``close()``
    is idempotent. Nothing is buffered here, so nothing can be lost on close.
    """

    def __init__(
        self,
        url: str,
        org: str,
        token: SecretStr,
        *,
        precision: Precision = Precision.NS,
        gzip_level: int = 1,
        timeout_s: float = 30.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.url = url.rstrip("/")
        self.org = org
        self._token = token
        self.precision = precision
        self.gzip_level = gzip_level
        self.timeout_s = timeout_s
        self._now = now
        self._session: Any = None

    async def start(self) -> None:
        aiohttp = require("aiohttp", "sinks")
        if self._session is None:
            headers = {"Content-Type": "text/plain; charset=utf-8"}
            if self._token.get_secret_value():
                headers["Authorization"] = f"Token {self._token.get_secret_value()}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=16),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> InfluxWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, bucket: str, lines: Sequence[str]) -> None:
        """Send ``lines`` to ``bucket``; returns only when the database acknowledged them."""
        aiohttp = require("aiohttp", "sinks")
        if self._session is None:
            raise RuntimeError("InfluxWriter.write() before start()")
        payload = "\n".join(lines).encode()
        headers = {}
        if self.gzip_level > 0:
            if len(payload) > _THREAD_GZIP_BYTES:
                payload = await asyncio.to_thread(gzip_bytes, payload, self.gzip_level)
            else:
                payload = gzip_bytes(payload, self.gzip_level)
            headers["Content-Encoding"] = "gzip"
        params = {"org": self.org, "bucket": bucket, "precision": self.precision.value}
        try:
            async with self._session.post(
                f"{self.url}/api/v2/write", params=params, data=payload, headers=headers
            ) as resp:
                if resp.status in (200, 204):
                    return
                body = (await resp.text())[:2000]
                raise self._error(resp.status, body, resp.headers.get("Retry-After"), bucket)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransportError(f"no answer from {self.url}: {type(exc).__name__}: {exc}") from exc

    def _error(self, status: int, body: str, retry_after: str | None, bucket: str) -> SinkError:
        where = f"org {self.org!r}, bucket {bucket!r} at {self.url}"
        if status in (429, 503):
            return BackpressureError(
                f"HTTP {status} from {where}: {body}",
                status=status,
                body=body,
                retry_after=parse_retry_after(retry_after, self._now),
            )
        if status in (401, 403):
            return AuthError(
                f"HTTP {status}: InfluxDB refused the token for {where}. Check the token "
                "(CLIMASTREAM_INFLUX_TOKEN or influx.token_file) and that it may write to "
                f"that bucket in org {self.org!r}. Server said: {body}",
                status=status,
                body=body,
            )
        if status in (400, 413, 422):
            return PartialWriteError(
                f"HTTP {status} from {where}: {body}", status=status, body=body
            )
        if status == 404:
            return FatalWriteError(
                f"HTTP 404 from {where}: the org or bucket does not exist (run "
                f"'climastream sink init') or the URL is not an InfluxDB v2 API: {body}",
                status=status,
                body=body,
            )
        if status >= 500:
            return ServerError(f"HTTP {status} from {where}: {body}", status=status, body=body)
        return FatalWriteError(f"HTTP {status} from {where}: {body}", status=status, body=body)


class WriteAborted(SinkError):
    """The batch was not acknowledged before shutdown gave up; its offsets stay uncommitted."""


@dataclass
class WriteResult:
    written: int = 0
    #: (index into the batch, reason) of lines the database refused
    rejected: list[tuple[int, str]] = field(default_factory=list)


class Writer(Protocol):
    """The plugin interface :class:`BatchWriter` and :class:`SinkRunner` drive.

    ``start()`` before the first ``write()``; ``write()`` returns only after the database
    acknowledged every line, or raises a :mod:`sinks.errors` error; ``close()`` is
    idempotent and loses nothing (a writer holds no buffer).
    """

    async def start(self) -> None: ...

    async def write(self, bucket: str, lines: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


class BatchWriter:
    """Retries, backoff and bisection around a writer. See the module docstring.

    ``write()`` returns a :class:`WriteResult` once every line is either acknowledged or
    known to be refused; it raises :class:`FatalWriteError` (stop the sink) or
    :class:`WriteAborted` (``abort`` was set while waiting).
    """

    def __init__(
        self,
        writer: Writer,
        metrics: SinkMetrics,
        *,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 30.0,
        abort: asyncio.Event | None = None,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.abort = abort or asyncio.Event()
        self._jitter = jitter
        self._clock = clock
        self._sleep = sleep or self._abortable_sleep

    async def write(self, bucket: str, lines: Sequence[str]) -> WriteResult:
        result = WriteResult()
        await self._write_or_split(bucket, list(lines), 0, result)
        return result

    async def _write_or_split(
        self, bucket: str, lines: list[str], offset: int, result: WriteResult
    ) -> None:
        try:
            await self._write_retrying(bucket, lines)
        except PartialWriteError as exc:
            if len(lines) == 1:
                result.rejected.append((offset, f"HTTP {exc.status}: {exc.body}"))
                return
            mid = len(lines) // 2
            await self._write_or_split(bucket, lines[:mid], offset, result)
            await self._write_or_split(bucket, lines[mid:], offset + mid, result)
            return
        result.written += len(lines)

    async def _write_retrying(self, bucket: str, lines: list[str]) -> None:
        delay = self.retry_initial_s
        while True:
            if self.abort.is_set():
                raise WriteAborted(f"gave up writing {len(lines)} lines to {bucket!r}")
            started = self._clock()
            try:
                await self.writer.write(bucket, lines)
            except RetriableWriteError as exc:
                reason = (
                    "backpressure"
                    if isinstance(exc, BackpressureError)
                    else ("transport" if isinstance(exc, TransportError) else "server")
                )
                self.metrics.retries.labels(reason).inc()
                wait = delay * (0.5 + self._jitter())
                if isinstance(exc, BackpressureError) and exc.retry_after is not None:
                    wait = max(exc.retry_after, 0.0)
                log.warning("write failed, retry in %.1fs bucket=%s: %s", wait, bucket, exc)
                await self._sleep(wait)
                delay = min(delay * 2, self.retry_max_s)
                continue
            self.metrics.write_seconds.observe(self._clock() - started)
            self.metrics.points.labels(bucket).inc(len(lines))
            self.metrics.batches.labels(bucket).inc()
            return

    async def _abortable_sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.abort.wait(), timeout=seconds)


# --------------------------------------------------------------------------- the runner


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a line came from, for dead-letter headers."""

    topic: str
    partition: int
    offset: int


@dataclass
class PendingBatch:
    """Lines per bucket plus the offsets they complete: {(topic, partition): next offset}."""

    lines: dict[str, list[str]] = field(default_factory=dict)
    origins: dict[str, list[Origin]] = field(default_factory=dict)
    offsets: dict[Any, int] = field(default_factory=dict)
    size: int = 0
    started: float = 0.0

    def add(self, bucket: str, lines: list[str], origin: Origin) -> None:
        self.lines.setdefault(bucket, []).extend(lines)
        self.origins.setdefault(bucket, []).extend([origin] * len(lines))
        self.size += len(lines)


@dataclass
class SinkCounters:
    points: int = 0
    batches: int = 0
    retries: int = 0
    dead_letters: int = 0
    commits: int = 0


DeadLetterSend = Callable[[bytes, bytes | None, list[tuple[str, bytes]]], Awaitable[None]]


class SinkRunner:
    """Consume, write, then commit; repeat until ``stop`` is set, then flush and commit.

    ``consumer_factory`` / ``producer_factory`` / ``writer`` are injectable (tests); by
    default they are aiokafka and :class:`InfluxWriter` built from the config.
    """

    def __init__(
        self,
        config: SinkConfig,
        *,
        writer: Writer | None = None,
        metrics: SinkMetrics | None = None,
        consumer_factory: Callable[[], Any] | None = None,
        producer_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        influx = config.influx
        self.writer: Writer = writer or InfluxWriter(
            influx.url,
            influx.org,
            influx.resolved_token(),
            precision=influx.precision,
            gzip_level=influx.gzip_level,
            timeout_s=influx.request_timeout.total_seconds(),
        )
        self.metrics = metrics or SinkMetrics()
        self.abort = asyncio.Event()
        self.batch_writer = BatchWriter(
            self.writer,
            self.metrics,
            retry_initial_s=influx.retry_initial.total_seconds(),
            retry_max_s=influx.retry_max.total_seconds(),
            abort=self.abort,
        )
        self._consumer_factory = consumer_factory or self._aiokafka_consumer
        self._producer_factory = producer_factory or self._aiokafka_producer
        self._clock = clock
        self._consumer: Any = None
        self._producer: Any = None
        #: (topic, partition) -> offset committed after a database ack
        self.committed: dict[tuple[str, int], int] = {}

    # ----------------------------------------------------------------- kafka clients

    def _aiokafka_consumer(self) -> Any:
        aiokafka = require("aiokafka", "sinks")
        kafka = self.config.kafka
        return aiokafka.AIOKafkaConsumer(
            *kafka.topics,
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=kafka.group_id,
            client_id=kafka.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(kafka.session_timeout.total_seconds() * 1000),
            heartbeat_interval_ms=int(kafka.heartbeat_interval.total_seconds() * 1000),
            max_poll_interval_ms=int(kafka.max_poll_interval.total_seconds() * 1000),
            fetch_max_bytes=kafka.fetch_max_bytes,
            max_partition_fetch_bytes=kafka.max_partition_fetch_bytes,
            isolation_level="read_committed",
            **kafka.security.aiokafka_kwargs(),
        )

    def _aiokafka_producer(self) -> Any:
        aiokafka = require("aiokafka", "sinks")
        return aiokafka.AIOKafkaProducer(
            bootstrap_servers=self.config.kafka.bootstrap_servers,
            client_id=f"{self.config.kafka.client_id}-dlq",
            acks="all",
            **self.config.kafka.security.aiokafka_kwargs(),
        )

    # ----------------------------------------------------------------- main loop

    async def run(self, stop: asyncio.Event) -> SinkCounters:
        """Run until ``stop``; raises FatalWriteError (e.g. 401) without committing, and
        :class:`~climastream.topics.KafkaUnreachable` (everything closed) when no bootstrap
        server answers at start."""
        kafka = self.config.kafka
        await self.writer.start()
        try:
            self._producer = self._producer_factory()
            await start_client(self._producer, kafka.bootstrap_servers, kafka.security)
            self._consumer = self._consumer_factory()
            try:
                await start_client(self._consumer, kafka.bootstrap_servers, kafka.security)
            except BaseException:
                await self._producer.stop()
                raise
        except BaseException:
            await self.writer.close()
            raise
        inflight: deque[tuple[asyncio.Task[None], PendingBatch]] = deque()
        try:
            await self._loop(stop, inflight)
        finally:
            for task, _ in inflight:
                task.cancel()
            await asyncio.gather(*(t for t, _ in inflight), return_exceptions=True)
            await self._consumer.stop()
            await self._producer.stop()
            await self.writer.close()
        return self.counters()

    def assignment(self) -> set[tuple[str, int]]:
        """The partitions this process currently owns in its consumer group."""
        if self._consumer is None:
            return set()
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def counters(self) -> SinkCounters:
        m = self.metrics
        return SinkCounters(
            points=int(_total(m, "climastream_sink_points_written_total")),
            batches=int(_total(m, "climastream_sink_batches_total")),
            retries=int(_total(m, "climastream_sink_write_retries_total")),
            dead_letters=int(_total(m, "climastream_sink_dead_letters_total")),
            commits=int(m.value("climastream_sink_commits_total")),
        )

    async def _loop(
        self, stop: asyncio.Event, inflight: deque[tuple[asyncio.Task[None], PendingBatch]]
    ) -> None:
        influx = self.config.influx
        batch_lines = influx.batch_lines
        linger = influx.linger.total_seconds()
        pending = PendingBatch(started=self._clock())
        paused = False
        lines_per_record = float(batch_lines)  # conservative until records are seen
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                await self._commit_done(inflight)
                if len(inflight) >= influx.max_in_flight:
                    # Backpressure: stop fetching until the oldest write is acknowledged.
                    if not paused:
                        self._consumer.pause(*self._consumer.assignment())
                        self.metrics.paused.set(1)
                        paused = True
                    await asyncio.wait(
                        [inflight[0][0], stop_wait], return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                if paused:
                    self._consumer.resume(*self._consumer.paused())
                    self.metrics.paused.set(0)
                    paused = False
                remaining = max(0.0, linger - (self._clock() - pending.started))
                timeout_ms = int(min(remaining, 0.5) * 1000) if pending.size else 500
                # max_records counts records, a record may hold many points (a ReadingBatch
                # up to 5,000): ask for about as many records as fill the batch.
                want = max(1, int((batch_lines - pending.size) / lines_per_record))
                records = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=want)
                for tp, batch in records.items():
                    for record in batch:
                        added = await self._add(pending, tp, record)
                        lines_per_record = 0.5 * lines_per_record + 0.5 * max(1, added)
                due = pending.size >= batch_lines or (
                    pending.offsets and self._clock() - pending.started >= linger
                )
                if due:
                    inflight.append((asyncio.create_task(self._write(pending)), pending))
                    pending = PendingBatch(started=self._clock())
                elif not pending.offsets:
                    pending.started = self._clock()
        finally:
            stop_wait.cancel()
        # SIGTERM: flush what we hold, wait for the acks (bounded), commit in order.
        if pending.offsets:
            inflight.append((asyncio.create_task(self._write(pending)), pending))
        deadline = self.config.shutdown_timeout.total_seconds()
        if inflight:
            _done, not_done = await asyncio.wait([t for t, _ in inflight], timeout=deadline)
            if not_done:
                log.error(
                    "shutdown: %d batches not acknowledged within %.0fs; their offsets stay "
                    "uncommitted and the next sink re-reads them",
                    len(not_done),
                    deadline,
                )
                self.abort.set()
                await asyncio.wait(not_done)
        await self._commit_done(inflight)

    async def _add(self, pending: PendingBatch, tp: Any, record: Any) -> int:
        """Render one record into ``pending``; returns the number of lines it added."""
        topic = tp.topic
        self.metrics.records.labels(topic).inc()
        origin = Origin(topic, tp.partition, record.offset)
        try:
            lines, split = render_record(
                topic, record.value, self.config.influx.precision, appended_at(record)
            )
        except (ContractError, LineProtocolError) as exc:
            await self.dead_letter(record.value, record.key, origin, "contract", str(exc))
            lines = []
        else:
            if split is not None and split.rejected:
                # the readings that failed the contract alone; the rest is written
                error = split.dead_letter_error(limit=DEAD_LETTER_ERROR_CHARS)
                value = split.dead_letter_value()
                await self.dead_letter(value, record.key, origin, PARTIAL_BATCH_REASON, error)
                self.metrics.dead_letter_readings.labels("contract").inc(len(split.rejected))
            pending.add(self.config.influx.bucket_for(topic), lines, origin)
        pending.offsets[tp] = record.offset + 1
        return len(lines)

    async def dead_letter(
        self, value: bytes, key: bytes | None, origin: Origin, reason: str, error: str
    ) -> None:
        """Send to the dead-letter topic and wait for the broker's ack (before any commit)."""
        await self._producer.send_and_wait(
            self.config.kafka.dead_letter_topic,
            value=value,
            key=key,
            headers=[
                ("reason", reason.encode()),
                ("error", error.encode()[:DEAD_LETTER_ERROR_BYTES]),
                *dead_letter_source("sink", origin.topic, origin.partition, origin.offset).items(),
                ("sink", b"influx"),
            ],
        )
        self.metrics.dead_letters.labels(reason).inc()

    async def _write(self, pending: PendingBatch) -> None:
        size = self.config.influx.batch_lines
        for bucket, all_lines in pending.lines.items():
            all_origins = pending.origins[bucket]
            for start in range(0, len(all_lines), size):
                lines = all_lines[start : start + size]
                result = await self.batch_writer.write(bucket, lines)
                for index, reason in result.rejected:
                    await self.dead_letter(
                        lines[index].encode(), None, all_origins[start + index], "rejected", reason
                    )

    async def _commit_done(self, inflight: deque[tuple[asyncio.Task[None], PendingBatch]]) -> None:
        """Commit the offsets of acknowledged batches, oldest first, stopping at the first
        one still pending (a later batch must never commit past an earlier one)."""
        offsets: dict[Any, int] = {}
        while inflight and inflight[0][0].done():
            task, batch = inflight.popleft()
            exc = task.exception()
            if exc is not None:
                if isinstance(exc, WriteAborted):
                    inflight.clear()  # nothing after an unacknowledged batch may commit
                    break
                raise exc
            offsets.update(batch.offsets)
        # A rebalance while a batch was in flight may have moved some of its partitions to
        # another member: their new owner re-reads and rewrites the same points
        # (idempotent), so drop them here; committing them would raise IllegalStateError.
        assigned = self._consumer.assignment()
        revoked = [tp for tp in offsets if tp not in assigned]
        if revoked:
            log.warning("not committing partitions revoked by a rebalance: %s", revoked)
            offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        commit_failed = require("aiokafka.errors", "sinks").CommitFailedError
        try:
            await self._consumer.commit(offsets)
        except commit_failed as exc:
            # A rebalance moved the partitions: the new owner re-reads and rewrites the
            # same points (idempotent), so this is only duplicated work.
            log.warning("offset commit failed after a rebalance: %s", exc)
            return
        self.metrics.commits.inc()
        assigned = self._consumer.assignment()  # may have changed during the commit
        for tp, offset in offsets.items():
            self.committed[(tp.topic, tp.partition)] = offset
            high = self._consumer.highwater(tp) if tp in assigned else None
            if high is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - offset))


def _total(metrics: SinkMetrics, name: str) -> float:
    total = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total
