"""Cayenne Low Power Payload (LPP), the standard IPSO-based data types.

A payload is a sequence of ``channel (1 byte) | type (1 byte) | value`` records; values are
big-endian with the resolution below (from the Cayenne LPP spec, myDevices)::

    type  name          size  resolution, sign      -> quantity (canonical unit)
    0     digital in    1     1, unsigned            -> digital (1)
    1     digital out   1     1, unsigned            -> digital (1)
    2     analog in     2     0.01, signed           -> analog (1)
    3     analog out    2     0.01, signed           -> analog (1)
    101   illuminance   2     1 lux, unsigned        -> illuminance (lx)
    102   presence      1     1, unsigned            -> presence (1)
    103   temperature   2     0.1 °C, signed         -> temperature (Cel)
    104   humidity      1     0.5 %, unsigned        -> relative_humidity (%RH)
    113   accelerometer 6     0.001 g per axis, signed -> acceleration_x/y/z (g)
    115   barometer     2     0.1 hPa, unsigned      -> pressure (hPa)
    134   gyrometer     6     0.01 °/s per axis, signed -> angular_velocity_x/y/z (deg/s)
    136   GPS           9     lat, lon 0.0001°, alt 0.01 m, 3 bytes each, signed
                                                     -> latitude, longitude, altitude

The LPP channel becomes ``Measurement.channel``; the LPP type name is kept in
``metadata['lpp_type']`` (so digital *in* and *out* stay distinguishable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from climastream.quantities import Quantity
from firmware_bridge.model import Decoded, DecodeError, DecodeResult, Measurement, measurement


@dataclass(frozen=True, slots=True)
class LppType:
    """One LPP data type: its axes (quantities), bytes per axis, signedness and resolution."""

    type_id: int
    name: str
    quantities: tuple[Quantity, ...]
    axis_size: int
    signed: bool
    resolution: float

    @property
    def size(self) -> int:
        return self.axis_size * len(self.quantities)


_XYZ_ACC = (Quantity.ACCELERATION_X, Quantity.ACCELERATION_Y, Quantity.ACCELERATION_Z)
_XYZ_GYRO = (Quantity.ANGULAR_VELOCITY_X, Quantity.ANGULAR_VELOCITY_Y, Quantity.ANGULAR_VELOCITY_Z)

LPP_TYPES: dict[int, LppType] = {
    t.type_id: t
    for t in (
        LppType(0, "digital_input", (Quantity.DIGITAL,), 1, False, 1),
        LppType(1, "digital_output", (Quantity.DIGITAL,), 1, False, 1),
        LppType(2, "analog_input", (Quantity.ANALOG,), 2, True, 0.01),
        LppType(3, "analog_output", (Quantity.ANALOG,), 2, True, 0.01),
        LppType(101, "illuminance", (Quantity.ILLUMINANCE,), 2, False, 1),
        LppType(102, "presence", (Quantity.PRESENCE,), 1, False, 1),
        LppType(103, "temperature", (Quantity.TEMPERATURE,), 2, True, 0.1),
        LppType(104, "humidity", (Quantity.RELATIVE_HUMIDITY,), 1, False, 0.5),
        LppType(113, "accelerometer", _XYZ_ACC, 2, True, 0.001),
        LppType(115, "barometer", (Quantity.PRESSURE,), 2, False, 0.1),
        LppType(134, "gyrometer", _XYZ_GYRO, 2, True, 0.01),
        LppType(136, "gps", (Quantity.LATITUDE, Quantity.LONGITUDE, Quantity.ALTITUDE), 3, True, 0),
    )
}
_GPS_RESOLUTION = (0.0001, 0.0001, 0.01)
_BY_NAME = {t.name: t for t in LPP_TYPES.values()}


def _scale(raw: int, resolution: float) -> float:
    # Divide by the integer step count: 272 / 10 is exactly 27.2, 272 * 0.1 is not.
    if resolution >= 1:
        return float(raw * resolution)
    return raw / round(1 / resolution)


def decode_cayenne(
    payload: bytes, device_id: str | None = None, seq: int | None = None
) -> DecodeResult:
    """Decode a whole LPP payload; any unknown type or cut-off record rejects it.

    An unknown type makes the rest unparseable (its size is unknown), so the error names
    the type and its byte offset rather than returning half a payload.
    """
    raw = bytes(payload)
    if not raw:
        return DecodeError("truncated", "empty Cayenne LPP payload", raw=raw, offset=0)
    out: list[Measurement] = []
    pos = 0
    while pos < len(raw):
        if pos + 2 > len(raw):
            return DecodeError(
                "truncated", "record header (channel, type) is cut off", raw=raw, offset=pos
            )
        channel, type_id = raw[pos], raw[pos + 1]
        lpp = LPP_TYPES.get(type_id)
        if lpp is None:
            return DecodeError(
                "unknown_type",
                f"Cayenne LPP type {type_id} (0x{type_id:02X}) on channel {channel} "
                "is not a standard type",
                raw=raw,
                offset=pos + 1,
            )
        start = pos + 2
        if start + lpp.size > len(raw):
            return DecodeError(
                "truncated",
                f"{lpp.name} on channel {channel} needs {lpp.size} bytes, {len(raw) - start} left",
                raw=raw,
                offset=start,
            )
        for axis, quantity in enumerate(lpp.quantities):
            chunk = raw[start + axis * lpp.axis_size : start + (axis + 1) * lpp.axis_size]
            value = int.from_bytes(chunk, "big", signed=lpp.signed)
            resolution = _GPS_RESOLUTION[axis] if lpp.type_id == 136 else lpp.resolution
            out.append(
                measurement(
                    quantity,
                    _scale(value, resolution),
                    device_id=device_id,
                    seq=seq,
                    channel=channel,
                    metadata={"lpp_type": lpp.name},
                )
            )
        pos = start + lpp.size
    return Decoded(tuple(out), raw=raw)


def encodable_range(name: str, axis: int = 0) -> tuple[float, float]:
    """The lowest and highest value an LPP type's ``axis`` carries (``temperature``: ±3276.8)."""
    lpp = _BY_NAME[name]
    bits = lpp.axis_size * 8
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if lpp.signed else (0, (1 << bits) - 1)
    resolution = _GPS_RESOLUTION[axis] if lpp.type_id == 136 else lpp.resolution
    return _scale(low, resolution), _scale(high, resolution)


