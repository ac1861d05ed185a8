"""A partition's checkpoint inline or in parts (``stream.checkpoints``): whatever point a
crash stops a write at, a restore gets the previous checkpoint or the new one, whole."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.checkpoints import CheckpointError, Op, Written, part_key, read, write_ops

KEY = b"s1:0"


def state_of(size: int, tag: int) -> bytes:
    """Engine state JSON of about ``size`` bytes, different for each ``tag``."""
    return orjson.dumps({"tag": tag, "values": "x" * size})


def apply(table: dict[bytes, bytes], ops: list[Op]) -> None:
    for key, value in ops:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


def test_a_small_checkpoint_is_one_value_in_the_layout_it_always_had() -> None:
    state = state_of(10, 1)
    ops, written = write_ops(KEY, 41, state, Written(), part_bytes=1000)
    assert ops == [(KEY, orjson.dumps({"offset": 41, "state": orjson.loads(state)}))]
    assert written == Written()
    table: dict[bytes, bytes] = {}
    apply(table, ops)
    stored = read(table.get, KEY)
    assert stored is not None
    assert (stored.offset, stored.state) == (41, orjson.loads(state))


def test_a_big_checkpoint_goes_in_parts_then_a_manifest() -> None:
    state = state_of(2500, 1)
    ops, written = write_ops(KEY, 7, state, Written(), part_bytes=1000)
    assert [key for key, _ in ops] == [part_key(KEY, 0, i) for i in range(3)] + [KEY]
    assert all(len(value or b"") <= 1000 for _, value in ops[:-1])
    assert written == Written(0, [3, 0])
    table: dict[bytes, bytes] = {}
    apply(table, ops)
    stored = read(table.get, KEY)
    assert stored is not None
    assert (stored.offset, stored.state, stored.written) == (7, orjson.loads(state), written)


def test_no_checkpoint_reads_as_none() -> None:
    assert read({}.get, KEY) is None


def test_a_missing_part_is_an_error_naming_it() -> None:
    table: dict[bytes, bytes] = {}
    apply(table, write_ops(KEY, 7, state_of(2500, 1), Written(), part_bytes=1000)[0])
    del table[part_key(KEY, 0, 1)]
    with pytest.raises(CheckpointError, match=r"checkpoint s1:0: part 1 of 3 \(generation 0\)"):
        read(table.get, KEY)


def test_a_changed_part_is_an_error() -> None:
    table: dict[bytes, bytes] = {}
    apply(table, write_ops(KEY, 7, state_of(2500, 1), Written(), part_bytes=1000)[0])
    part = table[part_key(KEY, 0, 1)]
    table[part_key(KEY, 0, 1)] = part[:10] + b"y" + part[11:]  # an "x" of the values
    with pytest.raises(CheckpointError, match="CRC-32"):
        read(table.get, KEY)


def test_part_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="part_bytes"):
        write_ops(KEY, 0, b"{}", Written(), part_bytes=0)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=8),
    cut=st.floats(0, 1),
    restart_at=st.integers(0, 8),
)
def test_a_crash_anywhere_restores_the_old_or_the_new_checkpoint_whole(
    sizes: list[int], cut: float, restart_at: int
) -> None:
    """A run of checkpoints of changing sizes (inline and in parts), the writer restarted
    once (it then knows only what the table says), the last write cut short anywhere."""
    table: dict[bytes, bytes] = {}
    written = Written()
    previous: tuple[int, object] | None = None
    for index, size in enumerate(sizes):
        if index == restart_at:
            stored = read(table.get, KEY)
            written = stored.written if stored is not None else Written()
        state = state_of(size, index)
        ops, after = write_ops(KEY, index, state, written, part_bytes=1000)
        new = (index, orjson.loads(state))
        if index == len(sizes) - 1:
            apply(table, ops[: int(cut * len(ops))])
            stored = read(table.get, KEY)
            got = None if stored is None else (stored.offset, stored.state)
            assert got in (previous, new)
            return
        apply(table, ops)
        written = after
        stored = read(table.get, KEY)
        assert stored is not None
        assert (stored.offset, stored.state) == new
        # nothing is left in the table but what the manifest names and the other
        # generation it counts (to be reused or deleted by the next checkpoint)
        named = {part_key(KEY, gen, i) for gen, n in enumerate(after.gens) for i in range(n)}
        assert set(table) == {KEY} | named
        previous = new
