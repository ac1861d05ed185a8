"""The Faust application: the two KPI stages on partitions, with checkpointed state.

Stage 1 (agent ``devices``, on ``readings`` keyed by gateway) de-duplicates readings and
keeps per-device window partials in memory (:class:`stream.windows.DeviceWindows`). A
0.25 s timer advances the watermark on the wall clock once a partition is caught up, and
sends the closed device windows, re-keyed by zone, to the internal topic
``<app_id>-kpi-partials``, followed by the partition's watermark to every partition of it.

Stage 2 (agent ``zones``, on that internal topic) combines the devices of a zone, whatever
gateway or partition they came from (:class:`stream.zones.ZoneWindows`), closes a zone
window once every stage-1 partition's watermark has passed it, and sends KpiValues to
``kpi``.

Recovery: each stage checkpoints its in-memory state per partition, together with the
offset it covers, to a changelogged Faust table (``kpi-state``; RocksDB via rocksdict when
installed, memory otherwise) at most once per ``checkpoint_interval_s`` and after every
wall-clock close, never per reading. Records are acked (so their offsets may be committed)
only after a checkpoint that covers them, and Faust flushes the changelog before it commits
offsets. After a crash, the new owner restores the checkpoint, skips records it already
covers and replays the rest, so every reading counts exactly once; windows closed but not
yet checkpointed are re-emitted with the same values (KPI consumers are idempotent per
series and timestamp). A replay repeats closes by event time but not by the wall clock, so
the timer waits until the checkpoint of a wall-clock close is in the changelog before it
acts on it (:meth:`stream.windows.DeviceWindows.advance_wall`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from climastream.contract import (
    ContractError,
    ReadingBatch,
    Topics,
    contract_dead_letter_headers,
    dead_letter_source,
    decode_batch,
    encode,
)
from climastream.durations import parse_duration
from climastream.extras import require
from climastream.kafkasec import KafkaSecurity
from climastream.topics import Durability
from stream import checkpoints
from stream.checkpoints import DEFAULT_PART_BYTES
from stream.config import StreamConfig
from stream.windows import DevicePartial, DeviceWindows, from_us, to_us
from stream.zones import ZoneWindows, partition_for, routing_keys

log = logging.getLogger(__name__)


SESSION_TIMEOUT_ENV = "CLIMASTREAM_KAFKA_SESSION_TIMEOUT"
#: the local stack's: Tansu holds a consumer-group join for half the session timeout
DEFAULT_SESSION_TIMEOUT_S = 3.0


class SessionTimeoutError(ValueError):
    """``CLIMASTREAM_KAFKA_SESSION_TIMEOUT`` is not a duration."""


def session_timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """Seconds of the Faust apps' consumer-group session, from
    ``CLIMASTREAM_KAFKA_SESSION_TIMEOUT`` (``"10s"``, ``"1m"`` or seconds), else 3 s.

    3 s suits Tansu (the local stack), which holds a group join for half the session
    timeout. Apache Kafka refuses a join whose session timeout is below the broker's
    ``group.min.session.timeout.ms`` (6 s by default) with INVALID_SESSION_TIMEOUT, which
    aiokafka treats as fatal: the production image sets 10 s.
    """
    env = os.environ if environ is None else environ
    text = env.get(SESSION_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_SESSION_TIMEOUT_S
    value = parse_duration(text if not _is_number(text) else f"{text}s")
    if not isinstance(value, timedelta) or value.total_seconds() <= 0:
        raise SessionTimeoutError(
            f"{SESSION_TIMEOUT_ENV}: {text!r} is not a duration such as 10s (6s or more for "
            "Apache Kafka's default group.min.session.timeout.ms)"
        )
    return value.total_seconds()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class StreamSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "climastream-kpi"
    config: StreamConfig = field(default_factory=StreamConfig)
    close_interval_s: float = 0.25
    checkpoint_interval_s: float = 1.0
    data_dir: str = ".faust"
    #: "auto": RocksDB (rocksdict) when installed, else memory; or "memory" / "rocksdb"
    store: str = "auto"
    #: the topic of ReadingBatch records (benchmarks use their own)
    readings_topic: str = Topics.READINGS.name
    #: upper bound of one record on the internal partials topic: catching up after an
    #: outage closes thousands of device windows at once, far more than one Kafka record
    #: may carry (1 MiB by default), so they go out in several records
    partials_record_bytes: int = 256 * 1024
    #: a partition's checkpoint bigger than this is stored in parts of at most this many
    #: bytes under a manifest (:mod:`stream.checkpoints`); smaller, it is one table value
    checkpoint_part_bytes: int = DEFAULT_PART_BYTES
    #: replicas of the internal topics this job creates (partials, the state changelog)
    durability: Durability = field(default_factory=Durability)
    #: consumer-group session timeout (:func:`session_timeout_from_env`)
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    #: TLS and SASL (``CLIMASTREAM_KAFKA_SECURITY_PROTOCOL`` ...), for Faust and the admin
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @property
    def partials_topic(self) -> str:
        return f"{self.app_id}-kpi-partials"

    @property
    def changelog_topic(self) -> str:
        return f"{self.app_id}-kpi-state-changelog"

    @classmethod
    def from_env(
        cls,
        config_path: str | Path | None = None,
        kafka_security: KafkaSecurity | None = None,
    ) -> StreamSettings:
        """Settings from the environment; the stream config from ``config_path`` if given
        (``--config``), else ``CLIMASTREAM_STREAM_CONFIG``; the internal topics' replicas
        from ``CLIMASTREAM_TOPICS_*`` as for ``climastream topics create``; TLS and SASL
        from ``kafka_security`` if given (the command line's, on top of the environment),
        else the environment. Raises StreamConfigError,
        :class:`~climastream.topics.DurabilityError`, :class:`SessionTimeoutError` or
        :class:`~climastream.kafkasec.KafkaSecurityError`."""
        config_path = config_path or os.environ.get("CLIMASTREAM_STREAM_CONFIG")
        return cls(
            bootstrap_servers=os.environ.get("CLIMASTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            app_id=os.environ.get("CLIMASTREAM_STREAM_APP_ID", "climastream-kpi"),
            config=StreamConfig.load(config_path) if config_path else StreamConfig(),
            durability=Durability.from_env(),
            session_timeout_s=session_timeout_from_env(),
            kafka_security=kafka_security or KafkaSecurity.from_env(),
        )


def confirm_recovery_highwaters() -> None:
    """Make Faust's table recovery read each changelog partition to its true end.

    Faust takes a changelog partition's end from ``ListOffsets``, which Tansu (the local
    stack's broker) undercounts when the last batch holds several records; see
    :mod:`climastream.offsets`. Recovery then stopped short, or refused to start with a
    ``ConsistencyError``. This wraps the Faust consumer's ``_highwaters`` (faust-streaming
    0.11-0.15, pinned in pyproject) to confirm each end with a fetch. On Kafka nothing
    changes but one fetch per changelog partition when a worker recovers. Idempotent;
    :func:`create_worker` applies it, for the KPI job and the alert engine alike.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from climastream.offsets import client_settings, confirmed_end_offsets

    listed = AIOKafkaConsumerThread._highwaters
    if getattr(listed, "confirmed_by_fetch", False):
        return

    async def _highwaters(self: Any, partitions: list[Any]) -> Any:
        ends = await listed(self, partitions)
        if self.consumer.in_transaction:
            return ends  # last stable offsets, not ListOffsets answers
        client = self._ensure_consumer()._client
        return await confirmed_end_offsets(ends, **client_settings(client))

    _highwaters.confirmed_by_fetch = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]


