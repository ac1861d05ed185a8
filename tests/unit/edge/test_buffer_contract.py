"""The buffer contract, run on every backend (Telegraf's buffer_suite_test.go is the model).

Each test states one clause of the contract in ``edge/buffer.py`` and checks it with
numbers worked out by hand: a record costs ``len(payload) + RECORD_OVERHEAD`` bytes
(``REC``), a chunk ``CHUNK_OVERHEAD`` more; one append of records of one kind is one chunk.
Payloads contain commas, so a backend that split chunks on the separator would fail here.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.buffer import (
    CHUNK_OVERHEAD,
    RECORD_OVERHEAD,
    Buffer,
    BufferFormatError,
    DropReason,
    Kind,
    MemoryBuffer,
    Pending,
    Record,
    SqliteBuffer,
)

PAYLOAD = b"x," * 23 + b"xxxxxx"  # 52 bytes; the last 6 become the seq
REC = len(PAYLOAD) + RECORD_OVERHEAD  # 60 bytes per record


def room(records: int, chunks: int = 1) -> int:
    """Bytes of ``records`` records stored in ``chunks`` chunks."""
    return records * REC + chunks * CHUNK_OVERHEAD


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


MakeBuffer = Callable[..., Buffer]


@pytest.fixture(params=["memory", "sqlite"])
def make_buffer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeBuffer]:
    made: list[Buffer] = []

    def make(
        max_records: int = 10,
        overflow: str = "drop_oldest",
        max_age_s: float = 3600.0,
        clock: Callable[[], float] | None = None,
        chunks: int = 1,
        chunk_records: int = 2000,
        chunk_bytes: int = 1 << 20,
    ) -> Buffer:
        kwargs = {
            "max_bytes": room(max_records, chunks),
            "max_age_s": max_age_s,
            "overflow": overflow,
            "clock": clock or FakeClock(),
            "chunk_records": chunk_records,
            "chunk_bytes": chunk_bytes,
        }
        buffer: Buffer
        if request.param == "memory":
            buffer = MemoryBuffer(**kwargs)  # type: ignore[arg-type]
        else:
            buffer = SqliteBuffer(tmp_path / f"b{len(made)}.db", **kwargs)  # type: ignore[arg-type]
        made.append(buffer)
        return buffer

    yield make
    for buffer in made:
        buffer.close()


@pytest.fixture
def crash() -> Iterator[Callable[[SqliteBuffer], None]]:
    """Leave a buffer as a killed process does: never closed, so no clean-shutdown mark.
    Its connection is released only at teardown (an unclosed sqlite3 connection is a
    ResourceWarning since Python 3.13, raised in whichever later test collects it)."""
    dead: list[SqliteBuffer] = []
    yield dead.append
    for buffer in dead:
        buffer._db.close()


def rec(seq: int, device: str = "d1", kind: Kind = Kind.READING) -> Record:
    return Record(device, seq, PAYLOAD[:-6] + f"{seq:06d}".encode(), kind)


def seqs(pending: list[Pending]) -> list[int]:
    """The seqs of every record taken, in order (each payload ends with its seq)."""
    return [int(payload[-6:]) for p in pending for payload in p.payloads()]


def test_take_returns_records_in_append_order(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer()
    buffer.append([rec(i) for i in range(5)])
    assert seqs(buffer.take(Kind.READING, 3)) == [0, 1, 2]
    assert seqs(buffer.take(Kind.READING, 10)) == [3, 4]  # never hands a record out twice
    assert buffer.take(Kind.READING, 10) == []


def test_ack_removes_and_release_hands_out_again(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer()
    buffer.append([rec(i) for i in range(5)])
    first = buffer.take(Kind.READING, 2)
    assert buffer.ack(Kind.READING, first[-1].last) == 2  # part of the chunk
    buffer.take(Kind.READING, 2)
    buffer.release(Kind.READING)  # the send failed: hand the same records out again
    assert seqs(buffer.take(Kind.READING, 10)) == [2, 3, 4]
    assert buffer.stats().depth == 3
    assert buffer.stats().bytes == room(3)


def test_take_respects_max_bytes_but_returns_at_least_one(make_buffer: MakeBuffer) -> None:
    """``max_bytes`` bounds the joined payloads: the records and the commas between them."""
    buffer = make_buffer()
    buffer.append([rec(i) for i in range(5)])
    assert seqs(buffer.take(Kind.READING, 10, max_bytes=2 * len(PAYLOAD) + 1)) == [0, 1]
    assert seqs(buffer.take(Kind.READING, 10, max_bytes=2 * len(PAYLOAD))) == [2]
    assert seqs(buffer.take(Kind.READING, 10, max_bytes=1)) == [3]


def test_overflow_drop_oldest_counts_every_dropped_reading(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(max_records=10)
    admission = buffer.append([rec(i) for i in range(13)])
    assert admission.stored == 10  # a batch larger than the buffer keeps its newest records
    assert admission.dropped == {DropReason.BUFFER_FULL: 3}
    assert seqs(buffer.take(Kind.READING, 100)) == list(range(3, 13))
    assert buffer.dropped() == {DropReason.BUFFER_FULL: 3}
    assert buffer.stats().bytes == room(10)


def test_overflow_evicts_status_before_readings(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(max_records=4, chunks=4)  # kinds alternate: four chunks of one
    buffer.append([rec(0), rec(0, "gw", Kind.STATUS), rec(1), rec(1, "gw", Kind.STATUS)])
    buffer.append([rec(2), rec(3)])  # needs room(2): both status chunks go
    assert buffer.stats().status_depth == 0
    assert seqs(buffer.take(Kind.READING, 10)) == [0, 1, 2, 3]
    assert buffer.dropped() == {DropReason.STATUS_EVICTED: 2}  # no reading was dropped


def test_overflow_drop_newest_refuses_incoming(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(max_records=3, overflow="drop_newest")
    admission = buffer.append([rec(i) for i in range(5)])
    assert admission.stored == 3
    assert admission.dropped == {DropReason.BUFFER_FULL: 2}
    assert seqs(buffer.take(Kind.READING, 10)) == [0, 1, 2]


def test_records_being_sent_are_never_evicted(make_buffer: MakeBuffer) -> None:
    """A record is never both dropped and sent: in-flight records are not eviction victims."""
    buffer = make_buffer(max_records=4, chunks=2)
    buffer.append([rec(i) for i in range(4)])
    taken = buffer.take(Kind.READING, 2)  # half of the chunk is in flight
    admission = buffer.append([rec(4), rec(5), rec(6)])
    # room for 3 more: evict the 2 untaken (2, 3: the chunk's tail); then the oldest
    # incoming (4) goes too
    assert admission.dropped == {DropReason.BUFFER_FULL: 3}
    assert admission.stored == 2
    assert buffer.ack(Kind.READING, taken[-1].last) == 2
    assert seqs(buffer.take(Kind.READING, 10)) == [5, 6]
    assert buffer.dropped() == {DropReason.BUFFER_FULL: 3}
    assert buffer.stats().bytes == room(2)


def test_expire_drops_by_age_and_counts(make_buffer: MakeBuffer) -> None:
    clock = FakeClock()
    buffer = make_buffer(max_age_s=60.0, clock=clock)
    buffer.append([rec(0), rec(1)])
    clock.now += 30
    buffer.append([rec(2)])
    clock.now += 40  # first two are 70 s old, the third 40 s
    assert buffer.expire() == {DropReason.MAX_AGE: 2}
    assert seqs(buffer.take(Kind.READING, 10)) == [2]
    assert buffer.dropped() == {DropReason.MAX_AGE: 2}
    assert buffer.stats().oldest_age_s == pytest.approx(40.0)


def test_oldest_age_is_the_oldest_readings(make_buffer: MakeBuffer) -> None:
    """``buffer_oldest_age_s`` (status, metric, console) is the age of the oldest buffered
    *reading*: a gateway-status record waiting to be sent is not a backlog of readings."""
    clock = FakeClock()
    buffer = make_buffer(clock=clock)
    buffer.append([rec(0, kind=Kind.STATUS)])
    clock.now += 30
    assert buffer.stats().oldest_age_s is None  # no reading buffered
    buffer.append([rec(1)])
    clock.now += 10
    assert buffer.stats().oldest_age_s == pytest.approx(10.0)


def test_record_larger_than_the_buffer_is_counted(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(max_records=1)
    admission = buffer.append([Record("d1", 0, b"y" * (REC * 2))])
    assert admission == type(admission)(0, {DropReason.TOO_LARGE: 1})


def test_status_records_are_never_counted_under_a_readings_reason(
    make_buffer: MakeBuffer,
) -> None:
    """A gateway-status record is not a reading: too large or expired, it counts as
    ``status_evicted`` like one evicted for room."""
    clock = FakeClock()
    buffer = make_buffer(max_records=1, max_age_s=60.0, clock=clock)
    too_large = Record("gw", 0, b"s" * (REC * 2), Kind.STATUS)
    assert buffer.append([too_large]).dropped == {DropReason.STATUS_EVICTED: 1}
    buffer.append([rec(0, "gw", Kind.STATUS)])
    clock.now += 61
    assert buffer.expire() == {DropReason.STATUS_EVICTED: 1}
    assert buffer.dropped() == {DropReason.STATUS_EVICTED: 2}
    assert buffer.stats().status_depth == 0


def test_next_seqs_are_consecutive_per_device(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer()
    assert buffer.next_seqs({"a": 3, "b": 1}) == {"a": 0, "b": 0}
    assert buffer.next_seqs({"a": 2}) == {"a": 3}


# ----------------------------------------------------------------------- SQLite durability


def test_sqlite_keeps_records_counters_and_seqs_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = SqliteBuffer(path, max_bytes=room(3), max_age_s=60)
    first = buffer.next_seqs({"d1": 5})["d1"]
    buffer.append([rec(first + i) for i in range(5)])  # 2 dropped as buffer_full
    buffer.close()
    again = SqliteBuffer(path, max_bytes=room(3), max_age_s=60)
    assert again.recovered == "clean"
    assert seqs(again.take(Kind.READING, 10)) == [2, 3, 4]
    assert again.dropped() == {DropReason.BUFFER_FULL: 2}
    assert again.next_seqs({"d1": 1}) == {"d1": 5}
    again.close()


def test_sqlite_process_crash_loses_nothing(
    tmp_path: Path, crash: Callable[[SqliteBuffer], None]
) -> None:
    path = tmp_path / "b.db"
    buffer = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, fsync_window_s=5)
    buffer.next_seqs({"d1": 7})
    buffer.append([rec(i) for i in range(7)])
    crash(buffer)  # no close(): the process dies; the kernel still has every committed page
    again = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, fsync_window_s=5)
    assert again.recovered == "crash"
    assert seqs(again.take(Kind.READING, 10)) == list(range(7))
    assert again.dropped() == {}
    again.close()


def test_sqlite_power_cut_counts_the_unsynced_window_and_never_reuses_seqs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    disk = tmp_path / "disk"
    buffer = SqliteBuffer(path, max_bytes=room(1000), max_age_s=60, fsync_window_s=5, seq_lease=10)
    start = buffer.next_seqs({"d1": 4})["d1"]
    buffer.append([rec(start + i) for i in range(4)])
    buffer.sync()
    disk.mkdir()
    for name in ("b.db", "b.db-wal"):  # what the disk holds at the last sync
        shutil.copy(tmp_path / name, disk / name)
    buffer.next_seqs({"d1": 3})
    buffer.append([rec(4 + i) for i in range(3)])  # accepted, never synced: lost in the cut
    buffer._db.close()  # the power goes: no clean-shutdown mark, then the disk is as synced
    for name in ("b.db", "b.db-wal"):
        shutil.copy(disk / name, tmp_path / name)
    (tmp_path / "b.db-shm").unlink(missing_ok=True)
    after = SqliteBuffer(
        path, max_bytes=room(1000), max_age_s=60, fsync_window_s=5, boot_id_fn=lambda: "next-boot"
    )
    assert after.recovered == "power_cut"
    assert seqs(after.take(Kind.READING, 10)) == [0, 1, 2, 3]
    # the allowance synced with the last sync: 4 so far + the 4 of that interval = 8;
    # 4 survived -> 4 counted: the 3 lost and 1 allowed but never appended. The seq
    # numbers skipped (lease end 14) are not readings and are not counted.
    assert after.dropped() == {DropReason.POWER_CUT: 4}
    assert after.next_seqs({"d1": 1}) == {"d1": 14}  # past every number ever handed out
    after.close()


def test_sqlite_records_handed_out_before_a_crash_are_still_never_evicted(
    tmp_path: Path, crash: Callable[[SqliteBuffer], None]
) -> None:
    """A send in flight when the process died may have landed: after the restart those
    records are resent, never dropped for room or age."""
    path = tmp_path / "b.db"
    clock = FakeClock()
    settings = {"max_bytes": room(4, 4), "max_age_s": 60, "chunk_records": 1, "clock": clock}
    buffer = SqliteBuffer(path, **settings)  # type: ignore[arg-type]
    buffer.append([rec(i) for i in range(4)])  # full: four chunks of one
    buffer.take(Kind.READING, 2)  # 0 and 1 handed to the producer
    crash(buffer)
    again = SqliteBuffer(path, **settings)  # type: ignore[arg-type]
    assert again.recovered == "crash"
    admission = again.append([rec(4), rec(5)])
    assert admission.dropped == {DropReason.BUFFER_FULL: 2}  # 2 and 3, never handed out
    clock.now += 61
    assert again.expire() == {DropReason.MAX_AGE: 2}  # 4 and 5; 0 and 1 wait to be resent
    assert seqs(again.take(Kind.READING, 10)) == [0, 1]
    again.close()


def test_sqlite_after_a_power_cut_every_record_left_may_have_been_sent(tmp_path: Path) -> None:
    """The never-evict mark is committed, not fsynced, before take returns: after a power
    cut it may be behind, so every record still buffered is treated as handed out."""
    path = tmp_path / "b.db"
    settings = {"max_bytes": room(4, 4), "max_age_s": 60, "chunk_records": 1}
    buffer = SqliteBuffer(path, fsync_window_s=5, **settings)  # type: ignore[arg-type]
    buffer.append([rec(i) for i in range(4)])
    buffer.sync()
    image = _disk_image(tmp_path)
    buffer.take(Kind.READING, 2)  # its mark never reached the disk
    _power_cut(buffer, image)
    after = SqliteBuffer(  # type: ignore[arg-type]
        path, fsync_window_s=5, boot_id_fn=lambda: "boot-2", **settings
    )
    assert after.recovered == "power_cut"
    admission = after.append([rec(4)])
    assert admission.dropped == {DropReason.BUFFER_FULL: 1}  # the new one, not 0..3
    assert seqs(after.take(Kind.READING, 10)) == [0, 1, 2, 3]
    after.close()


def _disk_image(directory: Path) -> Path:
    """What the disk holds now (call it right after a sync)."""
    image = directory / "disk"
    shutil.rmtree(image, ignore_errors=True)
    image.mkdir()
    for name in ("b.db", "b.db-wal"):
        if (directory / name).exists():
            shutil.copy(directory / name, image / name)
    return image


def _power_cut(buffer: SqliteBuffer, image: Path) -> None:
    """The power goes: no clean-shutdown mark, and the disk is as it was at ``image``."""
    buffer._db.close()
    directory = image.parent
    for name in ("b.db", "b.db-wal", "b.db-shm"):
        (directory / name).unlink(missing_ok=True)
        if (image / name).exists():
            shutil.copy(image / name, directory / name)


def test_sqlite_power_cut_counts_readings_numbered_by_the_device(tmp_path: Path) -> None:
    """LoRaWAN fCnt and framed-protocol readings carry their own seq (no next_seqs): their
    loss is counted all the same."""
    path = tmp_path / "b.db"
    buffer = SqliteBuffer(path, max_bytes=room(1000), max_age_s=60, fsync_window_s=5)
    buffer.append([rec(i) for i in range(10)])
    buffer.sync()  # on the disk, and 10 more allowed (the readings of the interval)
    image = _disk_image(tmp_path)
    buffer.append([rec(10 + i) for i in range(5)])  # accepted, never synced
    _power_cut(buffer, image)
    after = SqliteBuffer(
        path, max_bytes=room(1000), max_age_s=60, fsync_window_s=5, boot_id_fn=lambda: "boot-2"
    )
    assert after.recovered == "power_cut"
    assert after.stats().depth == 10
    # the 5 lost and the 5 allowed but never appended: an upper bound, by at most the
    # readings of one sync interval
    assert after.dropped() == {DropReason.POWER_CUT: 10}
    after.close()


def test_sqlite_power_cut_counts_nothing_that_was_on_the_disk(tmp_path: Path) -> None:
    """After a quiet interval nothing is allowed ahead: the next append is synced before it
    returns, and a power cut right after it has lost nothing and counts nothing."""
    path = tmp_path / "b.db"
    buffer = SqliteBuffer(path, max_bytes=room(1000), max_age_s=60, fsync_window_s=5)
    buffer.append([rec(i) for i in range(10)])
    buffer.sync()
    buffer.sync()  # an interval without readings
    buffer.append([rec(10 + i) for i in range(5)])  # past the allowance: synced now
    _power_cut(buffer, _disk_image(tmp_path))
    after = SqliteBuffer(
        path, max_bytes=room(1000), max_age_s=60, fsync_window_s=5, boot_id_fn=lambda: "boot-2"
    )
    assert after.recovered == "power_cut"
    assert after.stats().depth == 15
    assert after.dropped() == {}
    after.close()


def test_sqlite_power_cut_with_every_commit_synced_counts_nothing(tmp_path: Path) -> None:
    """``fsync_window_s`` 0: every append is on the disk when it returns. A power cut loses
    nothing, counts nothing, and the gateway seqs go on without a gap."""
    path = tmp_path / "b.db"
    buffer = SqliteBuffer(path, max_bytes=room(1000), max_age_s=60, fsync_window_s=0)
    for device in ("a", "b", "c"):
        first = buffer.next_seqs({device: 10})[device]
        buffer.append([rec(first + i, device) for i in range(10)])
    _power_cut(buffer, _disk_image(tmp_path))  # the disk holds every commit
    after = SqliteBuffer(
        path, max_bytes=room(1000), max_age_s=60, fsync_window_s=0, boot_id_fn=lambda: "boot-2"
    )
    assert after.recovered == "power_cut"
    assert after.stats().depth == 30
    assert after.dropped() == {}
    assert after.next_seqs({"a": 1, "b": 1, "c": 1}) == {"a": 10, "b": 10, "c": 10}
    after.close()


def test_released_records_are_still_never_evicted(make_buffer: MakeBuffer) -> None:
    """A send that timed out may still land: released records are resent, never dropped."""
    buffer = make_buffer(max_records=4, chunks=2)
    buffer.append([rec(i) for i in range(4)])
    buffer.take(Kind.READING, 2)
    buffer.release(Kind.READING)
    admission = buffer.append([rec(4), rec(5)])
    assert admission.dropped == {DropReason.BUFFER_FULL: 2}  # 2 and 3 went, not 0 and 1
    assert seqs(buffer.take(Kind.READING, 10)) == [0, 1, 4, 5]


# ----------------------------------------------------------------------- chunks


def test_one_append_is_one_chunk_and_a_take_hands_it_out_whole(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer()
    records = [rec(i) for i in range(4)]
    buffer.append(records)
    (chunk,) = buffer.take(Kind.READING, 10)
    assert (chunk.first, chunk.last, chunk.count) == (1, 4, 4)
    assert chunk.payload == b",".join(r.payload for r in records)  # a batch's inside, as is
    assert chunk.payloads() == [r.payload for r in records]  # split by length, not by ","
    assert buffer.stats().bytes == room(4)


def test_take_splits_a_chunk_by_limit(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer()
    records = [rec(i) for i in range(5)]
    buffer.append(records)
    (head,) = buffer.take(Kind.READING, 2)
    assert (head.first, head.last) == (1, 2)
    assert head.payload == b",".join(r.payload for r in records[:2])
    (tail,) = buffer.take(Kind.READING, 10)
    assert (tail.first, tail.last, tail.count) == (3, 5, 3)
    assert tail.payloads() == [r.payload for r in records[2:]]


def test_take_splits_a_chunk_by_max_bytes(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer()
    buffer.append([rec(i) for i in range(5)])
    three = 3 * len(PAYLOAD) + 2  # three records joined
    taken = buffer.take(Kind.READING, 10, max_bytes=three)
    assert seqs(taken) == [0, 1, 2]
    assert len(taken[0].payload) == three


def test_take_spans_chunks_and_fills_up_to_the_limit(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(chunks=3)
    buffer.append([rec(i) for i in range(3)])
    buffer.append([rec(i) for i in range(3, 6)])
    buffer.append([rec(i) for i in range(6, 9)])
    first = buffer.take(Kind.READING, 5)
    assert [(p.first, p.last) for p in first] == [(1, 3), (4, 5)]  # a chunk and a half
    assert seqs(first) == [0, 1, 2, 3, 4]
    second = buffer.take(Kind.READING, 10, max_bytes=3 * len(PAYLOAD) + 2)
    # three records joined, counting the separator between slices: 5, then 6 and 7
    assert [(p.first, p.last) for p in second] == [(6, 6), (7, 8)]
    assert seqs(buffer.take(Kind.READING, 10)) == [8]


def test_chunks_are_capped_by_records_and_bytes(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(chunks=3, chunk_records=2)
    buffer.append([rec(i) for i in range(5)])
    assert [p.count for p in buffer.take(Kind.READING, 10)] == [2, 2, 1]
    assert buffer.stats().bytes == room(5, chunks=3)
    by_bytes = make_buffer(chunks=3, chunk_bytes=2 * len(PAYLOAD) + 1)
    by_bytes.append([rec(i) for i in range(5)])
    assert [p.count for p in by_bytes.take(Kind.READING, 10)] == [2, 2, 1]


def test_kinds_are_chunked_apart_and_taken_apart(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(chunks=3)
    buffer.append([rec(0), rec(1), rec(0, "gw", Kind.STATUS), rec(2)])
    assert seqs(buffer.take(Kind.STATUS, 10)) == [0]
    assert seqs(buffer.take(Kind.READING, 10)) == [0, 1, 2]
    assert buffer.stats().depth == 3
    assert buffer.stats().status_depth == 1


def test_release_after_a_partial_take_hands_out_from_the_oldest(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer()
    buffer.append([rec(i) for i in range(5)])
    buffer.take(Kind.READING, 2)
    buffer.take(Kind.READING, 1)
    buffer.release(Kind.READING)
    again = buffer.take(Kind.READING, 10)
    assert [(p.first, p.last) for p in again] == [(1, 5)]  # the whole chunk, once
    assert buffer.take(Kind.READING, 10) == []


def test_ack_of_part_of_a_chunk_removes_exactly_that_part(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer()
    buffer.append([rec(i) for i in range(5)])
    taken = buffer.take(Kind.READING, 10)
    assert buffer.ack(Kind.READING, 2) == 2  # Kafka acknowledged a batch of the first two
    assert buffer.stats().depth == 3
    assert buffer.stats().bytes == room(3)
    assert buffer.ack(Kind.READING, 2) == 0  # acking again removes nothing
    assert buffer.ack(Kind.READING, taken[-1].last) == 3
    assert buffer.stats() == type(buffer.stats())(0, 0, None, 0)


def test_eviction_of_part_of_a_chunk_counts_exactly(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(max_records=6, chunks=2)
    buffer.append([rec(i) for i in range(6)])  # room(6)
    admission = buffer.append([rec(6)])  # room(1): one REC short, the oldest reading goes
    assert admission == type(admission)(1, {DropReason.BUFFER_FULL: 1})
    assert buffer.stats().depth == 6
    assert buffer.stats().bytes == room(5) + room(1)
    assert seqs(buffer.take(Kind.READING, 10)) == [1, 2, 3, 4, 5, 6]
    assert buffer.dropped() == {DropReason.BUFFER_FULL: 1}


def test_eviction_inside_a_chunk_in_flight_pays_for_the_split(make_buffer: MakeBuffer) -> None:
    """Evicting the middle of a chunk (its head is in flight) leaves two chunks: the
    eviction frees one more chunk overhead's worth of readings, and counts each."""
    buffer = make_buffer(max_records=6, chunks=2)
    buffer.append([rec(i) for i in range(6)])
    taken = buffer.take(Kind.READING, 2)
    admission = buffer.append([rec(6)])  # needs REC: 2, 3, 4 go (3 REC - 1 chunk >= REC)
    assert admission == type(admission)(1, {DropReason.BUFFER_FULL: 3})
    assert buffer.stats().depth == 4
    assert buffer.stats().bytes == room(2) + room(1) + room(1)
    assert buffer.ack(Kind.READING, taken[-1].last) == 2
    assert seqs(buffer.take(Kind.READING, 10)) == [5, 6]
    assert buffer.dropped() == {DropReason.BUFFER_FULL: 3}


