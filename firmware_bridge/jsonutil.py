"""Small helpers shared by the JSON codecs: parsing, timestamps, dotted paths, ids."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from firmware_bridge.model import DecodeError

_FRACTION = re.compile(r"(\.\d{6})\d+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]+")


def raw_bytes(payload: bytes | str | Mapping[str, Any] | list[Any]) -> bytes:
    """The bytes to keep on a :class:`DecodeError` (empty for an already-parsed document)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return b""


class HugeInteger(float):
    """A JSON integer with more digits than Python converts (``sys.get_int_max_str_digits``).

    Parsed as an infinite float, so :func:`number` rejects it naming the field like any
    other number out of float range; its repr says what it was, not ``inf``.
    """

    digits: int

    def __new__(cls, text: str) -> HugeInteger:
        self = super().__new__(cls, "-inf" if text.startswith("-") else "inf")
        self.digits = len(text.lstrip("-"))
        return self

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"

    __str__ = __repr__


def _parse_int(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:  # beyond the int digit limit (4300 by default)
        return HugeInteger(text)


def parse_json(payload: bytes | str | Mapping[str, Any] | list[Any]) -> Any:
    """Parse a JSON document; raise :class:`DecodeError` ``bad_json`` with the byte offset.

    An integer too long for ``int()`` becomes a :class:`HugeInteger`, which :func:`number`
    rejects as ``bad_value`` naming the field.
    """
    if isinstance(payload, Mapping | list):
        return payload
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("bad_json", "payload is not UTF-8", raw=raw, offset=exc.start) from None
    try:
        try:
            return json.loads(text)
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            # an integer over the digit limit: parse again (slower) with the int hook
            return json.loads(text, parse_int=_parse_int)
    except (json.JSONDecodeError, RecursionError) as exc:
        pos = getattr(exc, "pos", None)
        offset = len(text[:pos].encode()) if pos is not None else None
        raise DecodeError(
            "bad_json", f"not valid JSON: {getattr(exc, 'msg', exc)}", raw=raw, offset=offset
        ) from None


def parse_time(value: object, field: str, raw: bytes = b"") -> datetime:
    """An aware UTC datetime from RFC 3339 text or Unix seconds (int/float).

    Nanosecond fractions (ChirpStack, TTS) are cut to microseconds. Raises ``bad_time``.
    """
    if isinstance(value, bool):
        raise DecodeError("bad_time", f"{field} must be a time, got {brief(value)}", raw=raw)
    if isinstance(value, int | float):
        if not _finite(value):
            raise DecodeError("bad_time", f"{field} {brief(value)} is not a finite number", raw=raw)
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise DecodeError(
                "bad_time", f"{field} {brief(value)} is not a valid Unix time", raw=raw
            ) from None
    if not isinstance(value, str):
        raise DecodeError("bad_time", f"{field} must be RFC 3339 text or Unix seconds", raw=raw)
    text = _FRACTION.sub(r"\1", value.strip())
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise DecodeError(
            "bad_time", f"{field} {brief(value)} is not an RFC 3339 time", raw=raw
        ) from None
    if parsed.tzinfo is None:
        raise DecodeError("bad_time", f"{field} {brief(value)} has no UTC offset", raw=raw)
    return parsed.astimezone(UTC)


def get_path(document: Any, path: str) -> Any:
    """Follow a dotted path (``"pm.pm25"``, list indexes as numbers); None when absent."""
    node = document
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if node is None:
            return None
    return node


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a finite float (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def brief(value: object) -> str:
    """``repr(value)`` for a message, a long integer shortened to its digit count."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"<an integer of {len(str(abs(value)))} digits>"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def number(value: object, field: str, raw: bytes = b"") -> float:
    """A finite float from a JSON number (bools are not numbers); raises ``bad_value``.

    A number beyond float range (``1e400``, an integer of 400 digits) is ``bad_value`` too.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError("bad_value", f"{field} must be a number, got {brief(value)}", raw=raw)
    if not _finite(value):
        raise DecodeError(
            "bad_value", f"{field} {brief(value)} is not a finite number in float range", raw=raw
        )
    return float(value)


def safe_id(text: str) -> str:
    """Make ``text`` a safe identifier: unsafe runs become ``-``, at most 128 characters."""
    cleaned = _UNSAFE.sub("-", text).strip("-_.:")
    return cleaned[:128]