def store_url(choice: str) -> str:
    if choice == "memory":
        return "memory://"
    if choice == "rocksdb":
        return "rocksdb://"
    try:
        import rocksdict  # noqa: F401
    except ImportError:
        return "memory://"
    return "rocksdb://"


#: RocksDB for ``kpi-state``: a few keys per partition (one checkpoint each, rewritten every
#: second). Faust's defaults (64 MiB write buffers x 3 and a 2 GiB block cache per
#: partition) let the rewrites pile up in memory for tens of minutes before a flush;
#: the soak of the demo saw the worker grow by 1.4-2.7 MB a minute, most of it RocksDB.
#: Fresh dict per table: Faust's store consumes keys of the dict it is given.
def rocksdb_options() -> dict[str, int]:
    return {
        "write_buffer_size": 4 * 1024 * 1024,
        "max_write_buffer_number": 2,
        "block_cache_size": 8 * 1024 * 1024,
        "block_cache_compressed_size": 0,
    }


#: a checkpoint bigger than this is logged as a warning (once per partition): the whole
#: state is serialised and written to the changelog every ``checkpoint_interval_s``
CHECKPOINT_WARN_BYTES = 4_000_000

#: a stage-1 partition whose watermark, as the zone stage has it, is behind the wall clock
#: by more than one window plus grace plus this is logged as holding the zone windows back
#: (a caught-up partition's is at most one window plus grace plus a few seconds behind)
WATERMARK_LAG_WARN = timedelta(minutes=1)
#: ... at most this often (each time with every lagging partition and what is held)
WATERMARK_LOG_INTERVAL_S = 60.0


@dataclass
class SourceLag:
    """A stage-1 partition the zone stage waits for, as one of its partitions sees it."""

    source: str  # the stage-1 partition
    watermark: int | None  # µs; None: the zone stage has had none from it yet
    lag_s: float  # behind the wall clock; inf when there is no watermark


def source_lags(stage2: Mapping[int, Any], sources: int, now: datetime) -> dict[str, SourceLag]:
    """How far each stage-1 partition's watermark is behind ``now``, from the lowest that
    this worker's zone-stage partitions have (they all receive every watermark; one that
    lags behind in reading them holds its zones back as well). Empty without zone-stage
    partitions."""
    now_us = to_us(now)
    lags: dict[str, SourceLag] = {}
    for part in list(stage2.values()):
        marks = part.engine.source_watermarks()
        for source in map(str, range(sources)):
            mark = marks.get(source)
            lag = float("inf") if mark is None else (now_us - mark) / 1_000_000
            known = lags.get(source)
            if known is None or lag > known.lag_s:
                lags[source] = SourceLag(source, mark, lag)
    return lags


def cluster_settings(
    durability: Durability,
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
    security: KafkaSecurity | None = None,
) -> dict[str, Any]:
    """The Faust settings of both Faust apps (this KPI job and the alert engine) that
    depend on the Kafka cluster rather than on the job."""
    return {
        # TLS and SASL: Faust passes them to its producer, consumers and topic creation
        "broker_credentials": (security or KafkaSecurity()).faust_credentials(),
        # short on Tansu, within the broker's bounds on Kafka (session_timeout_from_env)
        "broker_session_timeout": session_timeout_s,
        # a third of the session at most, as Kafka asks; 1 s keeps failover quick
        "broker_heartbeat_interval": min(1.0, session_timeout_s / 3),
        # the apps create their topics through the admin API, with the contract's counts
        "topic_allow_declare": False,
        # ... and the same replicas, should Faust ever declare one
        "topic_replication_factor": durability.replication_factor,
        # no leader election: nothing here runs on the leader only (no on_leader timer),
        # and its topic "<app id>-__assignor-__leader" is one nobody creates, which only a
        # broker with topic auto-creation on (with its own defaults) would make
        "topic_disable_leader": True,
    }


