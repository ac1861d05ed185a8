"""The wire contract between gateways and the cloud: models, codec and topic names.

Every part (edge, stream, sinks, console) imports this module and nothing else of each
other. It depends only on pydantic and orjson, so a Raspberry Pi can import it cheaply.

Record shape
------------
One Kafka record on ``readings`` carries a :class:`ReadingBatch`: up to
:data:`MAX_BATCH_READINGS` readings of *one* gateway, keyed by the gateway id. Keying by
gateway keeps each device's readings in order (a device belongs to exactly one gateway, so
all its records land in one partition) and lets the stream job pay Faust's per-record cost
once per batch instead of once per reading (about 90 µs per record measured here).

Every model carries ``schema_version``; a consumer rejects versions it does not know.
Validation is strict where it matters for safety and correctness: finite numbers only,
known quantities in canonical units, aware UTC timestamps within sane bounds, and
identifiers that can never inject anything into line protocol, logs, topic keys or URLs.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar

import orjson
import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from climastream.quantities import CANONICAL_UNITS, Quantity, UnitError, check_plausible
from climastream.validation import error_lines, key_path

__all__ = [
    "EARLIEST_EVENT_TIME",
    "MAX_BATCH_READINGS",
    "MAX_CLOCK_SKEW",
    "REPLACED_RUNS_KEPT",
    "RUN_START_TOLERANCE",
    "SAFE_ID_PATTERN",
    "SCHEMA_VERSION",
    "TOPICS",
    "Alert",
    "AlertAction",
    "AlertActionKind",
    "AlertSeverity",
    "AlertState",
    "BatchSplit",
    "ContractError",
    "EvidencePoint",
    "GatewayStatus",
    "KpiValue",
    "Location",
    "NewestStatus",
    "QualityFlag",
    "Quantity",
    "Reading",
    "ReadingBatch",
    "RejectedReading",
    "SourceState",
    "StatusOrder",
    "TopicSpec",
    "Topics",
    "contract_dead_letter_headers",
    "dead_letter_source",
    "decode",
    "decode_batch",
    "encode",
]

SCHEMA_VERSION: Final = 1
#: Nothing measured by this system predates this; a Pi that booted without NTP reports 1970.
EARLIEST_EVENT_TIME: Final = datetime(2015, 1, 1, tzinfo=UTC)
#: How far ahead of the validating host's clock a timestamp may be (gateway clock drift).
MAX_CLOCK_SKEW: Final = timedelta(hours=1)
#: the longest silence an AlertAction may ask for (its ``until`` at most this after ``at``)
MAX_SILENCE: Final = timedelta(days=7)
MAX_BATCH_READINGS: Final = 5000

#: C0 and C1 control characters, DEL and the Unicode line/paragraph separators: anything
#: a log, a line-protocol writer or str.splitlines could take for a line break
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class ContractError(ValueError):
    """A record that does not satisfy the contract. The message names each bad field."""

    def __init__(self, message: str, *, model: str = "", raw: bytes | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.raw = raw


# --------------------------------------------------------------------------- field types


SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"


def _single_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters such as newlines")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _now(info: ValidationInfo) -> datetime:
    context = info.context if isinstance(info.context, Mapping) else None
    now = context.get("now") if context else None
    return now if isinstance(now, datetime) else datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    """An aware time as the same instant in UTC (``tzinfo is UTC``)."""
    if value.tzinfo is UTC:
        return value
    return value.astimezone(UTC) if value.utcoffset() else value.replace(tzinfo=UTC)


def _check_time(field: str, value: datetime, now: datetime) -> datetime:
    """Normalise to UTC and reject timestamps outside [EARLIEST_EVENT_TIME, now + skew]."""
    value = _to_utc(value)
    if value < EARLIEST_EVENT_TIME:
        raise ValueError(
            f"{field} {value.isoformat()} is before {EARLIEST_EVENT_TIME.date()}; "
            "the device clock is probably unset"
        )
    if value > now + MAX_CLOCK_SKEW:
        raise ValueError(
            f"{field} {value.isoformat()} is more than {MAX_CLOCK_SKEW} ahead of now "
            f"({now.isoformat()}); the device clock is probably wrong"
        )
    return value


def _utc_bounded(value: datetime, info: ValidationInfo) -> datetime:
    return _check_time(info.field_name or "time", value, _now(info))


#: Identifiers end up in Kafka keys, line-protocol tags, file names and URLs: no spaces,
#: commas, quotes, '=' or '/' can ever appear, so nothing downstream can be injected.
SafeId = Annotated[str, Strict(), Field(pattern=SAFE_ID_PATTERN)]
SafeText = Annotated[str, Strict(), Field(max_length=300), AfterValidator(_single_line)]
LongText = Annotated[str, Strict(), Field(max_length=8000), AfterValidator(_no_nul)]
# Aware timestamps; strict, so a JSON number is refused (pydantic's lax mode would read the
# number 0 as 1970-01-01) and Python code must pass datetime objects. A JSON *string* of
# digits is still read as Unix time ("1795000000" as seconds, above ~2e10 as milliseconds):
# pydantic-core's strict mode allows that, and refusing it would cost a Python validator
# per timestamp on the stream's decode path; the bounds below still apply to it. The bounds
# are checked in Python (they depend on the clock).
_RawTime = Annotated[AwareDatetime, Strict()]
UtcTime = Annotated[_RawTime, AfterValidator(_utc_bounded)]
FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Count = Annotated[int, Strict(), Field(ge=0, lt=2**63)]
#: A unit symbol ("Cel", "ug/m3", "dB(A)", "%RH", "Cel/min"): units are line-protocol tags,
#: so no spaces, commas, '=', quotes or backslashes; "°", "µ", "²", "³" are allowed.
UNIT_PATTERN = r"^[A-Za-z0-9%/()._^*\-°µ²³]{1,16}$"
Unit = Annotated[str, Strict(), Field(pattern=UNIT_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)


# --------------------------------------------------------------------------- readings


class QualityFlag(StrEnum):
    """Why a reading deserves less trust. Carried on the reading, never hidden."""

    CORRECTED = "corrected"  # a model adjusted the value (e.g. PM humidity correction)
    DERIVED = "derived"  # computed by a model, not measured
    MODEL_FAILED = "model_failed"  # the configured model could not run on this reading
    ANOMALY = "anomaly"  # the edge anomaly score is above the configured level
    # the event time is the gateway's receive time, and the gateway clock was not
    # synchronized (a Pi without RTC before NTP); a device's own time is never flagged
    CLOCK_UNSYNCED = "clock_unsynced"
    REPLAYED = "replayed"  # re-sent from the gateway's durable buffer after an outage
    ESTIMATED = "estimated"  # interpolated or otherwise estimated


class Location(_Model):
    lat: Annotated[FiniteFloat, Field(ge=-90, le=90)]
    lon: Annotated[FiniteFloat, Field(ge=-180, le=180)]
    alt_m: Annotated[FiniteFloat, Field(ge=-1000, le=20000)] | None = None


class Reading(_Model):
    """One measurement of one quantity by one device at one instant.

    ``(device_id, seq)`` identifies a reading exactly: the sequence number increases per
    device and is what every stage de-duplicates on.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    device_id: SafeId
    gateway_id: SafeId
    seq: Count
    quantity: Quantity
    value: FiniteFloat
    unit: Unit
    event_time: _RawTime
    ingest_time: _RawTime
    location: Location | None = None
    zone: SafeId | None = None
    quality: tuple[QualityFlag, ...] = ()
    score: FiniteFloat | None = None
    model_id: SafeId | None = None

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> Reading:
        # One Python hook per reading keeps decoding near 5 µs per reading.
        now = _now(info)
        event_time = _check_time("event_time", self.event_time, now)
        ingest_time = _check_time("ingest_time", self.ingest_time, now)
        if event_time is not self.event_time:
            object.__setattr__(self, "event_time", event_time)
        if ingest_time is not self.ingest_time:
            object.__setattr__(self, "ingest_time", ingest_time)
        canonical = CANONICAL_UNITS[self.quantity]
        if self.unit != canonical:
            raise ValueError(
                f"unit {self.unit!r} is not the canonical unit {canonical!r} for "
                f"{self.quantity.value}; convert at the edge"
            )
        try:
            check_plausible(self.quantity, self.value)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
        if self.score is not None and self.model_id is None:
            raise ValueError("score given without the model_id that produced it")
        return self


