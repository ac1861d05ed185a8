"""Random operation sequences on both backends: they agree, and no record is lost silently.

The contract suite checks each clause with numbers worked out by hand; this drives chunk
splits, partial acks, evictions and expiry in combinations nobody would write down. Every
record carries a unique id in its payload (with commas, like JSON), so the test can follow
each one: it ends acked, dropped (counted under a reason) or still buffered, and a record
ever handed out is never dropped.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from edge.buffer import (
    DropReason,
    Kind,
    MemoryBuffer,
    Pending,
    Record,
    SqliteBuffer,
    _lengths,
    accounted,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def ids(pending: list[Pending]) -> list[int]:
    return [int(payload.split(b",")[1]) for p in pending for payload in p.payloads()]


def check_rows(buffer: SqliteBuffer) -> None:
    """The SQLite rows agree with the in-memory totals and with their own lengths."""
    total = 0
    depth = Counter[int]()
    for kind, first, last, size, lengths, payload in buffer._db.execute(
        "SELECT kind, first, last, size, lengths, payload FROM chunks ORDER BY last"
    ):
        n = _lengths(lengths)
        assert last - first + 1 == len(n)
        assert sum(n) + len(n) - 1 == len(payload)
        assert size == accounted(n)
        total += size
        depth[kind] += len(n)
    assert total == buffer.stats().bytes
    assert depth[Kind.READING] == buffer.stats().depth
    assert depth[Kind.STATUS] == buffer.stats().status_depth


@pytest.mark.parametrize("seed", range(12))
def test_random_operations(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    overflow = "drop_oldest" if seed % 3 else "drop_newest"
    clock = Clock()
    settings = {
        "max_bytes": rng.choice([600, 1000, 2500]),
        "max_age_s": 100.0,
        "overflow": overflow,
        "chunk_records": rng.choice([1, 3, 5, 50]),
        "chunk_bytes": rng.choice([40, 120, 10_000]),
        "clock": clock,
    }
    memory = MemoryBuffer(**settings)  # type: ignore[arg-type]
    sqlite = SqliteBuffer(tmp_path / "b.db", **settings)  # type: ignore[arg-type]
    next_id = 0
    appended: dict[int, Kind] = {}
    handed_out: set[int] = set()
    acked: set[int] = set()
    in_flight: dict[Kind, list[Pending]] = {k: [] for k in Kind}
    for _step in range(300):
        op = rng.random()
        if op < 0.35:
            records = []
            for _ in range(rng.randint(0, 8)):
                kind = Kind.STATUS if rng.random() < 0.15 else Kind.READING
                body = b"v," * rng.randint(0, 12)
                records.append(
                    Record("d", next_id, b"{," + str(next_id).encode() + b"," + body, kind)
                )
                appended[next_id] = kind
                next_id += 1
            assert memory.append(records) == sqlite.append(records)
        elif op < 0.65:
            kind = Kind.STATUS if rng.random() < 0.2 else Kind.READING
            limit = rng.randint(1, 7)
            max_bytes = rng.choice([None, 1, 30, 80, 200])
            got = memory.take(kind, limit, max_bytes)
            assert got == sqlite.take(kind, limit, max_bytes)
            assert sum(p.count for p in got) <= limit
            if max_bytes is not None and sum(p.count for p in got) > 1:
                assert len(b",".join(p.payload for p in got)) <= max_bytes
            handed_out.update(ids(got))
            in_flight[kind].extend(got)
        elif op < 0.8:
            kind = Kind.STATUS if rng.random() < 0.2 else Kind.READING
            if in_flight[kind]:
                upto = rng.randrange(len(in_flight[kind]))
                done, in_flight[kind] = in_flight[kind][: upto + 1], in_flight[kind][upto + 1 :]
                last = done[-1].last
                assert memory.ack(kind, last) == sqlite.ack(kind, last)
                acked.update(ids(done))
        elif op < 0.9:
            kind = Kind.STATUS if rng.random() < 0.3 else Kind.READING
            memory.release(kind)
            sqlite.release(kind)
            in_flight[kind] = []
        else:
            clock.now += rng.choice([10.0, 40.0, 90.0])
            assert memory.expire() == sqlite.expire()
        m, s = memory.stats(), sqlite.stats()
        assert (m.depth, m.bytes, m.status_depth) == (s.depth, s.bytes, s.status_depth)
        assert m.bytes <= settings["max_bytes"]
        assert memory.dropped() == sqlite.dropped()
        check_rows(sqlite)
    # follow every record: acked, still buffered, or dropped and counted; never both sent
    # (handed out) and dropped
    for kind in Kind:
        memory.release(kind)
        sqlite.release(kind)
    buffered = set(ids(sqlite.take(Kind.READING, 10**6) + sqlite.take(Kind.STATUS, 10**6)))
    assert buffered == set(ids(memory.take(Kind.READING, 10**6) + memory.take(Kind.STATUS, 10**6)))
    gone = set(appended) - buffered - acked
    assert not gone & handed_out, "a record handed out was dropped"
    assert sum(sqlite.dropped().values()) == len(gone)
    readings_gone = sum(1 for i in gone if appended[i] is Kind.READING)
    dropped = sqlite.dropped()
    assert dropped.get(DropReason.STATUS_EVICTED, 0) <= len(gone) - readings_gone
    sqlite.close()
