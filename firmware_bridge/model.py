"""The values every codec produces: measurements, a decoded frame, or a typed decode error.

Bad input is data, not a crash: a decoder hands back either a :class:`Decoded` frame or a
:class:`DecodeError` that keeps the raw bytes, the byte offset and a short snake_case reason
code, so the pipeline can count errors by reason and dead-letter the raw bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple, TypeAlias

from climastream.quantities import CANONICAL_UNITS, Quantity, UnitError, to_canonical

#: Metadata values stay JSON scalars so a measurement always serialises without surprises.
MetaValue: TypeAlias = str | int | float | bool | None

_EMPTY: Mapping[str, MetaValue] = MappingProxyType({})


class Measurement(NamedTuple):
    """One decoded value of one quantity, already in the quantity's canonical unit.

    ``device_id`` is None when the frame carries no identity (a PMS5003 on a serial port);
    the gateway then names the device from its config. ``seq`` is the device's own counter
    (LoRaWAN fCnt, framed-protocol sequence) when the frame has one. ``time`` is an aware
    UTC datetime from the device or network server, or None when only the gateway's receive
    time is known; ``gateway_time`` is True when ``time`` was reckoned from the gateway's
    clock (a SenML time relative to "now", or none: RFC 8428 §4.5.3), so it is as wrong as
    that clock while it is not synchronized. ``channel`` tells apart several sensors of one
    quantity on one device (Cayenne LPP channel numbers). ``metadata`` holds the extras that
    are not the value: radio RSSI/SNR, the raw unit, CF=1 concentrations.

    Immutable, and a NamedTuple rather than a frozen dataclass: one is built per decoded
    value on the gateway's hot path, and a tuple builds in a third of the time (0.35 µs
    against 1.05 µs here). Use ``m._replace(...)`` for a changed copy.
    """

    device_id: str | None
    quantity: Quantity
    value: float
    unit: str
    seq: int | None = None
    time: datetime | None = None
    channel: int | str | None = None
    metadata: Mapping[str, MetaValue] = _EMPTY
    gateway_time: bool = False

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; keys with no value are left out."""
        out: dict[str, object] = {
            "device_id": self.device_id,
            "quantity": self.quantity.value,
            "value": self.value,
            "unit": self.unit,
        }
        if self.seq is not None:
            out["seq"] = self.seq
        if self.time is not None:
            out["time"] = self.time.isoformat().replace("+00:00", "Z")
        if self.channel is not None:
            out["channel"] = self.channel
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.gateway_time:
            out["gateway_time"] = True
        return out


def measurement(
    quantity: Quantity,
    value: float,
    source_unit: str | None = None,
    *,
    device_id: str | None = None,
    seq: int | None = None,
    time: datetime | None = None,
    channel: int | str | None = None,
    metadata: Mapping[str, MetaValue] | None = None,
    field: str | None = None,
) -> Measurement:
    """Build a :class:`Measurement`, converting ``value`` from ``source_unit`` to canonical.

    Raises :class:`climastream.quantities.UnitError` when the unit is not convertible; codecs
    translate that into a ``bad_unit`` :class:`DecodeError`. A converted value keeps its
    source unit in ``metadata['raw_unit']`` so the conversion stays traceable.

    Raises a ``bad_value`` :class:`DecodeError` naming ``field`` (the quantity when None)
    when the value, or the value once converted (``1e308`` kPa in hPa), is not a finite
    float; codecs return it with their raw bytes and offset.
    """
    canonical = CANONICAL_UNITS[quantity]
    meta = dict(metadata) if metadata else {}
    source = value
    if source_unit is not None and source_unit != canonical:
        meta["raw_unit"] = source_unit
        meta["raw_value"] = value
        value = to_canonical(quantity, value, source_unit)
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        value = math.inf
    if not math.isfinite(value):
        shown = repr(source) if len(repr(source)) <= 30 else f"{repr(source)[:24]}..."
        converted = f" (from {shown} {source_unit})" if "raw_unit" in meta else ""
        raise DecodeError(
            "bad_value",
            f"{field or quantity.value}: {quantity.value} value {value!r} {canonical}"
            f"{converted} is not a finite number",
        )
    return Measurement(
        device_id=device_id,
        quantity=quantity,
        value=value,
        unit=canonical,
        seq=seq,
        time=time,
        channel=channel,
        metadata=MappingProxyType(meta) if meta else _EMPTY,
    )


class DecodeError(Exception):
    """Input that is not a valid frame or payload. Returned as a value, raised only inside.

    ``reason`` is a short snake_case code that errors are counted by (``bad_checksum``,
    ``truncated``, ``bad_header``, ``unknown_type`` ...); ``offset`` is the byte in ``raw``
    where the problem was found (None when it is not about one byte, e.g. a missing JSON
    key); ``message`` says what is wrong in words an installer understands.
    """

    def __init__(self, reason: str, message: str, *, raw: bytes = b"", offset: int | None = None):
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{reason}{where}: {message}")
        self.reason = reason
        self.message = message
        self.raw = bytes(raw)
        self.offset = offset

    def with_raw(self, raw: bytes, shift: int = 0) -> DecodeError:
        """The same error about a larger buffer: ``raw`` replaces the bytes, offset shifts."""
        offset = None if self.offset is None else self.offset + shift
        return DecodeError(self.reason, self.message, raw=raw, offset=offset)

    def to_json(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "offset": self.offset,
            "message": str(self),
            "raw_hex": self.raw.hex(),
        }

    def __repr__(self) -> str:
        return f"DecodeError({self.reason!r}, offset={self.offset!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class Decoded:
    """One successfully decoded frame or payload.

    ``measurements`` may be empty (a SenML pack with only string values). ``unmapped`` names
    fields that were valid but map to no known quantity, so they are visible, not silently
    dropped. ``raw`` is the frame's bytes, for traceability.
    """

    measurements: tuple[Measurement, ...]
    raw: bytes = b""
    unmapped: tuple[str, ...] = ()


#: What a one-shot codec returns, and each item a stream decoder's ``feed`` returns.
DecodeResult: TypeAlias = Decoded | DecodeError


def unit_error(exc: UnitError, raw: bytes, offset: int | None = None) -> DecodeError:
    """Translate a unit conversion failure into a ``bad_unit`` decode error."""
    return DecodeError("bad_unit", str(exc), raw=raw, offset=offset)
