"""A text line protocol for simple microcontroller nodes, checked like NMEA 0183.

One line per sample, ASCII, at most :data:`MAX_LINE` bytes before its ``\\n``; a longer
one is ``line_too_long``, whether it arrived in one read or in many::

    $id=node-7,seq=42,ts=1717236000,t=21.5,rh=48.2,pm25=7.1*3C\\r\\n

- ``$`` starts a line; ``*`` is followed by two hex digits, the XOR of every byte between
  ``$`` and ``*`` (exclusive); the line ends with ``\\n`` (a preceding ``\\r`` is allowed).
- The body is comma-separated ``key=value`` pairs. ``id`` (device id), ``seq`` (unsigned
  integer) and ``ts`` (Unix seconds, UTC) are reserved; every other key names a quantity
  through the key map: each :class:`~climastream.quantities.Quantity` wire name in its
  canonical unit, plus the aliases in :data:`DEFAULT_KEYS` (``t``, ``rh``, ``p``, ``pm25``,
  ``vbat`` ...). A node that reports e.g. Fahrenheit gets a key map entry
  ``{"tf": ("temperature", "degF")}``.
- Keys that map to no quantity are reported in ``Decoded.unmapped``, not dropped silently.
- A ``$`` inside a line rejects the whole line (``truncated``) instead of restarting there:
  a single flipped bit can turn ``,`` into ``$``, and the XOR checksum of the remaining tail
  then matches with probability 1/256. A node should print ``\r\n`` once at boot so a
  line cut off by a reset does not also take the first line after it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from climastream.contract import SAFE_ID_PATTERN
from climastream.quantities import CANONICAL_UNITS, Quantity, UnitError
from firmware_bridge.checksums import nmea_checksum
from firmware_bridge.model import (
    Decoded,
    DecodeError,
    DecodeResult,
    Measurement,
    measurement,
    unit_error,
)
from firmware_bridge.serial_codecs.base import StreamDecoder

MAX_LINE = 512
#: the contract's identifier rule, so a node id that decodes here is accepted downstream
_SAFE_ID = re.compile(SAFE_ID_PATTERN)

#: key -> (quantity, unit the node sends)
KeyMap = Mapping[str, tuple[Quantity, str]]

DEFAULT_KEYS: dict[str, tuple[Quantity, str]] = {
    **{q.value: (q, CANONICAL_UNITS[q]) for q in Quantity},
    "t": (Quantity.TEMPERATURE, "Cel"),
    "temp": (Quantity.TEMPERATURE, "Cel"),
    "rh": (Quantity.RELATIVE_HUMIDITY, "%RH"),
    "hum": (Quantity.RELATIVE_HUMIDITY, "%RH"),
    "p": (Quantity.PRESSURE, "hPa"),
    "pm25": (Quantity.PM2_5, "ug/m3"),
    "ws": (Quantity.WIND_SPEED, "m/s"),
    "wd": (Quantity.WIND_DIRECTION, "deg"),
    "lux": (Quantity.ILLUMINANCE, "lx"),
    "vbat": (Quantity.BATTERY_VOLTAGE, "V"),
    "batt": (Quantity.BATTERY_VOLTAGE, "V"),
}


def encode_line(pairs: Mapping[str, object]) -> bytes:
    """A checksummed line from ``key=value`` pairs (what a node's firmware prints)."""
    body = ",".join(f"{key}={value}" for key, value in pairs.items()).encode("ascii")
    return b"$" + body + f"*{nmea_checksum(body):02X}\r\n".encode("ascii")


def decode_line(
    line: bytes, keys: KeyMap = DEFAULT_KEYS, device_id: str | None = None
) -> DecodeResult:
    """Decode one line, with or without its line ending; see the module docstring."""
    raw = bytes(line)
    text = raw.rstrip(b"\r\n")
    if not text.startswith(b"$"):
        return DecodeError("bad_header", "a line must start with '$'", raw=raw, offset=0)
    star = text.rfind(b"*")
    if star < 0:
        return DecodeError(
            "missing_checksum", "no '*hh' checksum before the line end", raw=raw, offset=len(text)
        )
    digits = text[star + 1 :]
    if len(digits) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in digits):
        return DecodeError(
            "bad_checksum",
            f"'*' must be followed by two hex digits, got {digits!r}",
            raw=raw,
            offset=star + 1,
        )
    body = text[1:star]
    restart = body.find(b"$")
    if restart >= 0:
        # Not resynchronised on: one flipped bit turns ',' into '$', and with an XOR
        # checksum the tail after it can check out. A cut-off line costs the next one too.
        return DecodeError(
            "truncated",
            "a new '$' inside the line: it was cut off, and the rest cannot be trusted",
            raw=raw,
            offset=1 + restart,
        )
    expected = nmea_checksum(body)
    if int(digits, 16) != expected:
        return DecodeError(
            "bad_checksum",
            f"line says *{digits.decode()}, the bytes between '$' and '*' XOR to {expected:02X}",
            raw=raw,
            offset=star + 1,
        )
    try:
        body_text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        return DecodeError("bad_encoding", "line is not ASCII", raw=raw, offset=1 + exc.start)
    seq: int | None = None
    when: datetime | None = None
    dev = device_id
    values: list[tuple[str, float, int]] = []
    seen: set[str] = set()
    unmapped: list[str] = []
    position = 1
    for pair in body_text.split(",") if body_text else []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            return DecodeError("bad_field", f"{pair!r} is not key=value", raw=raw, offset=position)
        if key in seen:
            return DecodeError(
                "duplicate_key", f"key {key!r} appears twice", raw=raw, offset=position
            )
        seen.add(key)
        value_offset = position + len(key) + 1
        if key == "id":
            if not _SAFE_ID.fullmatch(value):  # .match: "$" would let "n7\n" through
                return DecodeError(
                    "bad_field",
                    f"device id {value!r} is not a safe identifier",
                    raw=raw,
                    offset=value_offset,
                )
            dev = device_id or value
        elif key in ("seq", "ts"):
            if not value.isdigit() or len(value) > 19:
                return DecodeError(
                    "bad_field",
                    f"{key} must be an unsigned integer, got {value!r}",
                    raw=raw,
                    offset=value_offset,
                )
            if key == "seq":
                seq = int(value)
            else:
                try:
                    when = datetime.fromtimestamp(int(value), UTC)
                except (OverflowError, OSError, ValueError):
                    return DecodeError(
                        "bad_field",
                        f"ts {value} is not a valid Unix time",
                        raw=raw,
                        offset=value_offset,
                    )
        elif key in keys:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                return DecodeError(
                    "bad_value",
                    f"{key} value {value!r} is not a finite number",
                    raw=raw,
                    offset=value_offset,
                )
            values.append((key, number, value_offset))
        else:
            unmapped.append(key)
        position += len(pair) + 1
    out: list[Measurement] = []
    for key, number, offset in values:
        quantity, unit = keys[key]
        try:
            out.append(
                measurement(quantity, number, unit, device_id=dev, seq=seq, time=when, field=key)
            )
        except UnitError as exc:
            return unit_error(exc, raw, offset)
        except DecodeError as exc:  # finite in its unit, not once converted
            return DecodeError(exc.reason, exc.message, raw=raw, offset=offset)
    return Decoded(tuple(out), raw=raw, unmapped=tuple(unmapped))


class TextLineDecoder(StreamDecoder):
    """Stream decoder for checksummed ``$key=value*hh`` lines."""

    name = "textline"

    def __init__(self, *, device_id: str | None = None, keys: KeyMap = DEFAULT_KEYS) -> None:
        super().__init__(device_id=device_id)
        self.keys = keys

    def _drain(self, results: list[DecodeResult]) -> None:
        buf = self._buffer
        while True:
            start = buf.find(b"$")
            if start < 0:
                self._skip(len(buf))
                return
            self._skip(start)
            # Only the first MAX_LINE + 1 bytes decide, so the verdict is the same whether
            # the line end is already buffered or still to come in a later read.
            end = buf.find(b"\n", 0, MAX_LINE + 1)
            if end < 0:
                if len(buf) > MAX_LINE:
                    results.append(
                        DecodeError(
                            "line_too_long",
                            f"no line end within {MAX_LINE} bytes",
                            raw=bytes(buf[:MAX_LINE]),
                            offset=MAX_LINE,
                        )
                    )
                    del buf[:1]
                    continue
                return
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            results.append(decode_line(line, self.keys, self.device_id))
