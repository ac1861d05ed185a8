"""Durable store-and-forward buffer between the sources and Kafka.

Contract (every backend; ``tests/unit/edge/test_buffer_contract.py`` checks it on each):

* :meth:`Buffer.append` stores records in order. When it returns they are *accepted*: for
  :class:`SqliteBuffer` they survive a crash of the process (and, with ``fsync_window_s`` 0,
  a power cut). It never raises because the buffer is full: the overflow policy decides, and
  every record it drops is counted under a reason in :meth:`Buffer.dropped`.
* Overflow ``drop_oldest`` evicts gateway-status records first (each is superseded by the
  next one; counted as ``status_evicted``), then the oldest readings (``buffer_full``);
  ``drop_newest`` refuses the incoming readings. Records ever handed out by
  :meth:`Buffer.take` and not yet acked are never evicted nor expired, even after
  :meth:`release` (a send that timed out may still land in Kafka), so a record is never both
  dropped and sent. :class:`SqliteBuffer` keeps that across restarts: the mark is committed
  before take returns, and after a power cut (which may lose it) every stored record counts
  as handed out.
* :meth:`Buffer.take` hands out the oldest records of a kind not already handed out, in
  append order; :meth:`Buffer.ack` removes them after Kafka acknowledged them;
  :meth:`Buffer.release` returns every handed-out record for a retry (the next take starts
  again from the oldest).
* :meth:`Buffer.expire` drops records older than ``max_age`` (reason ``max_age``; a
  gateway-status record ``status_evicted``, like one evicted or too large: only readings
  count under the readings' reasons). Age is time the agent ran with the record stored,
  measured by the ``clock`` given (monotonic by default), never by the wall clock: a Pi
  has no real-time clock, boots with fake-hwclock's time and NTP steps it by hours or days
  once it is online, so a wall-clock age would expire a whole backlog as it is synced (a
  backward step would make ages negative). :class:`SqliteBuffer` carries the age over a
  restart: a process restart in the same boot counts the time it was down, a reboot does
  not (no clock measures that time reliably on a Pi).
* Drop counters are stored with the records, so they survive restarts exactly.

Every clause holds per record, although records are stored in *chunks*: one chunk holds
consecutive records of one kind from one append (at most ``chunk_records`` of them and
``chunk_bytes`` of joined payload), their payloads joined with ``b","`` plus each payload's
length. So a chunk of readings is, as it is, the inside of a ``ReadingBatch`` record's
``readings`` array, and one SQLite row carries hundreds of readings. Every record has a
*record number*, increasing in append order (stored with the chunks; an empty buffer
starts again at 1 when opened); take, ack and the never-evict mark are positions in record
numbers, and a chunk is split or trimmed (using the lengths, never the separator: payloads
contain commas) when a take, ack, eviction or expiry covers only part of it. A take fills
up to its limit, so it may split a chunk; acking that part rewrites the rest of the chunk.
:class:`Pending` is one contiguous run of taken records of one chunk; ``ack(kind, p.last)``
removes every record of that kind up to ``p.last``.

Byte accounting (``max_bytes``, ``stats().bytes``): a record costs ``len(payload)`` plus
:data:`RECORD_OVERHEAD` (its separator and 4-byte length, with slack), a chunk
:data:`CHUNK_OVERHEAD` (row header, key, index entry). Measured with 250-byte readings, the
checkpointed file is within -4%..+3% of the accounted bytes for chunks of 500, 20 and 1
readings. A record alone in a chunk (a status record, a single-reading append) is charged
about what the old one-row-per-record layout charged (48 bytes), a chunk of hundreds much
less, as SQLite stores it.

Sequence numbers for devices without their own counter come from :meth:`Buffer.next_seqs`
and are written in the same transaction as the records; they are also leased ahead durably,
so even a power cut that loses the last unsynced transactions never makes the gateway reuse
a ``(device, seq)`` that may already be in Kafka. The readings such a power cut loses are
counted whoever numbered them (:class:`SqliteBuffer`).

Methods block. The agent calls them from one worker thread, off the event loop.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import os
import sqlite3
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple, Protocol

import orjson

#: accounted bytes per record on top of its payload: the ``,`` separator and its 4-byte
#: length in the chunk, with slack
RECORD_OVERHEAD = 8
#: accounted bytes per chunk: SQLite row header, key, index entry, column headers
CHUNK_OVERHEAD = 64
#: default upper bounds of one chunk (the agent passes its batch limits instead)
CHUNK_RECORDS = 2000
CHUNK_BYTES = 1024 * 1024
#: a clean shutdown writes this into the counters table; its absence at open means a crash
_CLEAN = "clean_shutdown"
#: counters rows: readings ever offered to :meth:`SqliteBuffer.append` (stored or counted as
#: dropped by it), written with each append; and the synced allowance, an upper bound of
#: that count at any moment (see :meth:`SqliteBuffer.sync`)
_APPENDED = "readings_appended"
_ALLOWANCE = "readings_allowed"


def _attempted(kind: Kind) -> str:
    """The counters row of the highest record number of ``kind`` ever handed out."""
    return f"attempted:{int(kind)}"


#: devices in the sequence-number journal row before it is folded into ``device_seq``
_JOURNAL_MAX = 1000
#: old one-row-per-record rows moved into chunks per transaction at open
_MIGRATE_ROWS = 20_000
#: layout version in the ``meta`` table: 2 = chunks (1, implicit, was one row per record)
SCHEMA_VERSION = 2


class Kind(enum.IntEnum):
    READING = 0
    STATUS = 1


class DropReason:
    BUFFER_FULL = "buffer_full"
    MAX_AGE = "max_age"
    POWER_CUT = "power_cut_unsynced"
    TOO_LARGE = "record_too_large"
    #: a gateway-status record dropped for room, age or size (not a reading: counted apart
    #: from them; a newer one follows)
    STATUS_EVICTED = "status_evicted"


class Record(NamedTuple):
    """One record to append. A named tuple: the agent builds one per reading, and a tuple
    costs about a third of a frozen dataclass's ``__init__``."""

    device_id: str
    seq: int
    payload: bytes
    kind: Kind = Kind.READING