class KafkaUnreachable(RuntimeError):
    """No bootstrap server answered: the message says where it looked and what to set."""


async def start_admin(bootstrap_servers: str, security: KafkaSecurity | None = None) -> Any:
    """A started aiokafka admin client, or :class:`KafkaUnreachable` (no traceback)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError

    from climastream.topics import unreachable

    security = security or KafkaSecurity()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **security.aiokafka_kwargs())
    try:
        await admin.start()
    except KafkaConnectionError:
        with contextlib.suppress(Exception):
            await admin.close()
        raise KafkaUnreachable(unreachable(bootstrap_servers, security)) from None
    return admin


class TopicMismatch(RuntimeError):
    """The input topic does not have the contract's partition count."""


async def ensure_topics(settings: StreamSettings) -> None:
    """Create the internal topics with the contract's partition count (Tansu would
    auto-create them with its own default, and Faust's co-partitioning needs equal counts)
    and ``settings.durability``: the changelog is the only copy of the KPI state off the
    worker's disk, so one replica on a cluster would lose it with one broker.

    An existing ``readings`` topic with another count (a broker's auto-create default, say
    6) is :class:`TopicMismatch`: the job's table and internal topics have the contract's
    count, Faust refuses to write state for such a source, and the zone stage would wait
    for the wrong number of partitions.
    """
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    partitions = Topics.READINGS.partitions
    admin = await start_admin(settings.bootstrap_servers, settings.kafka_security)
    try:
        existing = set(await admin.list_topics())
        if settings.readings_topic in existing:
            (described,) = await admin.describe_topics([settings.readings_topic])
            found = len(described.get("partitions", ()))
            if found and found != partitions:
                raise TopicMismatch(
                    f"topic {settings.readings_topic!r} has {found} partitions, the contract "
                    f"{partitions}: create the topics before the first gateway sends (the "
                    "production files run 'climastream topics create'), or recreate it"
                )
        durability = settings.durability
        # the changelog is compacted, as Faust makes a table's: recovery reads it from the
        # start, and with the delete policy it kept every checkpoint (the whole state,
        # rewritten every checkpoint_interval_s) for the broker's retention
        compacted = {settings.partials_topic: False, settings.changelog_topic: True}
        wanted = [
            NewTopic(
                name,
                partitions,
                durability.replication_factor,
                topic_configs=durability.topic_configs(compacted=compact),
            )
            for name, compact in compacted.items()
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
    finally:
        await admin.close()


#: consecutive fetch responses this far apart mean the fetches stalled (Faust's wait at
#: most 1.5 s for records): the broker was unreachable, or the worker did not run
FETCH_STALL_MS = 10_000


@dataclass
class FetchClock:
    """Up to when a stage-1 partition is known to be caught up, from its consumer's fetches.

    "Caught up" (every record below the high watermark processed) is as of the fetch that
    reported that high watermark, not as of now: a worker that stopped running for a while
    (an overloaded host, a GC pause, SIGSTOP) resumes with the high watermark of a fetch
    from before, while the readings of the pause wait at the broker. Closing windows on
    the wall clock of the resumed timer then made those readings late.

    Neither is the time of the newest fetch response safe: aiokafka stamps a response when
    it processes it, and a response the broker built before the pause (say an empty one at
    the end of its long poll) is stamped after it. But aiokafka has one fetch per broker in
    flight: a partition's next fetch is requested only after the previous response was
    processed, so the high watermark of a fetch covers every record that reached the broker
    before the *previous* response's stamp. That stamp is the wall clock a caught-up
    partition may close windows at. Windows of a quiet partition therefore close up to two
    fetch intervals after ``end + grace`` (Faust's fetches wait up to 1.5 s for records).

    Nor is the broker caught up with the gateways after it was unreachable (a broker
    outage, a network partition, a long GC pause): they buffered what they read meanwhile
    and deliver it after they reconnect. After such a stall the wall clock stays where the
    stall began for ``resume_allowance_ms``; each gateway's own readings close its
    windows by event time meanwhile, so only the windows of quiet gateways wait longer.

    The broker's return often brings a rebalance (its group sessions expired meanwhile),
    and the worker reloads its partitions with new clocks. A new clock starts from what
    the worker's clocks knew (:class:`WorkerFetches`): the stall they hold for, and the
    newest fetch stamp, so that a first fetch 10 s or more after it ends a stall too.
    """

    latest_ms: int | None = None  # the stamp of the newest fetch response seen
    before_ms: int | None = None  # the one seen before it
    #: after a stall of the fetches (the broker unreachable or paused for longer than
    #: FETCH_STALL), the wall clock stays where the stall began for this long: gateways
    #: buffered their readings meanwhile and deliver them only once they have reconnected
    #: (the edge's reconnect backoff is at most 30 s by default); closing their windows on
    #: the wall clock of the resumed fetches made those readings late
    resume_allowance_ms: int = 40_000
    held_at_ms: int | None = None  # where the wall clock stays after a stall ...
    held_until_ms: int | None = None  # ... until this fetch stamp
    #: for the clock of a partition the worker just took (back): the newest fetch stamp of
    #: its stage-1 partitions at its previous close tick (None for a new worker)
    since_ms: int | None = None

    def caught_up_as_of(
        self, fetched_ms: int | None, highwater: int | None, offset: int
    ) -> datetime | None:
        """The wall-clock time up to which the partition is caught up, or None.

        ``fetched_ms``: when the consumer last processed a fetch response for it (read
        *before* ``highwater``, so that a fetch landing in between only makes this later
        answer more careful); ``offset``: the last offset processed.
        """
        if fetched_ms is not None and fetched_ms != self.latest_ms:
            previous = self.since_ms if self.latest_ms is None else self.latest_ms
            if previous is not None and fetched_ms - previous >= FETCH_STALL_MS:
                if self.held_at_ms is None:
                    self.held_at_ms = previous
                self.held_until_ms = fetched_ms + self.resume_allowance_ms
            self.before_ms, self.latest_ms = self.latest_ms, fetched_ms
        if self.before_ms is None or highwater is None or offset + 1 < highwater:
            return None
        if self.held_at_ms is not None and self.held_until_ms is not None:
            if self.latest_ms is not None and self.latest_ms < self.held_until_ms:
                return from_us(min(self.held_at_ms, self.before_ms) * 1000)
            self.held_at_ms = self.held_until_ms = None
        return from_us(self.before_ms * 1000)


@dataclass
class WorkerFetches:
    """What a worker's stage-1 :class:`FetchClock` s knew at their last close ticks, for the
    clock of a partition it takes (back) in a rebalance: one after a broker outage must not
    forget the stall (the gateways' buffered readings are still to come)."""

    newest_ms: int | None = None  # the newest fetch stamp of any of them
    held_at_ms: int | None = None  # the stall some of them hold for, if any ...
    held_until_ms: int | None = None  # ... and until when

    def note(self, clock: FetchClock) -> None:
        """After a close tick of one of the worker's partitions: remember what its clock
        knows now. A hold lasts until the newest fetch stamp passes its end."""
        if clock.latest_ms is not None and (
            self.newest_ms is None or clock.latest_ms > self.newest_ms
        ):
            self.newest_ms = clock.latest_ms
        if clock.held_at_ms is not None and clock.held_until_ms is not None:
            at, until = clock.held_at_ms, clock.held_until_ms
            self.held_at_ms = at if self.held_at_ms is None else min(self.held_at_ms, at)
            self.held_until_ms = max(self.held_until_ms or until, until)
        elif (
            self.held_until_ms is not None
            and self.newest_ms is not None
            and self.newest_ms >= self.held_until_ms
        ):
            self.held_at_ms = self.held_until_ms = None

    def clock(self) -> FetchClock:
        """A clock for a partition the worker takes (back)."""
        return FetchClock(
            since_ms=self.newest_ms,
            held_at_ms=self.held_at_ms,
            held_until_ms=self.held_until_ms,
        )


def last_fetch_ms(consumer: Any, tp: Any) -> int | None:
    """When ``consumer`` (Faust's) last processed a fetch response for ``tp`` (aiokafka's
    ``last_poll_timestamp``, ms of the wall clock), None before the first.

    Faust does not pass it on; its aiokafka consumer thread holds the aiokafka consumer,
    as for :meth:`highwater`. Without any of these (another driver, or a Faust or aiokafka
    release that renamed one) it answers with the time of the call, which makes
    :class:`FetchClock` close as of the previous tick, and warns once: a worker that
    stalls may then close windows on the wall clock before it has read what reached the
    broker during the stall (those readings are late, counted and routed).
    """
    ensure = getattr(getattr(consumer, "_thread", None), "_ensure_consumer", None)
    poll_stamp = None if ensure is None else getattr(ensure(), "last_poll_timestamp", None)
    if poll_stamp is None:
        _warn_no_fetch_stamp(consumer)
        return int(time.time() * 1000)
    try:
        stamp = poll_stamp(tp)
    except AssertionError:  # not (or no longer) assigned: a rebalance under way
        return None
    return None if stamp is None else int(stamp)


#: whether :func:`last_fetch_ms` has warned that it has no fetch stamps (once a process)
_warned_no_fetch_stamp = False


def _warn_no_fetch_stamp(consumer: Any) -> None:
    global _warned_no_fetch_stamp
    if _warned_no_fetch_stamp:
        return
    _warned_no_fetch_stamp = True
    log.warning(
        "the Kafka consumer (%s) gives no fetch times (aiokafka's last_poll_timestamp through "
        "Faust's consumer thread): windows close on the wall clock as of the previous "
        "close tick, so after a stall of the worker they may close before the readings "
        "of the stall are read (those are then late)",
        type(consumer).__name__,
    )


@dataclass
class _Partition:
    """One partition's engine plus what is needed to checkpoint and ack it."""

    engine: Any
    offset: int = -1  # last offset whose effect is in ``engine``
    pending: list[Any] = field(default_factory=list)  # events to ack after a checkpoint
    last_event: Any = None
    last_checkpoint: float = 0.0
    checkpoint_bytes: int = 0  # size of the last checkpoint written (all its parts)
    warned_size: bool = False  # a big checkpoint was logged
    written: checkpoints.Written = field(default_factory=checkpoints.Written)
    fetches: FetchClock | None = None  # stage 1: set at its first close tick


@dataclass(frozen=True)
class _PartitionMessage:
    topic: str
    partition: int


@dataclass(frozen=True)
class _PartitionEvent:
    """The current event of a checkpoint written before its partition consumed any event
    since its restore: Faust writes a table key to the changelog (and local store)
    partition of the current event's message (its ``topic`` and ``partition``)."""

    message: _PartitionMessage


@dataclass
class EngineMetrics:
    readings: int = 0
    late: int = 0
    #: records sent to dead-letter: whole records, and partial-batch records
    dead_letter: int = 0
    #: readings of sound batches that failed the contract alone, dead-lettered one by one
    dead_letter_readings: int = 0
    kpis: int = 0
    checkpoints: int = 0


#: ``produce(topic, key, value, partition, headers)``: hand one record to the producer
Produce = Callable[[str, bytes | None, bytes, int | None, dict[str, bytes] | None], Awaitable[Any]]


def create_app(
    settings: StreamSettings,
    produce: Produce | None = None,
    changelog_synced: Callable[[int], Awaitable[None]] | None = None,
) -> Any:
    """The Faust app of both stages.

    ``changelog_synced(p)`` returns once the table writes made so far for partition ``p``
    are in the changelog (acked by the broker); by default it awaits the last one. The
    close timer calls it after checkpointing a wall-clock close, before acting on it.

    ``produce`` sends every output record (partials, KpiValues, late readings, dead
    letters); by default the app's own producer. It is called once per record, so it must
    be cheap: the default hands the record straight to the started producer instead of
    going through ``Topic.send``, which costs an event-loop turn per record (Faust starts
    the producer through a wrapper that awaits ``asyncio.sleep(0)`` on every send) plus
    Faust's message-future and sensor layer. The records go into the same producer, so
    Faust's flush before each offset commit still covers them.
    """
    faust = require("faust", "stream")
    from faust.streams import _current_event
    from faust.tables.table import Table as FaustTable

    config = settings.config
    n = Topics.READINGS.partitions
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        **cluster_settings(
            settings.durability, settings.session_timeout_s, settings.kafka_security
        ),
        store=store_url(settings.store),
        datadir=settings.data_dir,
        consumer_auto_offset_reset="earliest",
        topic_partitions=n,
        web_enabled=False,
        producer_linger_ms=5,
        # records are acked only after a checkpoint covers them; on shutdown the unacked
        # rest is replayed by the next owner, so do not wait for them
        stream_wait_empty=False,
    )
    raw = {"value_serializer": "raw", "key_serializer": "raw"}
    readings = app.topic(settings.readings_topic, **raw)
    partials_topic = app.topic(settings.partials_topic, partitions=n, **raw)
    producer: list[Any] = []  # the started Faust producer, once known

    async def _produce(
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None,
        headers: dict[str, bytes] | None,
    ) -> Any:
        if not producer:
            producer.append(await app.maybe_start_producer())
        return await producer[0].send(topic, key, value, partition, None, headers)

    send = produce or _produce
    # changelog partition -> the future of its last write (a FutureMessage: resolved once
    # the broker has the record)
    last_write: dict[int, Awaitable[Any]] = {}

    class StateTable(FaustTable):
        """``kpi-state``, keeping the future of each partition's last changelog write."""

        def send_changelog(
            self,
            partition: int | None,
            key: Any,
            value: Any,
            key_serializer: Any = None,
            value_serializer: Any = None,
        ) -> Any:
            fut = super().send_changelog(partition, key, value, key_serializer, value_serializer)
            if fut.message.partition is not None:  # set at once (eager partitioning)
                last_write[fut.message.partition] = fut
            return fut

    async def _changelog_synced(p: int) -> None:
        fut = last_write.get(p)
        if fut is not None:
            await fut

    synced = changelog_synced or _changelog_synced
    state = app.tables.add(
        StateTable(
            app,
            name="kpi-state",
            beacon=app.tables.beacon,
            partitions=n,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(),
        )
    )
    metrics = EngineMetrics()
    app.climastream_metrics = metrics
    stage1: dict[int, _Partition] = {}
    stage2: dict[int, _Partition] = {}
    app.climastream_stages = (stage1, stage2)

    def load(stage: dict[int, _Partition], prefix: str, p: int) -> _Partition:
        part = stage.get(p)
        if part is not None:
            return part
        if prefix == "s1":
            engine: Any = DeviceWindows(
                config.window, config.grace, zones=config.device_zones, tz=config.tz
            )
        else:
            engine = ZoneWindows(config, sources=n, owns=lambda key: partition_for(key, n) == p)
        # read before the partition is registered: after a failed read, no event may
        # reach an empty engine and count the partition's readings again
        stored = checkpoints.read(state.get, f"{prefix}:{p}".encode())
        part = stage[p] = _Partition(engine)
        if stored is not None:
            engine.restore(stored.state)
            part.offset = stored.offset
            part.written = stored.written
            log.info("restored stage=%s partition=%s offset=%s", prefix, p, part.offset)
        part.last_checkpoint = time.monotonic()
        return part

    def checkpoint(prefix: str, p: int, part: _Partition, changed: bool = False) -> None:
        """Write the partition's state to the changelogged table, then ack what it covers.

        ``changed``: the state changed without an event (a wall-clock close), so it is
        written even when the partition has consumed nothing since its restore.
        """
        if part.last_event is None and not changed:
            return  # nothing consumed since the restart: the stored checkpoint still holds
        ops, written = checkpoints.write_ops(
            f"{prefix}:{p}".encode(),
            part.offset,
            orjson.dumps(part.engine.snapshot()),
            part.written,
            settings.checkpoint_part_bytes,
        )
        part.checkpoint_bytes = sum(len(value) for _, value in ops if value is not None)
        if part.checkpoint_bytes > CHECKPOINT_WARN_BYTES and not part.warned_size:
            part.warned_size = True
            log.warning(
                "checkpoint of stage=%s partition=%s is %d bytes, all of it rewritten every "
                "%.1f s: add partitions to spread the state over more workers",
                prefix,
                p,
                part.checkpoint_bytes,
                settings.checkpoint_interval_s,
            )
        # Faust writes a table key to the changelog partition of the *current event*; the
        # timer has none, so it borrows the partition's last event (same partition), and
        # every part and the manifest go there, in this order.
        topic = settings.readings_topic if prefix == "s1" else settings.partials_topic
        current = part.last_event
        if current is None:
            current = _PartitionEvent(_PartitionMessage(topic, p))
        token = _current_event.set(weakref.ref(current))
        try:
            for key, value in ops:
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
        finally:
            _current_event.reset(token)
        part.written = written
        for event in part.pending:
            event.ack()
        part.pending.clear()
        part.last_checkpoint = time.monotonic()
        metrics.checkpoints += 1

    def stops_if_unrestorable(fun: Callable[..., Awaitable[None]]) -> Any:
        """``fun`` (an agent or the close timer) stops the worker when it meets a partition
        whose checkpoint cannot be read back. Processing that partition from an empty state
        would count its readings again; crashing leaves the offsets where the checkpoint
        is, and says why (systemd restarts it, and it stops again with the same message,
        until the table is mended). Likewise when the checkpoint of a wall-clock close
        does not reach the changelog: the state holds a close a replay would not repeat."""

        @functools.wraps(fun)
        async def run(*args: Any) -> None:
            try:
                await fun(*args)
            except checkpoints.CheckpointError as exc:
                written = isinstance(exc, checkpoints.CheckpointNotWritten)
                what = "cannot write a checkpoint" if written else "cannot restore a checkpoint"
                log.critical("%s, stopping the worker: %s", what, exc)
                await app.crash(exc)

        return run

    def due(part: _Partition) -> bool:
        return time.monotonic() - part.last_checkpoint >= settings.checkpoint_interval_s

    async def send_partials(p: int, closed: list[DevicePartial], horizon: int | None) -> None:
        """Closed device windows to the zone stage, then this partition's watermark.

        Per target partition the items go out in records of at most
        ``partials_record_bytes`` (an item larger than that alone); only the last record
        carries the watermark, so the zone stage has every item before it advances.
        """
        per_target: dict[int, list[bytes]] = {q: [] for q in range(n)}
        for partial in closed:
            for key, reference in routing_keys(partial, config):
                per_target[partition_for(key, n)].append(orjson.dumps([key, reference, partial]))
        src = b"%d" % p
        last_wm = b"null" if horizon is None else b"%d" % horizon
        for q, items in per_target.items():
            if not items and horizon is None:
                continue
            chunks: list[list[bytes]] = [[]]
            size = 0
            for item in items:
                if chunks[-1] and size + len(item) > settings.partials_record_bytes:
                    chunks.append([])
                    size = 0
                chunks[-1].append(item)
                size += len(item) + 1
            for index, chunk in enumerate(chunks):
                wm = last_wm if index == len(chunks) - 1 else b"null"
                record = b'{"src":%s,"wm":%s,"items":[%s]}' % (src, wm, b",".join(chunk))
                await send(settings.partials_topic, src, record, q, None)

    def admit(stage: dict[int, _Partition], prefix: str, event: Any) -> _Partition | None:
        """The state ``event`` goes into; None (and acked) when its checkpoint covers it.

        The event is acked only once a later checkpoint covers its effect.
        """
        message = event.message
        part = load(stage, prefix, message.partition)
        if message.offset <= part.offset:
            event.ack()  # already in the restored checkpoint
            return None
        part.offset = message.offset
        part.pending.append(event)
        part.last_event = event
        return part

    # stage-1 partition -> held while its state changes: the close timer must not let an
    # event in between its wall-clock close and the checkpoint of it reaching the changelog
    locks: dict[int, asyncio.Lock] = {}

    # stage-1 partitions whose wall-clock close did not reach the changelog: the worker is
    # stopping, and their state in memory must not be acted on meanwhile
    unwritten: dict[int, checkpoints.CheckpointNotWritten] = {}

    def lock_of(p: int) -> asyncio.Lock:
        lock = locks.get(p)
        if lock is None:
            lock = locks[p] = asyncio.Lock()
        return lock

    @app.agent(readings, name="devices")
    @stops_if_unrestorable
    async def devices(stream: Any) -> None:
        async for event in stream.noack().events():
            p = event.message.partition
            async with lock_of(p):
                await devices_event(p, event)

    async def devices_event(p: int, event: Any) -> None:
        if p in unwritten:
            raise unwritten[p]
        part = admit(stage1, "s1", event)
        if part is None:
            return
        message = event.message
        source = dead_letter_source("stream", message.topic, p, message.offset)
        try:
            batch = decode_batch(event.value)
        except ContractError as exc:
            metrics.dead_letter += 1
            headers = {**contract_dead_letter_headers(exc), **source}
            await send(Topics.DEAD_LETTER.name, event.key, event.value, None, headers)
            return
        if batch.rejected:
            metrics.dead_letter += 1
            metrics.dead_letter_readings += len(batch.rejected)
            value, headers = batch.dead_letter_value(), batch.dead_letter_headers()
            await send(Topics.DEAD_LETTER.name, event.key, value, None, {**headers, **source})
        metrics.readings += len(batch.readings)
        late = part.engine.add(batch.readings)
        if late:
            metrics.late += len(late)
            late_batch = ReadingBatch(gateway_id=batch.gateway_id, readings=tuple(late))
            await send(Topics.LATE_READINGS.name, late_batch.key, encode(late_batch), None, None)
        closed = part.engine.close()
        if closed:
            await send_partials(p, closed, part.engine.horizon())
        if due(part):
            checkpoint("s1", p, part)

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # the next owner restores these from the changelog; never checkpoint them again
        for tp in revoked:
            if tp.topic == settings.readings_topic:
                stage1.pop(tp.partition, None)
            elif tp.topic == settings.partials_topic:
                stage2.pop(tp.partition, None)

    worker_fetches = WorkerFetches()  # where a stage-1 partition taken (back) starts

    @app.timer(settings.close_interval_s)
    @stops_if_unrestorable
    async def close_windows() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return  # tables are not restored yet: closing now could use stale state
        assigned = {tp.partition: tp for tp in app.consumer.assignment()
                    if tp.topic == settings.readings_topic}  # fmt: skip
        for p in [p for p in stage1 if p not in assigned]:
            del stage1[p]  # revoked: the new owner restores it from the changelog
        for p in [p for p in stage2 if p not in _assigned(app, settings.partials_topic)]:
            del stage2[p]
        for p, tp in sorted(assigned.items()):
            fetched_ms = last_fetch_ms(app.consumer, tp)  # before the high watermark
            await close_partition(p, fetched_ms, app.consumer.highwater(tp))
        watch_watermarks(datetime.now(UTC))

    async def close_partition(p: int, fetched_ms: int | None, highwater: int | None) -> None:
        """A tick of the close timer for stage-1 partition ``p``: close what the watermark
        passed, by the wall clock too if the partition is caught up (:class:`FetchClock`),
        send the closed windows and the watermark, checkpoint.

        A replay cannot repeat a wall-clock close: the checkpoint that holds it must be in
        the changelog before anything acts on it (:meth:`DeviceWindows.advance_wall`), and
        no event of the partition is processed meanwhile.
        """
        async with lock_of(p):
            if p in unwritten:
                raise unwritten[p]
            part = load(stage1, "s1", p)
            if part.fetches is None:
                part.fetches = worker_fetches.clock()
            as_of = part.fetches.caught_up_as_of(fetched_ms, highwater, part.offset)
            worker_fetches.note(part.fetches)
            if as_of is not None and part.engine.advance_wall(as_of):
                checkpoint("s1", p, part, changed=True)
                try:
                    await synced(p)
                except Exception as exc:  # acting on the close now could lose readings
                    unwritten[p] = checkpoints.CheckpointNotWritten(
                        f"checkpoint s1:{p} of a wall-clock close did not reach the "
                        f"changelog: {exc!r}"
                    )
                    raise unwritten[p] from exc
            closed = part.engine.close()
            await send_partials(p, closed, part.engine.horizon())
            if closed or due(part):
                checkpoint("s1", p, part)

    app.climastream_close_partition = close_partition

    # monotonic time before which no lagging watermark is logged again
    lag_log_at = [0.0]
    window_and_grace = config.window + config.grace

    def watch_watermarks(now: datetime) -> None:
        """Log (at most every ``WATERMARK_LOG_INTERVAL_S``) the stage-1 partitions whose
        watermark holds this worker's zone windows back: a partition whose worker hangs
        without losing its partitions, or that catches up after an outage. The zone
        stage waits for it by design; without this, KPIs stopped and nothing said why."""
        allowed = (window_and_grace + WATERMARK_LAG_WARN).total_seconds()
        lagging = [lag for lag in source_lags(stage2, n, now).values() if lag.lag_s > allowed]
        clock = time.monotonic()
        if not lagging or clock < lag_log_at[0]:
            return
        lag_log_at[0] = clock + WATERMARK_LOG_INTERVAL_S
        held = [h for h in (part.engine.held() for part in list(stage2.values())) if h]
        count = sum(h[0] for h in held)
        oldest = min((h[1] for h in held), default=None)
        waits = ", ".join(
            f"{lag.source} (no watermark received yet)"
            if lag.watermark is None
            else f"{lag.source} (watermark {from_us(lag.watermark).isoformat()}, "
            f"{lag.lag_s:.0f} s behind)"
            for lag in sorted(lagging, key=lambda lag: int(lag.source))
        )
        log.warning(
            "zone stage waits for stage-1 partition(s) %s: it holds %d zone windows%s and "
            "emits no zone KPI until every partition's watermark passes them; that "
            "partition's worker is stuck, or it is catching up (logged at most every %.0f s)",
            waits,
            count,
            "" if oldest is None else f" from {from_us(oldest).isoformat()} on",
            WATERMARK_LOG_INTERVAL_S,
        )

    app.climastream_watch_watermarks = watch_watermarks

    @app.agent(partials_topic, name="zones")
    @stops_if_unrestorable
    async def zones(stream: Any) -> None:
        async for event in stream.noack().events():
            part = admit(stage2, "s2", event)
            if part is None:
                continue
            p = event.message.partition
            record = orjson.loads(event.value)
            engine: ZoneWindows = part.engine
            source = str(record["src"])
            for key, reference, partial in record["items"]:
                engine.add(key, partial, reference, source)
            if record["wm"] is not None:
                engine.advance(source, record["wm"])
                for kpi in engine.close():
                    await send(Topics.KPI.name, kpi.key, encode(kpi), None, None)
                    metrics.kpis += 1
            if due(part):
                checkpoint("s2", p, part)

    return app