class ReadingBatch(_Model):
    """The record on the ``readings`` topic: readings of one gateway, keyed by gateway id."""

    schema_version: Literal[1] = SCHEMA_VERSION
    gateway_id: SafeId
    readings: Annotated[tuple[Reading, ...], Field(min_length=1, max_length=MAX_BATCH_READINGS)]

    @model_validator(mode="after")
    def _one_gateway(self) -> ReadingBatch:
        for index, reading in enumerate(self.readings):
            if reading.gateway_id != self.gateway_id:
                raise ValueError(
                    f"readings.{index}.gateway_id {reading.gateway_id!r} differs from the "
                    f"batch gateway_id {self.gateway_id!r}"
                )
        return self

    @property
    def key(self) -> bytes:
        return self.gateway_id.encode()


# --------------------------------------------------------------------------- KPIs


class KpiValue(_Model):
    """One KPI over one window, for one zone or one device.

    ``kpi_version`` and ``model_ids`` make it traceable (ISO 37114 draft): which algorithm
    version produced it and which edge models touched its inputs. ``completeness`` is the
    fraction of expected readings that arrived, carried on every KPI so that missing data is
    visible.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    kpi_id: SafeId
    kpi_version: SafeId
    zone: SafeId | None = None
    device_id: SafeId | None = None
    quantity: Quantity | None = None
    window_start: _RawTime
    window_end: _RawTime
    value: FiniteFloat
    unit: Unit
    sample_count: Count
    completeness: Annotated[FiniteFloat, Field(ge=0.0, le=1.0)]
    band: SafeId | None = None
    attributes: dict[SafeId, SafeText] = Field(default_factory=dict, max_length=32)
    model_ids: tuple[SafeId, ...] = ()

    @model_validator(mode="after")
    def _scope_and_window(self, info: ValidationInfo) -> KpiValue:
        # one Python hook for both times (as for Reading): KPIs are made by the thousand
        now = _now(info)
        start = _check_time("window_start", self.window_start, now)
        end = _check_time("window_end", self.window_end, now)
        if start is not self.window_start:
            object.__setattr__(self, "window_start", start)
        if end is not self.window_end:
            object.__setattr__(self, "window_end", end)
        if self.zone is None and self.device_id is None:
            raise ValueError("a KPI needs a zone or a device_id (use zone 'city' for city-wide)")
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self

    @property
    def key(self) -> bytes:
        return (self.zone or self.device_id or "").encode()


# --------------------------------------------------------------------------- alerts


class AlertState(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"
    ACKNOWLEDGED = "acknowledged"
    SILENCED = "silenced"


class AlertSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class EvidencePoint(_Model):
    time: UtcTime
    value: FiniteFloat
    device_id: SafeId | None = None
    quantity: Quantity | None = None


class Alert(_Model):
    """A state change of one alert, identified by its stable ``fingerprint``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    fingerprint: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{8,64}$")]
    rule_id: SafeId
    state: AlertState
    severity: AlertSeverity
    summary: SafeText
    description: LongText = ""
    team: SafeId | None = None
    zone: SafeId | None = None
    device_id: SafeId | None = None
    gateway_id: SafeId | None = None
    kpi_id: SafeId | None = None
    location: Location | None = None
    value: FiniteFloat | None = None
    threshold: FiniteFloat | None = None
    unit: Unit | None = None
    completeness: Annotated[FiniteFloat, Field(ge=0.0, le=1.0)] | None = None
    score: FiniteFloat | None = None
    started_at: UtcTime
    updated_at: UtcTime
    evidence: Annotated[tuple[EvidencePoint, ...], Field(max_length=50)] = ()
    labels: dict[SafeId, SafeText] = Field(default_factory=dict, max_length=32)

    @property
    def key(self) -> bytes:
        return self.fingerprint.encode()


