"""Fast validation and encoding of :class:`~climastream.contract.Reading` dicts (edge hot loop).

Contract: ``ReadingEncoder(now).encode(data)`` returns exactly
``contract.encode(Reading.model_validate(data, context={"now": now}))`` and raises
:class:`~climastream.contract.ContractError` (naming each bad field and why) exactly when
that validation fails. ``tests/unit/contract/test_fastpath.py`` holds it to that with a
Hypothesis differential test over valid and invalid inputs.

Why: building a pydantic ``Reading`` (its model validator is a Python hook) and dumping it
costs about 7 µs per reading, which alone is most of a gateway's per-reading budget. The
common shape the edge agent builds (a plain dict of exact ``str``/``int``/``float`` values
and UTC ``datetime`` objects) is checked here with precompiled tests that use the
contract's own constants (the SafeId pattern, canonical units, plausibility bounds, time
bounds, quality flags), then encoded with one ``orjson.dumps`` of a dict laid out in the
model's field order.

How it stays exactly as strict: the fast path only ever *accepts*. Any input it does not
fully recognise (a missing or unknown key, a subclass or an unusual type, a non-UTC or
naive time, an int where a float belongs, any failed check) is handed to pydantic, which
gives the authoritative verdict, the normalised value and the error message. So a
rejection always carries pydantic's field-by-field reasons, and an acceptance is only ever
made on inputs where the checks below are the complete rule set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from pydantic import ValidationError

from climastream.contract import (
    EARLIEST_EVENT_TIME,
    MAX_CLOCK_SKEW,
    SAFE_ID_PATTERN,
    SCHEMA_VERSION,
    ContractError,
    QualityFlag,
    Reading,
    _describe,
    encode,
)
from climastream.quantities import SPECS

__all__ = ["ReadingEncoder"]

# fullmatch: pydantic's (Rust) "$" is end-of-text; Python's would also match before "\n"
_safe_id_match = re.compile(SAFE_ID_PATTERN).fullmatch
#: ids that passed the pattern: a gateway sees the same few hundred over and over, and a
#: set lookup is several times cheaper than the regex. Bounded; cleared when full.
_GOOD_IDS: set[str] = set()
_GOOD_IDS_MAX: Final = 100_000


def _safe_id(value: str) -> bool:
    """The SafeId pattern, for a value already known to be an exact ``str``."""
    if value in _GOOD_IDS:
        return True
    if _safe_id_match(value) is None:
        return False
    if len(_GOOD_IDS) >= _GOOD_IDS_MAX:
        _GOOD_IDS.clear()
    _GOOD_IDS.add(value)
    return True


#: wire name -> (canonical unit, low, high), straight from quantities.SPECS
_QUANTITIES: Final[dict[str, tuple[str, float, float]]] = {
    q.value: (spec.unit, spec.low, spec.high) for q, spec in SPECS.items()
}
_FLAGS: Final[frozenset[str]] = frozenset(flag.value for flag in QualityFlag)
_REQUIRED: Final = frozenset(
    ("device_id", "gateway_id", "seq", "quantity", "value", "unit", "event_time", "ingest_time")
)
_OPTIONAL: Final = frozenset(("schema_version", "location", "zone", "quality", "score", "model_id"))
_KNOWN: Final = _REQUIRED | _OPTIONAL
_SEQ_LIMIT: Final = 2**63
_isfinite = math.isfinite


class _Defer(Exception):
    """The fast path cannot decide; pydantic does."""


def _location(loc: Any) -> dict[str, float]:
    """Location as model_dump(exclude_none) lays it out, or _Defer."""
    if type(loc) is not dict:
        raise _Defer
    lat = loc.get("lat")
    lon = loc.get("lon")
    alt = loc.get("alt_m")
    if len(loc) != 2 + ("alt_m" in loc) or "lat" not in loc or "lon" not in loc:
        raise _Defer
    if type(lat) is not float or not _isfinite(lat) or not -90.0 <= lat <= 90.0:
        raise _Defer
    if type(lon) is not float or not _isfinite(lon) or not -180.0 <= lon <= 180.0:
        raise _Defer
    if alt is None:
        return {"lat": lat, "lon": lon}
    if type(alt) is not float or not _isfinite(alt) or not -1000.0 <= alt <= 20000.0:
        raise _Defer
    return {"lat": lat, "lon": lon, "alt_m": alt}


class ReadingEncoder:
    """Validate and encode reading dicts against one ``now`` (one clock read per batch).

    ``now`` must be an aware datetime: it bounds future timestamps exactly as the
    ``{"now": now}`` validation context does for :class:`Reading`.
    """

    def __init__(self, now: datetime) -> None:
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        self.now = now
        self._latest = now + MAX_CLOCK_SKEW
        self._context = {"now": now}
        self._now_ok: Any = None
        if type(now) is datetime and now.tzinfo is UTC and now >= EARLIEST_EVENT_TIME:
            self._now_ok = now
        self.fast = 0  # readings decided by the fast path
        self.slow = 0  # readings handed to pydantic

    def encode(self, data: Mapping[str, Any]) -> bytes:
        """Bytes of the validated reading; :class:`ContractError` naming what is wrong."""
        try:
            out = self._fast(data)
        except _Defer:
            self.slow += 1
            return self._reference(data)
        self.fast += 1
        return orjson.dumps(out)

    def _reference(self, data: Mapping[str, Any]) -> bytes:
        try:
            model = Reading.model_validate(data, context=self._context)
        except ValidationError as exc:
            raise ContractError(_describe(exc, "Reading"), model="Reading") from None
        return encode(model)

    def _time(self, value: Any) -> datetime:
        if value is self._now_ok:  # the batch's ingest time, checked once
            return value
        if type(value) is not datetime or value.tzinfo is not UTC:
            raise _Defer
        if not EARLIEST_EVENT_TIME <= value <= self._latest:
            raise _Defer
        return value

    def _fast(self, data: Any) -> dict[str, Any]:
        if type(data) is not dict or not data.keys() >= _REQUIRED or not data.keys() <= _KNOWN:
            raise _Defer
        version = data.get("schema_version", SCHEMA_VERSION)
        device_id = data["device_id"]
        gateway_id = data["gateway_id"]
        seq = data["seq"]
        quantity = data["quantity"]
        value = data["value"]
        unit = data["unit"]
        if (
            type(version) is not int
            or version != SCHEMA_VERSION
            or type(device_id) is not str
            or not _safe_id(device_id)
            or type(gateway_id) is not str
            or not _safe_id(gateway_id)
            or type(seq) is not int
            or not 0 <= seq < _SEQ_LIMIT
            or type(quantity) is not str
            or type(value) is not float
            or type(unit) is not str
            or not _isfinite(value)
        ):
            raise _Defer
        spec = _QUANTITIES.get(quantity)
        if spec is None or unit != spec[0] or not spec[1] <= value <= spec[2]:
            raise _Defer
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "device_id": device_id,
            "gateway_id": gateway_id,
            "seq": seq,
            "quantity": quantity,
            "value": value,
            "unit": unit,
            "event_time": self._time(data["event_time"]),
            "ingest_time": self._time(data["ingest_time"]),
        }
        location = data.get("location")
        if location is not None:
            out["location"] = _location(location)
        zone = data.get("zone")
        if zone is not None:
            if type(zone) is not str or not _safe_id(zone):
                raise _Defer
            out["zone"] = zone
        quality = data.get("quality", ())
        if type(quality) is not list and type(quality) is not tuple:
            raise _Defer
        for flag in quality:
            if type(flag) is not str or flag not in _FLAGS:
                raise _Defer
        out["quality"] = quality
        score = data.get("score")
        model_id = data.get("model_id")
        if score is not None:
            if type(score) is not float or not _isfinite(score) or model_id is None:
                raise _Defer
            out["score"] = score
        if model_id is not None:
            if type(model_id) is not str or not _safe_id(model_id):
                raise _Defer
            out["model_id"] = model_id
        return out
