"""A partition's checkpoint in the changelogged ``kpi-state`` table, inline or in parts.

A checkpoint is the partition's engine state (JSON) plus the offset it covers. A small one
is one table value, as it always was::

    "s1:0" -> {"offset": 41, "state": {...}}

A Kafka record may carry about 1 MB (Faust's producer refuses more than 1,000,000 bytes,
and so does Kafka's default ``max.message.bytes``), and the open windows of a busy
partition hold more: a checkpoint bigger than ``part_bytes`` is cut into parts, written
under their own keys, and then a manifest under the partition's key names them::

    "s1:0:1:0" .. "s1:0:1:4" -> the state's bytes, cut in five
    "s1:0"                   -> {"offset": 41, "gen": 1, "parts": 5, "bytes": ..,
                                 "crc32": .., "gens": [3, 5]}

**Two generations.** The parts of a new checkpoint go to the generation the stored
manifest does *not* name, so they never overwrite the parts it points to. Faust writes a
table's keys to the changelog in order, and restores them in order, so a crash part-way
through a checkpoint leaves the previous manifest and its complete generation: a restore
gets the old checkpoint or the new one, never a mix. ``gens`` counts the parts each
generation holds, so that a later, smaller checkpoint deletes the parts it no longer
needs, even after a restart. Parts are only deleted once no written manifest names them.

A manifest whose parts are missing or do not add up (length and CRC-32) is a broken
table: :func:`read` raises :class:`CheckpointError` naming the key, instead of starting
from an empty state and counting the partition's readings twice.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

#: a part stays well under the ~1 MB a Kafka record may carry
DEFAULT_PART_BYTES = 256 * 1024


class CheckpointError(RuntimeError):
    """A stored checkpoint cannot be read back whole."""


class CheckpointNotWritten(CheckpointError):
    """A checkpoint the worker must have in the changelog before it goes on did not get
    there (the state it holds is one a replay would not rebuild)."""


@dataclass
class Written:
    """What the table holds for one partition's key, as far as its writer knows."""

    gen: int | None = None  # the generation the manifest names; None: inline
    gens: list[int] = field(default_factory=lambda: [0, 0])  # parts held per generation


@dataclass(frozen=True)
class Stored:
    offset: int
    state: Any
    written: Written


def part_key(key: bytes, gen: int, index: int) -> bytes:
    return b"%s:%d:%d" % (key, gen, index)


#: one table operation: (key, value) to set, or (key, None) to delete
Op = tuple[bytes, bytes | None]


def write_ops(
    key: bytes, offset: int, state: bytes, written: Written, part_bytes: int
) -> tuple[list[Op], Written]:
    """The table operations, in order, that store ``state`` (JSON bytes) covering
    ``offset`` under ``key``, and what the table holds once they are applied."""
    if part_bytes <= 0:
        raise ValueError("part_bytes must be positive")
    ops: list[Op] = []
    if len(state) <= part_bytes:
        ops.append((key, b'{"offset":%d,"state":%s}' % (offset, state)))
        # no manifest names a part any more: the parts of both generations can go
        for gen, count in enumerate(written.gens):
            ops.extend((part_key(key, gen, i), None) for i in range(count))
        return ops, Written()
    gen = 1 if written.gen == 0 else 0
    parts = [state[i : i + part_bytes] for i in range(0, len(state), part_bytes)]
    ops.extend((part_key(key, gen, i), part) for i, part in enumerate(parts))
    # this generation's parts of an older, bigger checkpoint (no manifest names them)
    ops.extend((part_key(key, gen, i), None) for i in range(len(parts), written.gens[gen]))
    gens = list(written.gens)
    gens[gen] = len(parts)
    manifest = {
        "offset": offset,
        "gen": gen,
        "parts": len(parts),
        "bytes": len(state),
        "crc32": zlib.crc32(state),
        "gens": gens,
    }
    ops.append((key, orjson.dumps(manifest)))
    return ops, Written(gen, gens)


def read(get: Callable[[bytes], bytes | None], key: bytes) -> Stored | None:
    """The checkpoint stored under ``key`` (``get`` reads the table), None if there is none."""
    raw = get(key)
    if not raw:
        return None
    saved = orjson.loads(raw)
    if "state" in saved:
        return Stored(saved["offset"], saved["state"], Written())
    gen, count = saved["gen"], saved["parts"]
    parts = []
    for index in range(count):
        part = get(part_key(key, gen, index))
        if part is None:
            raise CheckpointError(
                f"checkpoint {key.decode()}: part {index} of {count} (generation {gen}) is "
                "missing from the kpi-state table"
            )
        parts.append(part)
    state = b"".join(parts)
    if len(state) != saved["bytes"] or zlib.crc32(state) != saved["crc32"]:
        raise CheckpointError(
            f"checkpoint {key.decode()}: its {count} parts (generation {gen}) hold "
            f"{len(state)} bytes with CRC-32 {zlib.crc32(state)}, the manifest says "
            f"{saved['bytes']} bytes with CRC-32 {saved['crc32']}"
        )
    return Stored(saved["offset"], orjson.loads(state), Written(gen, list(saved["gens"])))