@dataclass(frozen=True, slots=True)
class Pending:
    """Records ``first`` to ``last`` (record numbers) handed out by :meth:`Buffer.take`.

    ``payload`` is their payloads joined with ``b","``; ``lengths`` the length of each, to
    split it (:meth:`payloads`). A take returns a list of these in record order: each a run
    of one chunk, usually the whole chunk.
    """

    first: int
    last: int
    payload: bytes
    lengths: Sequence[int]

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def payloads(self) -> list[bytes]:
        """The individual payloads, split by length (a payload may contain commas)."""
        out = []
        start = 0
        payload = self.payload
        for length in self.lengths:
            out.append(payload[start : start + length])
            start += length + 1
        return out


@dataclass(frozen=True, slots=True)
class BufferStats:
    depth: int
    bytes: int
    oldest_age_s: float | None
    status_depth: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of one append: how many records were stored and what was dropped for it."""

    stored: int
    dropped: dict[str, int] = field(default_factory=dict)


class Buffer(Protocol):
    """See the module docstring for the contract every backend keeps."""

    max_bytes: int

    def append(self, records: Sequence[Record]) -> Admission: ...

    def take(self, kind: Kind, limit: int, max_bytes: int | None = None) -> list[Pending]: ...

    def ack(self, kind: Kind, up_to: int) -> int: ...

    def release(self, kind: Kind) -> None: ...

    def expire(self) -> dict[str, int]: ...

    def next_seqs(self, counts: dict[str, int]) -> dict[str, int]: ...

    def dropped(self) -> dict[str, int]: ...

    def stats(self) -> BufferStats: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


def _reason(kind: Kind, reading: str = DropReason.BUFFER_FULL) -> str:
    """A dropped reading counts under ``reading`` (``buffer_full`` unless said); a status
    record, whatever the cause, under ``status_evicted``: it is not a reading."""
    return DropReason.STATUS_EVICTED if kind is Kind.STATUS else reading


def _count(dropped: dict[str, int], reason: str, n: int) -> None:
    if n:
        dropped[reason] = dropped.get(reason, 0) + n


# --------------------------------------------------------------------------- chunks


def accounted(lengths: Sequence[int]) -> int:
    """Accounted bytes of a chunk of records with these payload lengths (what ``max_bytes``
    and ``stats().bytes`` count)."""
    return sum(lengths) + RECORD_OVERHEAD * len(lengths) + CHUNK_OVERHEAD


def _lengths(blob: bytes) -> array[int]:
    lengths = array("I")
    lengths.frombytes(blob)
    if sys.byteorder == "big":  # stored little-endian, like every gateway CPU
        lengths.byteswap()
    return lengths


def _lengths_blob(lengths: array[int]) -> array[int]:
    if sys.byteorder == "big":
        lengths = array("I", lengths)
        lengths.byteswap()
    return lengths


@dataclass(slots=True)
class _Chunk:
    """Consecutive records ``first`` .. ``first + len(lengths) - 1`` of one kind."""

    kind: Kind
    first: int
    lengths: array[int]
    payload: bytes
    at: float
    size: int

    @property
    def last(self) -> int:
        return self.first + len(self.lengths) - 1

    def part(self, i: int, j: int) -> _Chunk:
        """Records ``i`` to ``j - 1`` (indexes in this chunk) as a chunk of their own."""
        lengths = self.lengths[i:j]
        start = sum(self.lengths[:i]) + i
        end = start + sum(lengths) + len(lengths) - 1
        return _Chunk(
            self.kind,
            self.first + i,
            lengths,
            self.payload[start:end],
            self.at,
            accounted(lengths),
        )

    def without(self, i: int, j: int) -> list[_Chunk]:
        """What is left after removing records ``i`` to ``j - 1``: zero, one or two chunks."""
        parts = []
        if i > 0:
            parts.append(self.part(0, i))
        if j < len(self.lengths):
            parts.append(self.part(j, len(self.lengths)))
        return parts


@dataclass(slots=True)
class _Incoming:
    """Records of one kind on their way into one chunk (append drops trim these)."""

    kind: Kind
    payloads: list[bytes]
    lengths: list[int]


_payload_of = itemgetter(2)
_kind_of = itemgetter(3)


def _group(
    records: Sequence[Record],
    max_bytes: int,
    chunk_records: int,
    chunk_bytes: int,
    dropped: dict[str, int],
) -> tuple[list[_Incoming], int]:
    """Split an append into chunks; count records larger than the whole buffer.

    Returns the chunks and their accounted bytes.
    """
    payloads = list(map(_payload_of, records))
    lengths = list(map(len, payloads))
    kinds = list(map(_kind_of, records))
    largest = max_bytes - RECORD_OVERHEAD - CHUNK_OVERHEAD
    if max(lengths) > largest:
        keep = [i for i, length in enumerate(lengths) if length <= largest]
        for i, length in enumerate(lengths):
            if length > largest:
                _count(dropped, _reason(kinds[i], DropReason.TOO_LARGE), 1)
        payloads = [payloads[i] for i in keep]
        lengths = [lengths[i] for i in keep]
        kinds = [kinds[i] for i in keep]
        if not lengths:
            return [], 0
    runs: list[tuple[Kind, int, int]] = []
    if kinds.count(kinds[0]) == len(kinds):
        runs.append((kinds[0], 0, len(kinds)))
    else:
        start = 0
        for kind, group in itertools.groupby(kinds):
            n = sum(1 for _ in group)
            runs.append((kind, start, start + n))
            start += n
    chunks = []
    for kind, lo, hi in runs:
        whole = lo == 0 and hi == len(lengths) and hi <= chunk_records
        if whole and sum(lengths) + hi - 1 <= chunk_bytes:
            chunks.append(_Incoming(Kind(kind), payloads, lengths))  # the usual append
            continue
        i = lo
        while i < hi:
            j = min(hi, i + chunk_records)
            if sum(lengths[i:j]) + (j - i - 1) > chunk_bytes:
                j, joined = i + 1, lengths[i]  # a record larger than the cap goes alone
                while j < hi and joined + 1 + lengths[j] <= chunk_bytes:
                    joined += 1 + lengths[j]
                    j += 1
            chunks.append(_Incoming(Kind(kind), payloads[i:j], lengths[i:j]))
            i = j
    total = sum(lengths) + RECORD_OVERHEAD * len(lengths) + CHUNK_OVERHEAD * len(chunks)
    return chunks, total


def _drop_incoming(
    chunks: list[_Incoming], excess: int, oldest_first: bool, dropped: dict[str, int]
) -> int:
    """Drop incoming records, oldest or newest first, until ``excess`` bytes are freed."""
    freed = 0
    end = 0 if oldest_first else -1
    while chunks and freed < excess:
        chunk = chunks[end]
        chunk.payloads.pop(end)
        freed += chunk.lengths.pop(end) + RECORD_OVERHEAD
        _count(dropped, _reason(chunk.kind), 1)
        if not chunk.lengths:
            chunks.pop(end)
            freed += CHUNK_OVERHEAD
    return freed


def _evictable(lengths: Sequence[int], start: int, need: int) -> tuple[int, int]:
    """Evict from record ``start`` of a chunk: how many records, and the bytes that frees.

    Evicting up to the chunk's end frees each record's bytes (and the chunk's overhead if
    that is the whole chunk); stopping inside it after ``start`` > 0 leaves two chunks, one
    more overhead. Stops as soon as ``need`` bytes are free.
    """
    n = len(lengths)
    rest = sum(lengths[start:]) + RECORD_OVERHEAD * (n - start)
    if start == 0 and rest + CHUNK_OVERHEAD <= need:
        return n, rest + CHUNK_OVERHEAD  # the whole chunk
    if start > 0 and rest <= need:
        return n - start, rest  # the chunk's untaken tail
    freed = 0
    split = CHUNK_OVERHEAD if start > 0 else 0
    for k, length in enumerate(lengths[start:], start=1):
        freed += length + RECORD_OVERHEAD
        if start + k == n:
            return k, freed + (CHUNK_OVERHEAD if start == 0 else 0)
        if freed - split >= need:
            return k, freed - split
    return 0, 0  # start == n: nothing here


def _take(
    chunks: Iterable[tuple[int, array[int], bytes]],
    after: int,
    limit: int,
    max_bytes: int | None,
) -> list[Pending]:
    """The oldest records numbered above ``after``, at most ``limit`` of them and
    ``max_bytes`` of joined payload (at least one record), from chunks in record order."""
    out: list[Pending] = []
    room = limit
    budget = sys.maxsize if max_bytes is None else max_bytes
    for first, lengths, payload in chunks:
        if room <= 0:
            break
        n = len(lengths)
        sep = 1 if out else 0
        i = after + 1 - first if after >= first else 0
        if i == 0 and n <= room and sep + len(payload) <= budget:
            out.append(Pending(first, first + n - 1, payload, lengths))
            room -= n
            budget -= sep + len(payload)
            continue
        cost = sep - 1  # joined bytes so far, plus the separator before this run
        j = i
        stop = min(n, i + room)
        while j < stop:
            more = cost + 1 + lengths[j]
            if more > budget and (out or j > i):
                break
            cost = more
            j += 1
        if j > i:
            start = sum(lengths[:i]) + i
            out.append(
                Pending(first + i, first + j - 1, payload[start : start + cost - sep], lengths[i:j])
            )
            room -= j - i
            budget -= cost
        if j < n:
            break  # the rest of this chunk does not fit: the take is full
    return out


# --------------------------------------------------------------------------- memory


class MemoryBuffer:
    """The same contract without durability: for tests and gateways with no writable disk."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_age_s: float,
        overflow: str = "drop_oldest",
        chunk_records: int = CHUNK_RECORDS,
        chunk_bytes: int = CHUNK_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._overflow = overflow
        self._chunk_records = max(1, chunk_records)
        self._chunk_bytes = max(1, chunk_bytes)
        self._clock = clock
        self._chunks: dict[Kind, deque[_Chunk]] = {k: deque() for k in Kind}
        self._taken_upto: dict[Kind, int] = dict.fromkeys(Kind, 0)  # last record handed out
        self._attempted_upto: dict[Kind, int] = dict.fromkeys(Kind, 0)  # ever handed out
        self._depth: dict[Kind, int] = dict.fromkeys(Kind, 0)
        self._bytes = 0
        self._next = 1  # record number of the next record stored
        self._seqs: dict[str, int] = {}
        self._dropped: dict[str, int] = {}

    def append(self, records: Sequence[Record]) -> Admission:
        if not records:
            return Admission(0)
        dropped: dict[str, int] = {}
        chunks, incoming = _group(
            records, self.max_bytes, self._chunk_records, self._chunk_bytes, dropped
        )
        oldest_first = self._overflow == "drop_oldest"
        if oldest_first:
            # a batch larger than the whole buffer keeps only its newest records
            if incoming > self.max_bytes:
                incoming -= _drop_incoming(chunks, incoming - self.max_bytes, True, dropped)
            if self._bytes + incoming > self.max_bytes:
                self._evict(self._bytes + incoming - self.max_bytes, dropped)
        if self._bytes + incoming > self.max_bytes:
            # no (more) room: drop incoming records, oldest or newest first by policy
            excess = self._bytes + incoming - self.max_bytes
            incoming -= _drop_incoming(chunks, excess, oldest_first, dropped)
        now = self._clock()
        stored = 0
        for chunk in chunks:
            lengths = array("I", chunk.lengths)
            payload = b",".join(chunk.payloads)
            self._chunks[chunk.kind].append(
                _Chunk(chunk.kind, self._next, lengths, payload, now, accounted(lengths))
            )
            self._next += len(lengths)
            self._depth[chunk.kind] += len(lengths)
            stored += len(lengths)
        self._bytes += incoming
        for reason, n in dropped.items():
            _count(self._dropped, reason, n)
        return Admission(stored, dropped)

    def _evict(self, need: int, dropped: dict[str, int]) -> None:
        """Remove never-taken records, status first then oldest readings, for ``need`` bytes."""
        freed = 0
        for kind in (Kind.STATUS, Kind.READING):
            chunks = self._chunks[kind]
            after = self._attempted_upto[kind]
            index = 0
            while freed < need and index < len(chunks):
                chunk = chunks[index]
                if chunk.last <= after:
                    index += 1
                    continue
                start = after + 1 - chunk.first if after >= chunk.first else 0
                k, gain = _evictable(chunk.lengths, start, need - freed)
                rest = chunk.without(start, start + k)
                del chunks[index]
                for part in reversed(rest):
                    chunks.insert(index, part)
                index += len(rest)
                freed += gain
                self._bytes -= gain
                self._depth[kind] -= k
                _count(dropped, _reason(kind), k)

    def take(self, kind: Kind, limit: int, max_bytes: int | None = None) -> list[Pending]:
        after = self._taken_upto[kind]
        chunks = ((c.first, c.lengths, c.payload) for c in self._chunks[kind] if c.last > after)
        out = _take(chunks, after, limit, max_bytes)
        if out:
            self._taken_upto[kind] = out[-1].last
            self._attempted_upto[kind] = max(self._attempted_upto[kind], out[-1].last)
        return out

    def ack(self, kind: Kind, up_to: int) -> int:
        chunks = self._chunks[kind]
        removed = 0
        while chunks and chunks[0].first <= up_to:
            chunk = chunks.popleft()
            if chunk.last <= up_to:
                removed += len(chunk.lengths)
                self._bytes -= chunk.size
                continue
            index = up_to + 1 - chunk.first
            rest = chunk.part(index, len(chunk.lengths))
            chunks.appendleft(rest)
            removed += index
            self._bytes -= chunk.size - rest.size
            break
        self._depth[kind] -= removed
        return removed

    def release(self, kind: Kind) -> None:
        self._taken_upto[kind] = 0

    def expire(self) -> dict[str, int]:
        dropped: dict[str, int] = {}
        horizon = self._clock() - self._max_age_s
        for kind in Kind:
            after = self._attempted_upto[kind]
            if not any(c.at < horizon and c.last > after for c in self._chunks[kind]):
                continue
            kept: deque[_Chunk] = deque()
            for chunk in self._chunks[kind]:
                if chunk.last <= after or chunk.at >= horizon:
                    kept.append(chunk)
                    continue
                start = after + 1 - chunk.first if after >= chunk.first else 0
                rest = chunk.without(start, len(chunk.lengths))  # never a taken record
                kept.extend(rest)
                self._bytes -= chunk.size - sum(part.size for part in rest)
                self._depth[kind] -= len(chunk.lengths) - start
                _count(dropped, _reason(kind, DropReason.MAX_AGE), len(chunk.lengths) - start)
            self._chunks[kind] = kept
        for reason, n in dropped.items():
            _count(self._dropped, reason, n)
        return dropped

    def next_seqs(self, counts: dict[str, int]) -> dict[str, int]:
        first = {}
        for device_id, count in counts.items():
            start = self._seqs.get(device_id, 0)
            first[device_id] = start
            self._seqs[device_id] = start + count
        return first

    def dropped(self) -> dict[str, int]:
        return dict(self._dropped)

    def stats(self) -> BufferStats:
        readings = self._chunks[Kind.READING]  # a status record is not a backlog
        oldest = readings[0].at if readings else None
        return BufferStats(
            depth=self._depth[Kind.READING],
            bytes=self._bytes,
            oldest_age_s=None if oldest is None else max(0.0, self._clock() - oldest),
            status_depth=self._depth[Kind.STATUS],
        )

    def sync(self) -> None:
        """Nothing to sync: memory is lost on a crash by definition."""

    def close(self) -> None:
        self._chunks = {k: deque() for k in Kind}