class AlertActionKind(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    SILENCE = "silence"
    UNSILENCE = "unsilence"


class AlertAction(_Model):
    """A person's request to acknowledge or silence an alert, on ``alert-actions``.

    The alert engine is the only writer of alert state: it applies the action and publishes
    the resulting :class:`Alert` state change on ``alerts``. Console and CLI only send this.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    fingerprint: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{8,64}$")]
    action: AlertActionKind
    actor: SafeId
    at: UtcTime
    # for silence: when it ends (None: until the alert resolves). A future time by design,
    # so not bounded by "now + clock skew" like the other times, but by ``at``.
    until: _RawTime | None = None
    comment: SafeText = ""

    @model_validator(mode="after")
    def _silence_ends_after_it_starts(self) -> AlertAction:
        if self.until is None:
            return self
        if self.action is not AlertActionKind.SILENCE:
            raise ValueError(f"until applies only to action 'silence', not {self.action.value!r}")
        until = _to_utc(self.until)
        if until is not self.until:
            object.__setattr__(self, "until", until)
        if not self.at < until <= self.at + MAX_SILENCE:
            raise ValueError(
                f"until {until.isoformat()} must be after at ({self.at.isoformat()}) and at "
                f"most {MAX_SILENCE.days} days after it"
            )
        return self

    @property
    def key(self) -> bytes:
        return self.fingerprint.encode()


# --------------------------------------------------------------------------- gateway health


class SourceState(StrEnum):
    UP = "up"
    CONNECTING = "connecting"
    DOWN = "down"
    DISABLED = "disabled"


class GatewayStatus(_Model):
    """Periodic health report of one gateway, on the ``gateway-status`` topic.

    ``time`` is the gateway's wall clock, which a Pi without a real-time clock gets wrong
    for hours after a power cut, until NTP syncs (``clock_synchronized`` says when);
    ``uptime_s`` is the agent run's monotonic uptime. Statuses the gateway buffered
    arrive late and out of order: :attr:`order` tells the newest.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    gateway_id: SafeId
    time: UtcTime
    software_version: SafeText
    uptime_s: Annotated[FiniteFloat, Field(ge=0)]
    #: whether the gateway's clock was synchronized (NTP) when it wrote ``time``; None: it
    #: cannot tell, or a gateway older than this field. Optional, so older statuses still
    #: decode; a consumer older than it refuses a status that carries it (upgrade the
    #: cloud first, see README "Upgrading").
    clock_synchronized: Annotated[bool, Strict()] | None = None
    buffer_depth: Count
    buffer_bytes: Count
    buffer_capacity_bytes: Count
    buffer_oldest_age_s: Annotated[FiniteFloat, Field(ge=0)] | None = None
    outage_capacity_hours: Annotated[FiniteFloat, Field(ge=0)] | None = None
    readings_accepted_total: Count = 0
    readings_sent_total: Count = 0
    dropped: dict[SafeId, Count] = Field(default_factory=dict)
    decode_errors: dict[SafeId, Count] = Field(default_factory=dict)
    sources: dict[SafeId, SourceState] = Field(default_factory=dict)
    model_latency_ms: dict[SafeId, Annotated[FiniteFloat, Field(ge=0)]] = Field(
        default_factory=dict
    )
    #: failures per edge model (load, run or bad output), so a broken model is visible
    model_errors: dict[SafeId, Count] = Field(default_factory=dict)

    @property
    def key(self) -> bytes:
        return self.gateway_id.encode()

    @property
    def order(self) -> StatusOrder:
        """Where this status stands among its gateway's (see :class:`StatusOrder`)."""
        return StatusOrder(self.time - timedelta(seconds=self.uptime_s), self.uptime_s)


#: The statuses of one agent run agree on when it started (``time - uptime_s``) within
#: this (clock drift, NTP slewing); a larger difference is another run, or NTP stepping
#: the clock, which orders like a new run.
RUN_START_TOLERANCE: Final = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class StatusOrder:
    """A gateway status's agent run start (on the gateway's clock) and uptime in that run.

    Which of a gateway's statuses is the newest cannot be read from ``time``: a Pi boots
    after a power cut with fake-hwclock's time, hours behind, and statuses it buffered
    arrive late, those of the run before the cut after the new run's. One run's statuses
    are ordered by uptime; a run that started later by the clocks is newer (a restart, or
    NTP stepping the clock forward). One that started earlier by the clocks is a status
    buffered by an older run, or a new run whose clock is further behind than the last run
    lasted: nothing in the statuses tells which, so it counts as newer only once the
    newest has gone stale (nothing newer for a while: the old run is not sending), as
    does a lower uptime of the newest's run (a new run started, by the clocks, with it).
    A run that has been replaced stays old while the newest is not stale: a later run
    can start at the same time by the clocks (a power cut soon after another restores the
    same fake-hwclock save), and its statuses would otherwise never be shown.
    """

    run_start: datetime
    uptime_s: float

    def same_run(self, other: StatusOrder) -> bool:
        return abs(self.run_start - other.run_start) <= RUN_START_TOLERANCE

    def is_newer_than(
        self,
        newest: StatusOrder,
        *,
        replaced: Iterable[datetime] = (),
        newest_stale: bool = False,
    ) -> bool:
        """Whether this status replaces ``newest`` (the newest so far), given the starts of
        runs it replaced before and whether ``newest`` was received too long ago."""
        if self.same_run(newest):
            return self.uptime_s >= newest.uptime_s or newest_stale
        if newest_stale:
            return True
        if any(abs(self.run_start - old) <= RUN_START_TOLERANCE for old in replaced):
            return False
        return self.run_start > newest.run_start


#: run starts remembered per gateway as replaced by its newest status, so that statuses
#: those runs buffered stay old (:meth:`StatusOrder.is_newer_than`)
REPLACED_RUNS_KEPT: Final = 8


@dataclass(slots=True)
class NewestStatus:
    """A gateway's newest status so far (its :class:`StatusOrder`), when it was received,
    and the starts of the runs it replaced: what a consumer that keeps it in memory (the
    console, ``climastream tail``) needs to tell whether the next status replaces it."""

    order: StatusOrder
    received: datetime
    replaced: deque[datetime] = field(default_factory=lambda: deque(maxlen=REPLACED_RUNS_KEPT))

    def offer(self, order: StatusOrder, now: datetime, stale_after: timedelta) -> bool:
        """Whether a status of ``order`` received at ``now`` replaces the newest (which
        stands against an earlier-started run until it is ``stale_after`` old); if so,
        it is the newest from now on."""
        stale = now - self.received > stale_after
        if not order.is_newer_than(self.order, replaced=self.replaced, newest_stale=stale):
            return False
        if not order.same_run(self.order):
            self.replaced.append(self.order.run_start)
        self.order, self.received = order, now
        return True


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    #: what one record holds
    model: type[_Model] | None
    description: str
    compacted: bool = False
    #: the broker stamps each record with the time it appended it
    #: (``message.timestamp.type=LogAppendTime``), not the producer's clock: for records
    #: whose producers' clocks can be hours wrong (a gateway after a power cut)
    log_append_time: bool = False


class Topics:
    """Every Kafka topic the system uses, in one place."""

    READINGS = TopicSpec("readings", 4, ReadingBatch, "ReadingBatch per gateway, key gateway_id")
    KPI = TopicSpec("kpi", 4, KpiValue, "KpiValue, key zone or device_id")
    ALERTS = TopicSpec("alerts", 1, Alert, "Alert state changes, key fingerprint")
    GATEWAY_STATUS = TopicSpec(
        "gateway-status", 1, GatewayStatus, "GatewayStatus, key gateway_id", log_append_time=True
    )
    LATE_READINGS = TopicSpec(
        "late-readings", 4, ReadingBatch, "readings later than the allowed lateness"
    )
    DEAD_LETTER = TopicSpec(
        "dead-letter", 1, None, "records that failed the contract or the database, with reason"
    )
    ALERT_ACTIONS = TopicSpec(
        "alert-actions", 1, AlertAction, "acknowledge/silence requests, key fingerprint"
    )


TOPICS: Final[tuple[TopicSpec, ...]] = tuple(
    spec for spec in vars(Topics).values() if isinstance(spec, TopicSpec)
)


# --------------------------------------------------------------------------- codec

M = TypeVar("M", bound=BaseModel)


def encode(model: BaseModel) -> bytes:
    """Serialise a contract model to compact JSON (orjson; RFC 3339 UTC timestamps)."""
    return orjson.dumps(model.model_dump(mode="python", exclude_none=True))


def _describe(exc: ValidationError, model: str) -> str:
    parts = error_lines(exc, limit=5, root="<record>")
    more = exc.error_count() - len(parts)
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"invalid {model}: " + "; ".join(parts) + suffix


def decode(raw: bytes | str, model: type[M], *, now: datetime | None = None) -> M:
    """Parse and validate one JSON record. Raises :class:`ContractError` naming each bad field.

    ``now`` bounds future timestamps; it defaults to the host clock. Parsing and validation
    happen in one pass in pydantic-core (about 4 µs per reading); :func:`encode` uses orjson.
    """
    name = model.__name__
    try:
        return model.model_validate_json(raw, context={"now": now} if now else None)
    except ValidationError as exc:
        raise ContractError(_describe(exc, name), model=name, raw=_as_bytes(raw)) from None


def _as_bytes(raw: bytes | str | None) -> bytes | None:
    if raw is None:
        return None
    return raw.encode() if isinstance(raw, str) else raw


# --------------------------------------------------------------------------- batch split

#: the ``reason`` header of the dead-letter record of a batch's rejected readings
PARTIAL_BATCH_REASON: Final = "partial-batch"
#: its ``error`` header is cut to this many bytes
PARTIAL_BATCH_ERROR_BYTES: Final = 4000


#: the ``error`` header of a dead letter for a record that failed the contract whole is cut
#: to this many bytes
CONTRACT_ERROR_BYTES: Final = 1000


def contract_dead_letter_headers(exc: ContractError) -> dict[str, bytes]:
    """The ``reason`` (``contract``) and ``error`` headers of the dead letter of a record
    that failed the contract whole (see :meth:`BatchSplit.dead_letter_headers` for one
    whose readings failed on their own); :func:`dead_letter_source` adds who and where."""
    return {"reason": b"contract", "error": str(exc).encode()[:CONTRACT_ERROR_BYTES]}


def dead_letter_source(
    consumer: Literal["stream", "sink", "alerts"],
    topic: str,
    partition: int | None = None,
    offset: int | None = None,
) -> dict[str, bytes]:
    """The headers naming who sent a dead letter and from where, beside ``reason`` and
    ``error``: ``consumer`` (``stream`` the KPI worker, ``sink``, ``alerts`` the alert
    engine) and ``source_topic``, ``source_partition``, ``source_offset``.

    Each consumer of a topic decides alike and sends its own dead letter, so one bad
    reading on ``readings`` is dead-lettered once by each consumer running (up to three
    times), and again by the same consumer if a crash redelivers its record. Whoever counts
    bad records counts one consumer's dead letters, distinct by source topic, partition and
    offset.
    """
    headers = {"consumer": consumer.encode(), "source_topic": topic.encode()}
    if partition is not None:
        headers["source_partition"] = str(partition).encode()
    if offset is not None:
        headers["source_offset"] = str(offset).encode()
    return headers


class _BatchEnvelope(_Model):
    """A :class:`ReadingBatch` whose readings are not looked at: is the record itself sound?"""

    schema_version: Literal[1] = SCHEMA_VERSION
    gateway_id: SafeId
    readings: Annotated[tuple[Any, ...], Field(min_length=1, max_length=MAX_BATCH_READINGS)]


@dataclass(frozen=True, slots=True)
class RejectedReading:
    """One reading of a sound batch that fails the contract on its own."""

    #: its position in the record's ``readings``
    index: int
    #: its ``device_id`` as written (quoted when not a safe id), or None when it has none
    device_id: str | None
    #: ``field: message`` per problem, as in :class:`ContractError`
    error: str
    #: the reading's JSON, re-serialised from the record (same values, maybe other
    #: spacing), always valid JSON: a value no float can hold (``1e400``) and the non-JSON
    #: constants the record parser accepts (``NaN``, ``Infinity``) become the strings
    #: ``"Infinity"``/``"NaN"``
    raw: bytes

    def describe(self) -> str:
        device = "no device_id" if self.device_id is None else f"device {self.device_id}"
        return f"readings.{self.index} ({device}): {self.error}"


@dataclass(frozen=True, slots=True)
class BatchSplit:
    """A ``readings`` record as a consumer uses it: the readings that satisfy the contract,
    and those that do not (only when the record's envelope is sound; see :func:`decode_batch`)."""

    gateway_id: str
    readings: tuple[Reading, ...]
    rejected: tuple[RejectedReading, ...] = ()

    @property
    def key(self) -> bytes:
        return self.gateway_id.encode()

    def dead_letter_value(self) -> bytes:
        """The rejected readings as one ReadingBatch-shaped record, in record order."""
        head = orjson.dumps({"schema_version": SCHEMA_VERSION, "gateway_id": self.gateway_id})
        body = b",".join(r.raw for r in self.rejected)
        return head[:-1] + b',"readings":[' + body + b"]}"

    def dead_letter_headers(self) -> dict[str, bytes]:
        """The ``reason`` and ``error`` headers of :meth:`dead_letter_value`'s record."""
        error = self.dead_letter_error(limit=PARTIAL_BATCH_ERROR_BYTES)
        return {
            "reason": PARTIAL_BATCH_REASON.encode(),
            "error": error.encode()[:PARTIAL_BATCH_ERROR_BYTES],
        }

    def dead_letter_error(self, limit: int = PARTIAL_BATCH_ERROR_BYTES) -> str:
        """What is wrong with each rejected reading (index, device, field), at most about
        ``limit`` characters; the rest are counted."""
        total = len(self.readings) + len(self.rejected)
        text = (
            f"invalid ReadingBatch of gateway {self.gateway_id}: {len(self.rejected)} of "
            f"{total} readings rejected, the other {len(self.readings)} kept: "
        )
        for shown, reading in enumerate(self.rejected):
            part = reading.describe()
            if shown and len(text) + len(part) > limit:
                return text + f" (and {len(self.rejected) - shown} more)"
            text += ("; " if shown else "") + part
        return text


def decode_batch(raw: bytes | str, *, now: datetime | None = None) -> BatchSplit:
    """One ``readings`` record: its valid readings, and the invalid ones with their errors.

    Every consumer of ``readings`` uses this, so each makes the same per-reading decision.
    A valid record costs what ``decode(raw, ReadingBatch)`` costs. Only when it fails is
    the record read again: if its envelope is sound (a JSON object with schema_version,
    a valid gateway_id and 1 to MAX_BATCH_READINGS readings, nothing else), each reading
    is validated on its own, and one of another gateway is rejected as in the batch;
    otherwise :class:`ContractError` for the whole record, as :func:`decode` raises it.

    ``now`` (default: the host clock, read once) bounds future timestamps for the whole
    record, so the split is the one the whole-record verdict was made with.
    """
    now = now or datetime.now(UTC)
    try:
        batch = decode(raw, ReadingBatch, now=now)
    except ContractError as exc:
        split = _split(raw, now)
        if split is None:
            raise exc from None
        return split
    return BatchSplit(batch.gateway_id, batch.readings)


def _split(raw: bytes | str, now: datetime) -> BatchSplit | None:
    """The readings of a sound envelope one by one; None if the envelope is not sound."""
    try:
        envelope = _BatchEnvelope.model_validate_json(raw)
    except ValidationError:
        return None
    context = {"now": now}
    good: list[Reading] = []
    rejected: list[RejectedReading] = []
    for index, item in enumerate(envelope.readings):
        # parsed by the same JSON parser as the record; floats and big ints round-trip
        item_raw = pydantic_core.to_json(item, inf_nan_mode="constants")
        try:
            reading = Reading.model_validate_json(item_raw, context=context)
        except ValidationError as exc:
            lines = error_lines(exc, limit=3, root="")
            error = "; ".join(line.removeprefix(": ") for line in lines)
            device = _device_of(item)
        else:
            if reading.gateway_id == envelope.gateway_id:
                good.append(reading)
                continue
            error = (
                f"gateway_id {reading.gateway_id!r} differs from the batch gateway_id "
                f"{envelope.gateway_id!r}"
            )
            device = reading.device_id
        # a dead letter is read by strict JSON tools (jq): inf and nan become strings
        item_raw = pydantic_core.to_json(item, inf_nan_mode="strings")
        rejected.append(RejectedReading(index, device, error, item_raw))
    if not rejected:
        return None  # the record failed for a reason no single reading has: keep that verdict
    return BatchSplit(envelope.gateway_id, tuple(good), tuple(rejected))


def _device_of(item: Any) -> str | None:
    device = item.get("device_id") if isinstance(item, dict) else None
    return key_path([device]) if isinstance(device, str) else None