def test_expire_drops_whole_chunks_and_the_untaken_tail_of_one_in_flight(
    make_buffer: MakeBuffer,
) -> None:
    clock = FakeClock()
    buffer = make_buffer(max_age_s=60.0, clock=clock, chunks=3)
    buffer.append([rec(i) for i in range(4)])
    buffer.append([rec(4), rec(5)])
    buffer.take(Kind.READING, 2)  # 0 and 1 are in flight
    clock.now += 30
    buffer.append([rec(6)])
    clock.now += 40  # the first two chunks are 70 s old, the third 40 s
    assert buffer.expire() == {DropReason.MAX_AGE: 4}  # 2, 3 and the whole 4, 5
    assert buffer.stats().depth == 3
    assert buffer.stats().bytes == room(2) + room(1, chunks=1)
    buffer.release(Kind.READING)
    assert seqs(buffer.take(Kind.READING, 10)) == [0, 1, 6]
    assert buffer.expire() == {}
    assert buffer.dropped() == {DropReason.MAX_AGE: 4}


def test_drop_newest_refuses_the_tail_of_an_incoming_chunk(make_buffer: MakeBuffer) -> None:
    buffer = make_buffer(max_records=4, chunks=2, overflow="drop_newest")
    buffer.append([rec(0), rec(1)])
    admission = buffer.append([rec(i) for i in range(2, 6)])
    assert admission == type(admission)(2, {DropReason.BUFFER_FULL: 2})
    assert seqs(buffer.take(Kind.READING, 10)) == [0, 1, 2, 3]
    assert buffer.stats().bytes == room(4, chunks=2)