# --------------------------------------------------------------------------- sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    last INTEGER PRIMARY KEY,  -- record number of the chunk's last record
    kind INTEGER NOT NULL,
    first INTEGER NOT NULL,  -- record number of its first record
    size INTEGER NOT NULL,  -- accounted bytes
    enqueued_at REAL NOT NULL,
    lengths BLOB NOT NULL,  -- each record's payload length, uint32 little-endian
    payload BLOB NOT NULL  -- the payloads joined with ','
);
CREATE INDEX IF NOT EXISTS chunks_kind_last ON chunks(kind, last);
CREATE TABLE IF NOT EXISTS device_seq (
    device_id TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    lease_end INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_INSERT = (
    "INSERT INTO chunks(last, kind, first, size, enqueued_at, lengths, payload) "
    "VALUES (?,?,?,?,?,?,?)"
)


class BufferFormatError(RuntimeError):
    """The buffer file was written by a newer agent with a layout this one cannot read."""


def boot_id() -> str:
    """This boot's id (Linux); a different id at open means the machine restarted."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class SqliteBuffer:
    """SQLite in WAL mode, one row per chunk; see the module docstring for the contract.

    Durability: WAL with ``synchronous=FULL`` when ``fsync_window_s`` is 0 (each append is on
    the disk when it returns). Otherwise ``synchronous=NORMAL``: a commit survives a crash
    of the process at once and :meth:`sync` (called every window) puts it on the disk.

    After a power cut (unclean shutdown *and* a new boot id) the transactions after the last
    sync may be gone (SQLite keeps a prefix of the commits). Two durable records make that
    visible:

    * Readings, whoever numbers them (gateway seq, LoRaWAN fCnt, framed-protocol seq): each
      append adds the readings it was given (stored, or counted as dropped) to a counter in
      its own transaction, and an *allowance*, an upper bound of that counter, is on the
      disk before any append passes it: :meth:`sync` writes the count so far plus the
      readings of the interval just ended, and an append that would pass it writes a new
      one and fsyncs before it returns. At open after a power cut, allowance minus the
      counter that survived is counted as ``power_cut_unsynced``: every reading of the lost
      commits, plus the allowance left unused, which is at most the readings of one sync
      interval (the one before the allowance was written, or the current one so far). An
      upper bound: a reading of a lost commit may also have been sent before the cut. With
      ``fsync_window_s`` 0 every commit is on the disk and nothing is allowed ahead: 0.
    * Gateway-assigned sequence numbers are leased ahead with a synced write, so the agent
      continues after the lease and never reuses a ``(device, seq)`` that may be in Kafka.
      The numbers skipped are not readings and are not counted. After a run with
      ``fsync_window_s`` 0 the high-water marks written with each append are on the disk,
      so nothing is skipped.

    Ages: each chunk's ``enqueued_at`` is a reading of the buffer's *age clock*, which
    advances with ``clock`` (monotonic) while the buffer is open and is saved in ``meta``
    with the boot id and the ``clock`` reading (at open, every :meth:`expire` and close).
    Opened again in the same boot it adds the time since it was saved (the monotonic clock
    went on); after a reboot it goes on from the saved value: time the gateway was off is
    not age. A file without one (a new file, or one of an agent that stamped wall-clock
    times) starts it at ``wall_clock()``, so its stamps keep their ages. It never goes
    back past the newest stamp, so no age is negative.

    A file written by the earlier one-row-per-record layout (table ``records``) is moved
    into chunks at open, in one transaction, in record order; a file with a newer layout
    than :data:`SCHEMA_VERSION` is refused with :class:`BufferFormatError`.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        overflow: str = "drop_oldest",
        fsync_window_s: float = 0.0,
        seq_lease: int = 1000,
        chunk_records: int = CHUNK_RECORDS,
        chunk_bytes: int = CHUNK_BYTES,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        boot_id_fn: Callable[[], str] = boot_id,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._overflow = overflow
        self._chunk_records = max(1, chunk_records)
        self._chunk_bytes = max(1, chunk_bytes)
        self._clock = clock
        self._wall_clock = wall_clock
        # the age clock (see _age): its reading at _age_at, the clock's then
        self._age_base = 0.0
        self._age_at = 0.0
        self._boot = ""
        self._seq_lease = seq_lease
        self._sync_mode = "NORMAL" if fsync_window_s > 0 else "FULL"
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._check_version()
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective on a new file
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={self._sync_mode}")
        self._db.execute("PRAGMA journal_size_limit=16777216")  # give WAL space back
        # Debian's SQLite (so Raspberry Pi OS's) defaults to secure_delete=ON: every page an
        # ack frees is zeroed and written to the WAL again, which measured 0.4-0.6 µs per
        # reading. FAST still zeroes deleted cells on pages written anyway; freed pages are
        # left as they are until reused (the readings are on their way to Kafka anyway).
        self._db.execute("PRAGMA secure_delete=FAST")
        # Checkpoint every 4000 pages (16 MB, the size limit above) instead of SQLite's 1000:
        # most records are acked and deleted before a checkpoint copies them into the
        # database file, which measured ~40% off the insert cost. Durability is unchanged:
        # a commit is in the WAL, and sync() fsyncs the WAL itself.
        self._db.execute("PRAGMA wal_autocheckpoint=4000")
        self._db.executescript(_SCHEMA)
        self._taken_upto: dict[Kind, int] = dict.fromkeys(Kind, 0)
        # highest record number ever handed out: those records may be in Kafka already (a
        # send that timed out may still land), so they are never evicted, only acked; it
        # is committed before take returns them, so it outlives the process (see _open)
        self._attempted_upto: dict[Kind, int] = dict.fromkeys(Kind, 0)
        self._seqs: dict[str, tuple[int, int]] = {}
        # devices whose next_seq moved since the last append, which writes them
        self._dirty: set[str] = set()
        # devices whose high-water mark is in the journal row, not yet in device_seq
        self._journal: set[str] = set()
        # readings offered to append so far (the counter row), and the allowance on the
        # disk (None: none needed, every commit is synced)
        self._appended = 0
        self._allowed: int | None = None
        # the counter at the last sync, and the readings appended in the interval before it
        self._appended_at_sync = 0
        self._interval = 0
        self.recovered: str = "clean"
        #: records moved from the one-row-per-record layout at open
        self.migrated = 0
        self._open(boot_id_fn())

    # ----------------------------------------------------------------- open / close

    def _check_version(self) -> None:
        db = self._db
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            return
        row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            db.close()
            raise BufferFormatError(
                f"buffer {self.path} has layout version {row[0]}, newer than this agent's "
                f"{SCHEMA_VERSION}: run the newer agent to drain it, or move the file away"
            )

    def _migrate(self) -> None:
        """Move rows of the one-row-per-record layout into chunks, in record order.

        Records of one old append share their ``enqueued_at``; a chunk takes consecutive
        records of one kind with the same ``enqueued_at``, so expiry is unchanged. Each
        transaction moves the oldest :data:`_MIGRATE_ROWS` rows and deletes them, so the
        WAL stays small and a crash in between resumes where it stopped.
        """
        db = self._db
        old = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
        if db.execute(old).fetchone() is None:
            return
        while True:
            with self._tx():
                rows = db.execute(
                    "SELECT id, kind, device_id, seq, enqueued_at, payload FROM records "
                    "ORDER BY id LIMIT ?",
                    (_MIGRATE_ROWS,),
                ).fetchall()
                if not rows:
                    db.execute("DROP TABLE records")  # its index goes with it
                    return
                number = int(db.execute("SELECT COALESCE(MAX(last), 0) FROM chunks").fetchone()[0])
                chunks = []
                for (kind, at), run in itertools.groupby(rows, key=itemgetter(1, 4)):
                    records = [Record(r[2], r[3], r[5], Kind(kind)) for r in run]
                    for chunk in _group(
                        records, sys.maxsize, self._chunk_records, self._chunk_bytes, {}
                    )[0]:
                        lengths = array("I", chunk.lengths)
                        first, number = number + 1, number + len(lengths)
                        chunks.append(
                            (
                                number,
                                int(chunk.kind),
                                first,
                                accounted(lengths),
                                at,
                                _lengths_blob(lengths),
                                b",".join(chunk.payloads),
                            )
                        )
                db.executemany(_INSERT, chunks)
                db.execute("DELETE FROM records WHERE id <= ?", (rows[-1][0],))
                self.migrated += len(rows)

    def _open(self, this_boot: str) -> None:
        db = self._db
        self._migrate()
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        fresh = not counters and db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is None
        meta = dict(
            db.execute(
                "SELECT name, value FROM meta WHERE name IN ('boot_id', 'sync_mode', 'age_clock')"
            )
        )
        appended = int(counters.get(_APPENDED, 0))
        with self._tx():
            self._fold_journal()
            rows = db.execute("SELECT device_id, next_seq, lease_end FROM device_seq").fetchall()
            if not fresh and not counters.get(_CLEAN, 0):
                if meta.get("boot_id") == this_boot:
                    # the process died, the kernel kept every committed page: nothing lost
                    self.recovered = "crash"
                else:
                    self.recovered = "power_cut"
                    if _ALLOWANCE in counters:
                        lost = max(0, int(counters[_ALLOWANCE]) - appended)
                    else:  # a file of an agent before the allowance: its seq lease gaps
                        lost = sum(max(0, lease - nxt) for _, nxt, lease in rows)
                    self._bump(DropReason.POWER_CUT, lost)
                    if meta.get("sync_mode") != "FULL":
                        # seqs past the surviving marks may be in Kafka: continue after them
                        db.execute("UPDATE device_seq SET next_seq = MAX(next_seq, lease_end)")
            # Records handed out may be in Kafka: never evict them, after a restart either.
            # The mark is committed before take returns them, so it survives a crash; a
            # power cut may lose its last moves (it is not fsynced), so then every record
            # still buffered counts as handed out.
            last = dict(db.execute("SELECT kind, MAX(last) FROM chunks GROUP BY kind"))
            for kind in Kind:
                mark = int(counters.get(_attempted(kind), 0))
                if self.recovered == "power_cut":
                    mark = max(mark, int(last.get(int(kind), 0)))
                # a mark past every stored record would cover the numbers of new ones
                self._attempted_upto[kind] = min(mark, int(last.get(int(kind), 0)))
            db.executemany(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [
                    (_CLEAN, 0),
                    (_APPENDED, appended),
                    (_ALLOWANCE, appended),
                    *((_attempted(k), self._attempted_upto[k]) for k in Kind),
                ],
            )
            self._start_age_clock(meta.get("age_clock"), this_boot)
            db.executemany(
                "INSERT INTO meta(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [
                    ("boot_id", this_boot),
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("sync_mode", self._sync_mode),
                ],
            )
        self._full_sync()
        self._appended = self._appended_at_sync = appended
        self._allowed = appended if self._sync_mode != "FULL" else None
        if self.migrated:
            db.execute("PRAGMA incremental_vacuum")
        for device_id, nxt, lease in db.execute(
            "SELECT device_id, next_seq, lease_end FROM device_seq"
        ).fetchall():
            self._seqs[device_id] = (int(nxt), int(lease))
        self._bytes = 0
        self._depth = dict.fromkeys(Kind, 0)
        for kind, size, count in db.execute(
            "SELECT kind, SUM(size), SUM(last - first + 1) FROM chunks GROUP BY kind"
        ):
            self._bytes += int(size)
            self._depth[Kind(kind)] = int(count)
        self._next = int(db.execute("SELECT COALESCE(MAX(last), 0) FROM chunks").fetchone()[0]) + 1

    def _start_age_clock(self, saved: str | None, this_boot: str) -> None:
        """Continue the age clock saved in ``meta`` (see the class docstring); in a
        transaction."""
        now = self._clock()
        if saved is None:
            age = self._wall_clock()
        else:
            mark = orjson.loads(saved)
            age = float(mark["age"])
            if mark["boot"] == this_boot and this_boot != "unknown":
                age += max(0.0, now - float(mark["clock"]))  # same boot: the clock went on
        newest = self._db.execute("SELECT MAX(enqueued_at) FROM chunks").fetchone()[0]
        if newest is not None:
            age = max(age, float(newest))
        self._age_base, self._age_at, self._boot = age, now, this_boot
        self._save_age_clock()

    def _age(self) -> float:
        """The age clock: what ``enqueued_at`` is stamped with and ages are measured by."""
        return self._age_base + (self._clock() - self._age_at)

    def _save_age_clock(self) -> None:
        """Write the age clock into ``meta`` (inside a transaction)."""
        mark = {"age": self._age(), "boot": self._boot, "clock": self._clock()}
        self._db.execute(
            "INSERT INTO meta(name, value) VALUES ('age_clock', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (orjson.dumps(mark).decode(),),
        )

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _bump(self, reason: str, n: int) -> None:
        if n:
            self._db.execute(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (f"drop:{reason}", n),
            )

    def _full_sync(self) -> None:
        """Checkpoint-free fsync of the WAL and database file (one fsync per file)."""
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(f"{self.path}{suffix}", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def sync(self) -> None:
        """Put every committed append on the disk (called every ``fsync_window_s``).

        With it goes the allowance of readings for the next interval: the count so far plus
        as many as the interval just ended brought (an append past it syncs first).
        """
        if self._sync_mode == "FULL":
            return
        appended = self._appended
        self._interval = appended - self._appended_at_sync
        self._appended_at_sync = appended
        allowed = appended + self._interval
        if allowed != self._allowed:
            with self._tx():
                self._set_counter(_ALLOWANCE, allowed)
        self._full_sync()
        self._allowed = allowed

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute("UPDATE counters SET value = ? WHERE name = ?", (value, name))

    def close(self) -> None:
        """Mark a clean shutdown; idempotent."""
        if self._db is None:
            return
        with self._tx():
            self._fold_journal()
            self._save_age_clock()
            self._db.execute("UPDATE counters SET value = 1 WHERE name = ?", (_CLEAN,))
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._db = None  # type: ignore[assignment]

    # ----------------------------------------------------------------- sequence numbers

    # Each append must make the high-water marks of the seqs it stores durable with its
    # records. Writing them into device_seq costs one UPDATE per device per append (~2 µs
    # each, 200 devices: ~0.8 µs per reading), so an append rewrites one journal row
    # instead: {device: next_seq} for every device changed since the last fold. Open,
    # close and a journal past _JOURNAL_MAX devices fold it into device_seq.

    def _fold_journal(self) -> None:
        """Move the journal's high-water marks into device_seq (inside a transaction)."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'seq_journal'").fetchone()
        if row is None or row[0] == "{}":
            return
        self._db.executemany(
            "UPDATE device_seq SET next_seq = MAX(next_seq, ?) WHERE device_id = ?",
            [(int(n), d) for d, n in orjson.loads(row[0]).items()],
        )
        self._write_journal({})

    def _write_journal(self, marks: dict[str, int]) -> None:
        self._db.execute(
            "INSERT INTO meta(name, value) VALUES ('seq_journal', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (orjson.dumps(marks).decode(),),
        )

    def next_seqs(self, counts: dict[str, int]) -> dict[str, int]:
        """Reserve ``counts[device]`` numbers per device; returns the first of each.

        The new high-water marks are written with the next :meth:`append`; a lease that
        runs out is extended with a synced write first.
        """
        first: dict[str, int] = {}
        extend: list[tuple[str, int, int]] = []
        for device_id, count in counts.items():
            nxt, lease = self._seqs.get(device_id, (0, 0))
            first[device_id] = nxt
            nxt += count
            if nxt > lease:
                lease = nxt + self._seq_lease
                extend.append((device_id, first[device_id], lease))
            self._seqs[device_id] = (nxt, lease)
            self._dirty.add(device_id)
        if extend:
            with self._tx():
                self._db.executemany(
                    "INSERT INTO device_seq(device_id, next_seq, lease_end) VALUES (?,?,?) "
                    "ON CONFLICT(device_id) DO UPDATE SET lease_end = excluded.lease_end",
                    extend,
                )
            self._full_sync()
        return first

    # ----------------------------------------------------------------- chunk rows

    def _fetch(self, last: int) -> _Chunk:
        kind, first, lengths, payload, at, size = self._db.execute(
            "SELECT kind, first, lengths, payload, enqueued_at, size FROM chunks WHERE last = ?",
            (last,),
        ).fetchone()
        return _Chunk(Kind(kind), int(first), _lengths(lengths), payload, float(at), int(size))

    def _replace(self, chunk: _Chunk, parts: list[_Chunk]) -> int:
        """Store what is left of ``chunk``; returns the bytes that frees."""
        self._db.execute("DELETE FROM chunks WHERE last = ?", (chunk.last,))
        self._db.executemany(
            _INSERT,
            [
                (p.last, int(p.kind), p.first, p.size, p.at, _lengths_blob(p.lengths), p.payload)
                for p in parts
            ],
        )
        return chunk.size - sum(p.size for p in parts)

    # ----------------------------------------------------------------- append / evict

    def append(self, records: Sequence[Record]) -> Admission:
        if not records:
            return Admission(0)
        dropped: dict[str, int] = {}
        chunks, incoming = _group(
            records, self.max_bytes, self._chunk_records, self._chunk_bytes, dropped
        )
        oldest_first = self._overflow == "drop_oldest"
        if oldest_first and incoming > self.max_bytes:
            # a batch larger than the whole buffer keeps only its newest records
            incoming -= _drop_incoming(chunks, incoming - self.max_bytes, True, dropped)
        now = self._age()
        held = self._bytes
        removed: dict[Kind, int] = {}
        number = self._next
        appended = self._appended + list(map(_kind_of, records)).count(Kind.READING)
        allowance: int | None = None  # a new one, on the disk before this append returns
        if self._allowed is not None and appended > self._allowed:
            # as many again as the last interval brought, or this one before this append:
            # a burst after a quiet interval syncs a logarithmic number of times, not once
            # per append, and a lone append after one is allowed nothing ahead
            ahead = max(self._interval, self._appended - self._appended_at_sync)
            allowance = appended + ahead
        with self._tx():
            if oldest_first and held + incoming > self.max_bytes:
                freed, removed = self._evict(held + incoming - self.max_bytes, dropped)
                held -= freed
            if held + incoming > self.max_bytes:
                # no (more) room: drop incoming records, oldest or newest first by policy
                excess = held + incoming - self.max_bytes
                incoming -= _drop_incoming(chunks, excess, oldest_first, dropped)
            rows = []
            for chunk in chunks:
                n = len(chunk.lengths)
                lengths = array("I", chunk.lengths)
                rows.append(
                    (
                        number + n - 1,
                        int(chunk.kind),
                        number,
                        accounted(lengths),
                        now,
                        _lengths_blob(lengths),
                        b",".join(chunk.payloads),
                    )
                )
                number += n
            if rows:
                self._db.executemany(_INSERT, rows)
            journal = self._journal
            if self._dirty:
                journal = journal | self._dirty
                if len(journal) > _JOURNAL_MAX:
                    self._fold_journal()
                    journal = self._dirty
                seqs = self._seqs
                self._write_journal({d: seqs[d][0] for d in journal})
            for reason, n in dropped.items():
                self._bump(reason, n)
            if appended != self._appended:
                self._set_counter(_APPENDED, appended)
            if allowance is not None:
                self._set_counter(_ALLOWANCE, allowance)
        if allowance is not None:
            self._full_sync()
            self._allowed = allowance
        self._appended = appended
        # committed: now the in-memory view follows
        self._journal = journal
        self._dirty = set()
        self._bytes = held + incoming
        for kind, n in removed.items():
            self._depth[kind] -= n
        for chunk in chunks:
            self._depth[chunk.kind] += len(chunk.lengths)
        stored = number - self._next
        self._next = number
        return Admission(stored, dropped)

    def _evict(self, need: int, dropped: dict[str, int]) -> tuple[int, dict[Kind, int]]:
        """Delete never-taken records, status first then oldest readings, for ``need`` bytes.

        Returns the bytes freed and the records removed per kind.
        """
        freed = 0
        removed = dict.fromkeys(Kind, 0)
        for kind in (Kind.STATUS, Kind.READING):
            if freed >= need:
                break
            after = self._attempted_upto[kind]
            whole: list[tuple[int]] = []
            cuts: list[tuple[_Chunk, int, int]] = []
            cursor = self._db.execute(
                "SELECT last, first, size FROM chunks WHERE kind = ? AND last > ? ORDER BY last",
                (int(kind), after),
            )
            for last, first, size in cursor:
                if first > after and size <= need - freed:
                    whole.append((last,))
                    freed += size
                    removed[kind] += last - first + 1
                else:
                    chunk = self._fetch(last)
                    start = after + 1 - first if after >= first else 0
                    k, gain = _evictable(chunk.lengths, start, need - freed)
                    cuts.append((chunk, start, start + k))
                    freed += gain
                    removed[kind] += k
                if freed >= need:
                    break
            cursor.close()
            self._db.executemany("DELETE FROM chunks WHERE last = ?", whole)
            for chunk, i, j in cuts:
                self._replace(chunk, chunk.without(i, j))
            _count(dropped, _reason(kind), removed[kind])
        return freed, removed

    def expire(self) -> dict[str, int]:
        horizon = self._age() - self._max_age_s
        dropped: dict[str, int] = {}
        freed = 0
        removed = dict.fromkeys(Kind, 0)
        with self._tx():
            self._save_age_clock()  # the agent expires every minute: ages outlive a reboot
            for kind in Kind:
                after = self._attempted_upto[kind]
                rows = self._db.execute(
                    "SELECT last, first, size FROM chunks "
                    "WHERE kind = ? AND last > ? AND enqueued_at < ?",
                    (int(kind), after, horizon),
                ).fetchall()
                whole = [(last,) for last, first, _ in rows if first > after]
                for last, first, size in rows:
                    if first > after:
                        freed += size
                        removed[kind] += last - first + 1
                    else:  # partly handed out: only its never-taken tail expires
                        chunk = self._fetch(last)
                        start = after + 1 - first
                        freed += self._replace(chunk, chunk.without(start, len(chunk.lengths)))
                        removed[kind] += len(chunk.lengths) - start
                self._db.executemany("DELETE FROM chunks WHERE last = ?", whole)
                _count(dropped, _reason(kind, DropReason.MAX_AGE), removed[kind])
            for reason, n in dropped.items():
                self._bump(reason, n)
        self._bytes -= freed
        for kind, n in removed.items():
            self._depth[kind] -= n
        if dropped:
            self._db.execute("PRAGMA incremental_vacuum")
        return dropped

    # ----------------------------------------------------------------- delivery

    def take(self, kind: Kind, limit: int, max_bytes: int | None = None) -> list[Pending]:
        after = self._taken_upto[kind]
        cursor = self._db.execute(
            "SELECT first, lengths, payload FROM chunks WHERE kind = ? AND last > ? ORDER BY last",
            (int(kind), after),
        )
        try:
            chunks = ((first, _lengths(lengths), payload) for first, lengths, payload in cursor)
            out = _take(chunks, after, limit, max_bytes)
        finally:
            cursor.close()
        if out:
            self._taken_upto[kind] = out[-1].last
            if out[-1].last > self._attempted_upto[kind]:
                self._mark_attempted(kind, out[-1].last)
        return out

    def _mark_attempted(self, kind: Kind, mark: int) -> None:
        """Commit the never-evict mark before the records go out: a crash keeps it.

        Not fsynced, even with ``synchronous=FULL`` (an fsync per batch sent would double
        the default mode's): the next synced commit takes it to the disk, and after a
        power cut the buffer treats every stored record as handed out (see _open).
        """
        full = self._sync_mode == "FULL"
        if full:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._tx():
                self._set_counter(_attempted(kind), mark)
        finally:
            if full:
                self._db.execute("PRAGMA synchronous=FULL")
        self._attempted_upto[kind] = mark

    def ack(self, kind: Kind, up_to: int) -> int:
        with self._tx():
            size, count = self._db.execute(
                "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(last - first + 1), 0) FROM chunks "
                "WHERE kind = ? AND last <= ?",
                (int(kind), up_to),
            ).fetchone()
            if count:
                self._db.execute(
                    "DELETE FROM chunks WHERE kind = ? AND last <= ?", (int(kind), up_to)
                )
            straddling = self._db.execute(
                "SELECT last, first FROM chunks WHERE kind = ? AND last > ? ORDER BY last LIMIT 1",
                (int(kind), up_to),
            ).fetchone()
            if straddling is not None and straddling[1] <= up_to:
                chunk = self._fetch(straddling[0])
                index = up_to + 1 - chunk.first
                size += self._replace(chunk, chunk.without(0, index))
                count += index
        self._bytes -= int(size)
        self._depth[kind] -= int(count)
        if not self._depth[Kind.READING] and not self._depth[Kind.STATUS]:
            self._db.execute("PRAGMA incremental_vacuum")  # drained: give the space back
        return int(count)

    def release(self, kind: Kind) -> None:
        self._taken_upto[kind] = 0

    # ----------------------------------------------------------------- health

    def dropped(self) -> dict[str, int]:
        return {
            name.removeprefix("drop:"): int(value)
            for name, value in self._db.execute(
                "SELECT name, value FROM counters WHERE name LIKE 'drop:%' AND value > 0"
            )
        }

    def stats(self) -> BufferStats:
        """O(1) in the number of buffered records (the metrics scrape calls it often)."""
        oldest = self._db.execute(
            "SELECT enqueued_at FROM chunks WHERE kind = 0 ORDER BY last LIMIT 1"
        ).fetchone()
        age = None if oldest is None else max(0.0, self._age() - float(oldest[0]))
        return BufferStats(self._depth[Kind.READING], self._bytes, age, self._depth[Kind.STATUS])
