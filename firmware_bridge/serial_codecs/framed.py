"""Decoder and encoder of the climastream framed protocol; the spec is FRAMED_PROTOCOL.md.

The record-type table here is the reference; the MicroPython sender in
``firmware_bridge/firmware`` carries its own copy (MicroPython has no enums), and a test
checks that the two agree.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from climastream.quantities import CANONICAL_UNITS, Quantity
from firmware_bridge.checksums import CobsError, cobs_decode, cobs_encode, crc16_ccitt_false
from firmware_bridge.model import Decoded, DecodeError, DecodeResult, Measurement
from firmware_bridge.serial_codecs.base import StreamDecoder

VERSION = 1
FLAG_TIME_VALID = 0x01
MAX_ENCODED = 1024
MAX_ID_LEN = 32
# fullmatch, not "^...$": "$" would also match before a trailing newline
_SAFE_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_.:\-]*")


@dataclass(frozen=True, slots=True)
class RecordType:
    """How one record type is encoded: struct format of the value and its divisor."""

    type_id: int
    quantity: Quantity
    fmt: str
    divisor: int

    @property
    def size(self) -> int:
        return struct.calcsize(">" + self.fmt)


RECORD_TYPES: dict[int, RecordType] = {
    rt.type_id: rt
    for rt in (
        RecordType(0x01, Quantity.TEMPERATURE, "h", 100),
        RecordType(0x02, Quantity.RELATIVE_HUMIDITY, "H", 100),
        RecordType(0x03, Quantity.PRESSURE, "I", 100),
        RecordType(0x04, Quantity.PM1, "H", 10),
        RecordType(0x05, Quantity.PM2_5, "H", 10),
        RecordType(0x06, Quantity.PM10, "H", 10),
        RecordType(0x07, Quantity.NO2, "H", 10),
        RecordType(0x08, Quantity.O3, "H", 10),
        RecordType(0x09, Quantity.SO2, "H", 10),
        RecordType(0x0A, Quantity.CO, "H", 1000),
        RecordType(0x0B, Quantity.CO2, "H", 1),
        RecordType(0x0C, Quantity.WIND_SPEED, "H", 100),
        RecordType(0x0D, Quantity.WIND_GUST, "H", 100),
        RecordType(0x0E, Quantity.WIND_DIRECTION, "H", 10),
        RecordType(0x0F, Quantity.PRECIPITATION, "H", 10),
        RecordType(0x10, Quantity.SOLAR_RADIATION, "H", 10),
        RecordType(0x11, Quantity.UV_INDEX, "H", 100),
        RecordType(0x12, Quantity.ILLUMINANCE, "I", 100),
        RecordType(0x13, Quantity.NOISE_LAEQ, "H", 100),
        RecordType(0x14, Quantity.BATTERY_VOLTAGE, "H", 1000),
        RecordType(0x15, Quantity.DEW_POINT, "h", 100),
    )
}
TYPE_BY_QUANTITY: dict[Quantity, RecordType] = {rt.quantity: rt for rt in RECORD_TYPES.values()}
#: type id -> (record type, unpack_from of its value, value size, canonical unit): built
#: once, so the decode loop does no struct format parsing per record
_DECODE: dict[int, tuple[RecordType, Callable[..., tuple[int]], int, str]] = {
    rt.type_id: (
        rt,
        struct.Struct(">" + rt.fmt).unpack_from,
        rt.size,
        CANONICAL_UNITS[rt.quantity],
    )
    for rt in RECORD_TYPES.values()
}
_HEADER = struct.Struct(">IIB").unpack_from


class EncodeError(ValueError):
    """A value the framed protocol cannot carry (unknown quantity, out of range, bad id)."""


_FMT_RANGE = {"h": (-(2**15), 2**15 - 1), "H": (0, 2**16 - 1), "I": (0, 2**32 - 1)}


def encodable_range(quantity: Quantity) -> tuple[float, float]:
    """The lowest and highest value of ``quantity`` a record carries (temperature: ±327.68)."""
    rt = TYPE_BY_QUANTITY[quantity]
    low, high = _FMT_RANGE[rt.fmt]
    return low / rt.divisor, high / rt.divisor


def encode_frame(
    device_id: str,
    seq: int,
    time: datetime | None,
    records: Sequence[tuple[Quantity, float, int]],
) -> bytes:
    """The COBS-encoded frame with its trailing 0x00; records are (quantity, value, channel).

    Raises :class:`EncodeError` when a value does not fit its record type.
    """
    ident = device_id.encode("ascii", "replace")
    if not 1 <= len(ident) <= MAX_ID_LEN or not _SAFE_ID.fullmatch(ident):
        raise EncodeError(f"device id {device_id!r} is not 1..32 safe ASCII characters")
    if not 0 <= seq < 2**32:
        raise EncodeError(f"seq {seq} does not fit uint32")
    if len(records) > 255:
        raise EncodeError("at most 255 records per frame")
    flags = FLAG_TIME_VALID if time is not None else 0
    stamp = int(time.timestamp()) if time is not None else 0
    if not 0 <= stamp < 2**32:
        raise EncodeError(
            f"time {time} is outside uint32 Unix seconds (1970-01-01 to 2106-02-07 UTC)"
        )
    body = bytearray(struct.pack(">BBB", VERSION, flags, len(ident)))
    body += ident
    body += struct.pack(">IIB", seq, stamp, len(records))
    for quantity, value, channel in records:
        rt = TYPE_BY_QUANTITY.get(quantity)
        if rt is None:
            raise EncodeError(f"quantity {quantity.value} has no framed-protocol record type")
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= 255:
            raise EncodeError(f"{quantity.value} channel {channel!r} is not a byte (0..255)")
        try:
            body += struct.pack(">BB" + rt.fmt, rt.type_id, channel, round(value * rt.divisor))
        except (struct.error, OverflowError, ValueError) as exc:
            raise EncodeError(f"{quantity.value}={value!r} does not fit {rt.fmt}: {exc}") from exc
    body += struct.pack(">H", crc16_ccitt_false(bytes(body)))
    return cobs_encode(bytes(body)) + b"\x00"


def decode_frame(frame: bytes, device_id: str | None = None) -> DecodeResult:
    """Decode one COBS-decoded frame (header, records and CRC; no delimiter).

    Error offsets count bytes of this decoded frame. ``device_id`` overrides the frame's id.
    """
    return _decode_frame(bytes(frame), device_id)


#: device ids already checked against the safe-id pattern, as bytes -> str: a gateway hears
#: the same few hundred nodes over and over. Bounded; cleared when full.
_IDS: dict[bytes, str] = {}
_IDS_MAX = 10_000


def _decode_frame(raw: bytes, device_id: str | None) -> DecodeResult:
    if len(raw) < 14:
        return DecodeError(
            "truncated", f"a frame is at least 14 bytes, got {len(raw)}", raw=raw, offset=len(raw)
        )
    # CRC-16/CCITT-FALSE over the data followed by its own big-endian CRC is 0 exactly when
    # the CRC is right (no reflection, no final XOR): one pass, no slice copy
    if crc16_ccitt_false(raw):
        crc = crc16_ccitt_false(raw[:-2])
        sent = raw[-2] << 8 | raw[-1]
        return DecodeError(
            "bad_checksum",
            f"CRC field is 0x{sent:04X}, CRC-16/CCITT-FALSE of the frame is 0x{crc:04X}",
            raw=raw,
            offset=len(raw) - 2,
        )
    end = len(raw) - 2
    if raw[0] != VERSION:
        return DecodeError(
            "unsupported_version",
            f"protocol version {raw[0]}, this decoder reads 1",
            raw=raw,
            offset=0,
        )
    flags, id_len = raw[1], raw[2]
    if not 1 <= id_len <= MAX_ID_LEN:
        return DecodeError(
            "bad_header", f"device id length {id_len} is not 1..32", raw=raw, offset=2
        )
    if 3 + id_len + 9 > end:
        return DecodeError("truncated", "frame ends inside the header", raw=raw, offset=end)
    ident = raw[3 : 3 + id_len]
    name = _IDS.get(ident)
    if name is None:
        if not _SAFE_ID.fullmatch(ident):
            return DecodeError(
                "bad_header",
                f"device id {ident!r} has characters outside [A-Za-z0-9_.:-]",
                raw=raw,
                offset=3,
            )
        if len(_IDS) >= _IDS_MAX:
            _IDS.clear()
        name = _IDS[ident] = ident.decode("ascii")
    pos = 3 + id_len
    seq, stamp, count = _HEADER(raw, pos)
    pos += 9
    when = datetime.fromtimestamp(stamp, UTC) if flags & FLAG_TIME_VALID else None
    dev = device_id or name
    out: list[Measurement] = []
    for index in range(count):
        if pos + 2 > end:
            return DecodeError(
                "truncated", f"record {index} of {count} is missing", raw=raw, offset=pos
            )
        decoder = _DECODE.get(raw[pos])
        if decoder is None:
            return DecodeError(
                "unknown_type",
                f"record type 0x{raw[pos]:02X} is not defined in v1",
                raw=raw,
                offset=pos,
            )
        rt, unpack, size, unit = decoder
        if pos + 2 + size > end:
            return DecodeError(
                "truncated", f"{rt.quantity.value} record is cut off", raw=raw, offset=pos
            )
        # the value is already in the canonical unit: no conversion, no metadata
        out.append(
            Measurement(
                dev,
                rt.quantity,
                unpack(raw, pos + 2)[0] / rt.divisor,
                unit,
                seq,
                when,
                raw[pos + 1] or None,
            )
        )
        pos += 2 + size
    if pos != end:
        return DecodeError(
            "bad_length",
            f"{end - pos} bytes after the last of {count} records",
            raw=raw,
            offset=pos,
        )
    return Decoded(tuple(out), raw=raw)


def decode_encoded(block: bytes, device_id: str | None = None) -> DecodeResult:
    """Decode one COBS block as read from the wire (without or with its 0x00 delimiter)."""
    block = bytes(block)
    if block.endswith(b"\x00"):
        block = block[:-1]
    if b"\x00" in block:
        return DecodeError(
            "bad_cobs",
            "0x00 inside an encoded frame; pass one frame",
            raw=block,
            offset=block.index(0),
        )
    return _decode_block(block, device_id)


def _decode_block(block: bytes, device_id: str | None) -> DecodeResult:
    """A COBS block known to hold no 0x00 (split off the stream at one)."""
    try:
        frame = cobs_decode(block)
    except CobsError as exc:
        return DecodeError("bad_cobs", str(exc), raw=block, offset=exc.offset)
    return _decode_frame(frame, device_id)


class FramedDecoder(StreamDecoder):
    """Stream decoder of COBS frames delimited by 0x00."""

    name = "framed"
    max_buffer = MAX_ENCODED

    def __init__(self, *, device_id: str | None = None) -> None:
        super().__init__(device_id=device_id)
        self._discarding = False

    def _drain(self, results: list[DecodeResult]) -> None:
        buf = self._buffer
        while True:
            end = buf.find(0)
            if end < 0:
                if len(buf) > MAX_ENCODED:
                    if not self._discarding:
                        results.append(
                            DecodeError(
                                "oversize",
                                f"no 0x00 within {MAX_ENCODED} bytes",
                                raw=bytes(buf[:64]),
                                offset=MAX_ENCODED,
                            )
                        )
                    self._discarding = True
                    self._skip(len(buf))
                return
            block = bytes(buf[:end])
            del buf[: end + 1]
            if self._discarding:
                self._discarding = False
                self.counters["garbage_bytes"] += len(block)
                continue
            if len(block) > MAX_ENCODED:
                results.append(
                    DecodeError(
                        "oversize",
                        f"encoded frame of {len(block)} bytes, the limit is {MAX_ENCODED}",
                        raw=block[:64],
                        offset=MAX_ENCODED,
                    )
                )
            elif block:
                results.append(_decode_block(block, self.device_id))