# ----------------------------------------------------------------------- SQLite chunks


def test_sqlite_partial_ack_then_crash_loses_nothing_and_resends_nothing_acked(
    tmp_path: Path,
    crash: Callable[[SqliteBuffer], None],
) -> None:
    path = tmp_path / "b.db"
    buffer = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, fsync_window_s=5)
    buffer.append([rec(i) for i in range(6)])
    buffer.take(Kind.READING, 4)
    assert buffer.ack(Kind.READING, 3) == 3  # 0..2 acked; 3 in flight, not acked
    crash(buffer)  # no close(): the process dies
    again = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, fsync_window_s=5)
    assert again.recovered == "crash"
    assert again.stats().depth == 3
    assert again.stats().bytes == room(3)
    assert seqs(again.take(Kind.READING, 10)) == [3, 4, 5]
    again.close()


def test_sqlite_crash_keeps_gateway_seqs_exact(
    tmp_path: Path, crash: Callable[[SqliteBuffer], None]
) -> None:
    """The seq high-water marks are written with every append: after a crash the agent
    continues exactly where the stored readings end, without a gap."""
    path = tmp_path / "b.db"
    buffer = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, fsync_window_s=5)
    for _ in range(3):
        first = buffer.next_seqs({"a": 2, "b": 1})
        buffer.append([rec(first["a"]), rec(first["a"] + 1), rec(first["b"], "b")])
    crash(buffer)  # no close(): the process dies
    again = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, fsync_window_s=5)
    assert again.next_seqs({"a": 1, "b": 1}) == {"a": 6, "b": 3}
    again.append([rec(6), rec(3, "b")])
    again.close()
    reopened = SqliteBuffer(path, max_bytes=room(100), max_age_s=60)
    assert reopened.next_seqs({"a": 1, "b": 1}) == {"a": 7, "b": 4}
    reopened.close()