class EngineCollector:
    """Prometheus view of a KPI app's counters, read at scrape time (no per-record cost).

    Stage-1 counts (duplicates, counter resets, open windows) are summed over the
    partitions this worker holds; they are checkpointed with the partition, so they move
    with it on a rebalance.
    """

    def __init__(self, app: Any, clock: Callable[[], datetime] | None = None) -> None:
        self._app = app
        self._clock = clock or (lambda: datetime.now(UTC))

    def describe(self) -> list[Any]:
        return []  # collected lazily; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        metrics: EngineMetrics = self._app.climastream_metrics
        stage1, stage2 = self._app.climastream_stages
        counters = {
            "readings": ("readings consumed by stage 1", metrics.readings),
            "late_readings": ("readings past the grace, sent to late-readings", metrics.late),
            "dead_letter": (
                "records sent to dead-letter: records that failed the contract whole, and "
                "one per batch some of whose readings failed it (reason partial-batch)",
                metrics.dead_letter,
            ),
            "kpis": ("KpiValues produced", metrics.kpis),
            "checkpoints": ("state checkpoints written", metrics.checkpoints),
            "duplicate_readings": (
                "readings dropped as duplicates of a seen (device, seq): redelivered through "
                "the same gateway (stage 1) or heard through two gateways (stage 2)",
                sum(part.engine.stats.duplicates for part in stage1.values())
                + sum(part.engine.stats.duplicates for part in stage2.values()),
            ),
            "counter_resets": (
                "device counters seen to restart (their readings are kept)",
                sum(part.engine.stats.counter_resets for part in stage1.values()),
            ),
            "stale_partials": (
                "device windows dropped by the zone stage: their zone window had closed",
                sum(part.engine.stats.stale_partials for part in stage2.values()),
            ),
            "stale_readings": (
                "readings in the device windows dropped as stale by the zone stage",
                sum(part.engine.stats.stale_readings for part in stage2.values()),
            ),
            "replayed_partials": (
                "device windows sent again by a restarted stage-1 partition (already "
                "counted, skipped)",
                sum(part.engine.stats.replayed_partials for part in stage2.values()),
            ),
            "forgotten_devices": (
                "devices not in the stream config no longer expected (no completeness 0) "
                "after forget_undeclared_after without data",
                sum(part.engine.stats.forgotten_devices for part in stage2.values()),
            ),
        }
        for name, (help_text, value) in counters.items():
            family = CounterMetricFamily(f"climastream_stream_{name}", help_text)
            family.add_metric([], value)
            yield family
        rejected = CounterMetricFamily(
            "climastream_stream_dead_letter_readings",
            "readings dead-lettered one by one from a batch whose other readings were kept",
            labels=["reason"],
        )
        rejected.add_metric(["contract"], metrics.dead_letter_readings)
        yield rejected
        windows = GaugeMetricFamily(
            "climastream_stream_open_windows", "device windows open in stage 1"
        )
        windows.add_metric([], sum(part.engine.open_windows for part in stage1.values()))
        yield windows
        sizes = GaugeMetricFamily(
            "climastream_stream_checkpoint_bytes",
            "size of the last state checkpoint written (all its parts)",
            labels=["stage", "partition"],
        )
        for stage, parts in (("devices", stage1), ("zones", stage2)):
            for p, part in sorted(parts.items()):
                if part.checkpoint_bytes:
                    sizes.add_metric([stage, str(p)], part.checkpoint_bytes)
        yield sizes
        partitions = GaugeMetricFamily(
            "climastream_stream_partitions", "partitions held by this worker", labels=["stage"]
        )
        partitions.add_metric(["devices"], len(stage1))
        partitions.add_metric(["zones"], len(stage2))
        yield partitions
        yield from self._waits(stage2)

    def _waits(self, stage2: Mapping[int, Any]) -> Iterator[Any]:
        """What the zone stage waits for: each stage-1 partition's watermark lag, and the
        zone windows held meanwhile. Read in the metrics server's thread while the event loop
        runs: a dict changing under the iteration gives up that sample for this scrape."""
        from prometheus_client.core import GaugeMetricFamily

        now = self._clock()
        n = Topics.READINGS.partitions
        lag = GaugeMetricFamily(
            "climastream_stream_watermark_lag_seconds",
            "how far each stage-1 partition's watermark, as this worker's zone stage has it, "
            "is behind the wall clock (+Inf: none received yet); a zone window closes only "
            "once every partition's has passed it; a caught-up partition is at most one "
            "window plus grace plus a few seconds behind",
            labels=["source"],
        )
        with contextlib.suppress(RuntimeError):
            for source, value in sorted(source_lags(stage2, n, now).items()):
                lag.add_metric([source], value.lag_s)
        yield lag
        held = GaugeMetricFamily(
            "climastream_stream_held_zone_windows",
            "zone base windows with device windows in them waiting for the watermark",
            labels=["partition"],
        )
        oldest = GaugeMetricFamily(
            "climastream_stream_oldest_held_zone_window_seconds",
            "how long ago the oldest zone window waiting for the watermark ended (0: none)",
            labels=["partition"],
        )
        for p, part in sorted(list(stage2.items())):
            try:
                waiting = part.engine.held()
            except RuntimeError:
                continue
            count, age = 0, 0.0
            if waiting is not None:
                count = waiting[0]
                end = waiting[1] + part.engine.size_us
                age = max(0.0, (to_us(now) - end) / 1_000_000)
            held.add_metric([str(p)], count)
            oldest.add_metric([str(p)], age)
        yield held
        yield oldest


def serve_metrics(app: Any, port: int, host: str = "127.0.0.1") -> None:
    """Serve :class:`EngineCollector` (and the process metrics) on ``host:port``."""
    import prometheus_client

    prometheus_client.REGISTRY.register(EngineCollector(app))
    prometheus_client.start_http_server(port, addr=host)


def create_worker(app: Any, loglevel: str = "info") -> Any:
    """A ``faust.Worker`` for ``app`` without Faust's terminal spinner.

    At a log level of WARNING or above, Faust's worker drives a progress spinner from the
    log: it sets the *root* logger to DEBUG and adds a handler that ticks per record. Every
    per-message ``log.debug`` in Faust and aiokafka then builds a LogRecord and runs the
    handlers: about a fifth of the KPI job's CPU at the default bench load. Without the
    spinner the root logger stays at ``loglevel`` and those calls return at once.

    Every worker's table recovery reads its changelogs to their confirmed ends
    (:func:`confirm_recovery_highwaters`).
    """
    faust = require("faust", "stream")
    confirm_recovery_highwaters()
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    worker.spinner = None
    return worker


def _assigned(app: Any, topic: str) -> set[int]:
    return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}