def encode_cayenne(records: Sequence[tuple[int, str, Sequence[float]]]) -> bytes:
    """Encode ``(channel, lpp type name, values)`` records, e.g. ``(3, "temperature", [27.2])``.

    Raises ValueError for an unknown type name, a channel that is not a byte, a wrong
    number of values or a value that is not finite or does not fit the type.
    """
    out = bytearray()
    for channel, name, values in records:
        lpp = _BY_NAME.get(name)
        if lpp is None:
            raise ValueError(f"unknown Cayenne LPP type name {name!r}")
        if len(values) != len(lpp.quantities):
            raise ValueError(f"{name} takes {len(lpp.quantities)} values, got {len(values)}")
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= 255:
            raise ValueError(f"{name} channel {channel!r} is not a byte (0..255)")
        out += bytes([channel, lpp.type_id])
        for axis, value in enumerate(values):
            if not math.isfinite(value):  # round() would raise OverflowError or ValueError
                raise ValueError(f"{name} value {value} is not a finite number")
            resolution = _GPS_RESOLUTION[axis] if lpp.type_id == 136 else lpp.resolution
            steps = round(value * round(1 / resolution)) if resolution < 1 else round(value)
            try:
                out += steps.to_bytes(lpp.axis_size, "big", signed=lpp.signed)
            except OverflowError as exc:
                raise ValueError(
                    f"{name} value {value} does not fit {lpp.axis_size} bytes"
                ) from exc
    return bytes(out)