_OLD_SCHEMA = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX records_kind_id ON records(kind, id);
CREATE TABLE device_seq (
    device_id TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    lease_end INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _old_buffer(path: Path, rows: list[tuple[Kind, Record, float]], clean: bool) -> None:
    """A file as the one-row-per-record buffer left it."""
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    db.executemany(
        "INSERT INTO records(kind, device_id, seq, size, enqueued_at, payload) "
        "VALUES (?,?,?,?,?,?)",
        [(int(k), r.device_id, r.seq, len(r.payload) + 48, at, r.payload) for k, r, at in rows],
    )
    db.execute("INSERT INTO device_seq VALUES ('d1', 5, 1005)")
    db.execute("INSERT INTO meta VALUES ('boot_id', 'this-boot')")
    db.execute("INSERT INTO counters VALUES ('drop:buffer_full', 7)")
    db.execute("INSERT INTO counters VALUES ('clean_shutdown', ?)", (int(clean),))
    db.commit()
    db.close()


@pytest.mark.parametrize("clean", [True, False])
def test_sqlite_moves_a_one_row_per_record_file_into_chunks(tmp_path: Path, clean: bool) -> None:
    path = tmp_path / "old.db"
    t0 = 1_700_000_000.0
    status = rec(0, "gw", Kind.STATUS)
    _old_buffer(
        path,
        [(Kind.READING, rec(0), t0), (Kind.READING, rec(1), t0)]
        + [(Kind.STATUS, status, t0)]
        + [(Kind.READING, rec(i), t0 + 30) for i in range(2, 5)],
        clean,
    )
    clock = FakeClock()
    clock.now = t0 + 40  # nothing is older than max_age yet
    # the old layout stamped wall-clock times: the age clock starts at the wall clock's
    same = {"clock": clock, "wall_clock": clock, "boot_id_fn": lambda: "this-boot"}
    buffer = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, **same)  # type: ignore[arg-type]
    assert buffer.migrated == 6
    assert buffer.recovered == ("clean" if clean else "crash")
    assert buffer.stats().depth == 5
    assert buffer.stats().status_depth == 1
    assert buffer.stats().bytes == room(2) + room(1) + room(3)
    assert buffer.stats().oldest_age_s == pytest.approx(40.0)
    assert buffer.dropped() == {DropReason.BUFFER_FULL: 7}  # counters carried over
    buffer.close()
    # records handed out are never expired, after a restart either: take from a copy
    shutil.copy(path, tmp_path / "copy.db")
    copy = SqliteBuffer(tmp_path / "copy.db", max_bytes=room(100), max_age_s=60, **same)  # type: ignore[arg-type]
    taken = copy.take(Kind.READING, 10)
    assert [p.count for p in taken] == [2, 3]  # one chunk per old append
    assert seqs(taken) == [0, 1, 2, 3, 4]
    assert [p.payloads() for p in copy.take(Kind.STATUS, 10)] == [[status.payload]]
    copy.close()
    clock.now = t0 + 70  # reopened in the same boot: the 30 s it was closed count
    again = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, **same)  # type: ignore[arg-type]
    assert again.migrated == 0
    # enqueued_at kept: 0, 1 and the status (not a reading: counted apart) expire
    assert again.expire() == {DropReason.MAX_AGE: 2, DropReason.STATUS_EVICTED: 1}
    assert seqs(again.take(Kind.READING, 10)) == [2, 3, 4]
    assert again.next_seqs({"d1": 1}) == {"d1": 5}
    again.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert "records" not in {name for (name,) in tables}


def test_sqlite_refuses_a_file_from_a_newer_layout(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SqliteBuffer(path, max_bytes=room(10), max_age_s=60).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(BufferFormatError, match=str(path)):
        SqliteBuffer(path, max_bytes=room(10), max_age_s=60)


def test_sqlite_migration_in_several_transactions_keeps_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge.buffer._MIGRATE_ROWS", 2)
    path = tmp_path / "old.db"
    _old_buffer(path, [(Kind.READING, rec(i), 1_700_000_000.0) for i in range(5)], clean=True)
    buffer = SqliteBuffer(path, max_bytes=room(100), max_age_s=3600, clock=FakeClock())
    assert buffer.migrated == 5
    assert seqs(buffer.take(Kind.READING, 10)) == [0, 1, 2, 3, 4]
    assert buffer.stats().depth == 5
    buffer.close()


def test_sqlite_seq_journal_folds_when_many_devices_change(
    tmp_path: Path, crash: Callable[[SqliteBuffer], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge.buffer._JOURNAL_MAX", 2)
    path = tmp_path / "b.db"
    buffer = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, fsync_window_s=5)
    for device in ("a", "b", "c", "d"):
        first = buffer.next_seqs({device: 2})[device]
        buffer.append([rec(first, device), rec(first + 1, device)])
    crash(buffer)  # no close(): the process dies
    again = SqliteBuffer(path, max_bytes=room(100), max_age_s=60, fsync_window_s=5)
    assert again.next_seqs(dict.fromkeys("abcd", 1)) == dict.fromkeys("abcd", 2)
    again.close()


DAY = 86400.0


def test_sqlite_ages_ignore_wall_clock_steps(tmp_path: Path) -> None:
    """A Pi boots with fake-hwclock's time and NTP steps it days forward once online: the
    backlog buffered in between is seconds old, not days, and must not expire; a step back
    must not make an age negative. Ages follow the monotonic clock, and a reboot (which
    resets it) neither loses the age gathered nor counts the time the gateway was off."""
    path = tmp_path / "b.db"
    wall = FakeClock()  # the time of the last clean shutdown
    mono = FakeClock()
    mono.now = 12.0  # seconds since boot
    boot = ["boot-1"]
    settings = {"max_bytes": room(100), "max_age_s": 7 * DAY, "clock": mono, "wall_clock": wall}
    buffer = SqliteBuffer(path, **settings, boot_id_fn=lambda: boot[0])  # type: ignore[arg-type]
    buffer.append([rec(0), rec(1), rec(2)])
    mono.now += 30
    wall.now += 8 * DAY + 30  # NTP: the gateway was off for 8 days
    assert buffer.expire() == {}
    assert buffer.stats().oldest_age_s == pytest.approx(30.0)
    mono.now += 10
    wall.now -= 9 * DAY  # and a step back
    assert buffer.stats().oldest_age_s == pytest.approx(40.0)
    assert buffer.expire() == {}
    buffer.close()

    boot[0], mono.now, wall.now = "boot-2", 5.0, wall.now + 30 * DAY  # off for a month
    again = SqliteBuffer(path, **settings, boot_id_fn=lambda: boot[0])  # type: ignore[arg-type]
    assert again.stats().oldest_age_s == pytest.approx(40.0)  # kept; the month not counted
    assert again.expire() == {}
    mono.now += 7 * DAY - 40 + 1  # a week of running in all
    assert again.expire() == {DropReason.MAX_AGE: 3}
    again.close()


def test_sqlite_age_after_a_crash_and_reboot_is_never_negative(
    tmp_path: Path, crash: Callable[[SqliteBuffer], None]
) -> None:
    """The age clock is saved at open, expire and close; records stamped after the last
    save (then a power cut) must not be younger than zero after the reboot."""
    path = tmp_path / "b.db"
    mono, wall = FakeClock(), FakeClock()
    settings = {"max_bytes": room(100), "max_age_s": 60, "clock": mono, "wall_clock": wall}
    buffer = SqliteBuffer(path, **settings, boot_id_fn=lambda: "boot-1")  # type: ignore[arg-type]
    buffer.append([rec(0)])
    mono.now += 50
    buffer.append([rec(1)])
    crash(buffer)
    mono.now, wall.now = 3.0, wall.now - 5 * DAY  # a new boot; fake-hwclock is far behind
    again = SqliteBuffer(path, **settings, boot_id_fn=lambda: "boot-2")  # type: ignore[arg-type]
    # rec(1) is 0 s old, rec(0) 50 s: the age clock goes on from the newest stamp
    assert again.stats().oldest_age_s == pytest.approx(50.0)
    mono.now += 11
    assert again.stats().oldest_age_s == pytest.approx(61.0)
    again.close()
