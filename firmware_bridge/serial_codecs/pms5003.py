"""Plantower PMS5003 / PMS7003 laser PM sensors (datasheet V2.3 / V2.5).

A frame is 32 bytes, all fields big-endian::

    42 4D | frame length = 28 | 13 data words | checksum

Data words, in order: PM1.0, PM2.5, PM10 at "CF=1" (standard particle, factory
calibration), PM1.0, PM2.5, PM10 under "atmospheric environment" (µg/m³), then particle
counts beyond 0.3, 0.5, 1.0, 2.5, 5.0 and 10 µm per 0.1 L of air, then a reserved word.
The checksum is the 16-bit sum of the 30 preceding bytes.

Mapping: the *atmospheric* values are the ambient concentration a city wants, so they
become the ``pm1``/``pm2_5``/``pm10`` measurements; each of them carries its CF=1
counterpart in ``metadata['cf1']``. With ``cf1_channel=True`` the CF=1 values are also
emitted as separate measurements on channel ``"cf1"`` (atmospheric ones then get channel
``"atm"``) for deployments that calibrate against CF=1. The six particle counts become
``particles_*`` measurements in ``/dL`` (per 0.1 L). The PMS7003 uses the same frame.
The sensor has no device id: the gateway names it (``device_id``).
"""

from __future__ import annotations

import struct

from climastream.quantities import Quantity
from firmware_bridge.model import Decoded, DecodeError, DecodeResult, Measurement, measurement
from firmware_bridge.serial_codecs.base import StreamDecoder

HEAD = b"BM"
FRAME_LEN = 32
DATA_LEN = 28
_WORDS = struct.Struct(">2sH13HH")

_PM = (Quantity.PM1, Quantity.PM2_5, Quantity.PM10)
_COUNTS = (
    Quantity.PARTICLES_0_3,
    Quantity.PARTICLES_0_5,
    Quantity.PARTICLES_1_0,
    Quantity.PARTICLES_2_5,
    Quantity.PARTICLES_5_0,
    Quantity.PARTICLES_10,
)


def pms_checksum(frame: bytes) -> int:
    """16-bit sum of the first 30 bytes."""
    return sum(frame[:30]) & 0xFFFF


def encode_pms5003(
    cf1: tuple[int, int, int],
    atmospheric: tuple[int, int, int],
    counts: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0),
    reserved: int = 0,
) -> bytes:
    """A frame as the sensor sends it; all values are integers as on the wire."""
    body = struct.pack(">2sH13H", HEAD, DATA_LEN, *cf1, *atmospheric, *counts, reserved)
    return body + struct.pack(">H", pms_checksum(body))


def decode_pms5003_frame(
    frame: bytes, device_id: str | None = None, *, cf1_channel: bool = False
) -> DecodeResult:
    """Decode exactly one 32-byte frame."""
    if len(frame) < FRAME_LEN:
        return DecodeError(
            "truncated",
            f"a PMS5003 frame is 32 bytes, got {len(frame)}",
            raw=frame,
            offset=len(frame),
        )
    if len(frame) > FRAME_LEN:
        return DecodeError(
            "bad_length", f"a PMS5003 frame is 32 bytes, got {len(frame)}", raw=frame, offset=32
        )
    head, length, *words, checksum = _WORDS.unpack(frame)
    if head != HEAD:
        return DecodeError(
            "bad_header", f"expected 42 4D, got {head.hex(' ')}", raw=frame, offset=0
        )
    if length != DATA_LEN:
        return DecodeError(
            "bad_length",
            f"frame length field is {length}, a PMS5003/7003 frame has 28",
            raw=frame,
            offset=2,
        )
    expected = pms_checksum(frame)
    if checksum != expected:
        return DecodeError(
            "bad_checksum",
            f"checksum field is 0x{checksum:04X}, the first 30 bytes sum to 0x{expected:04X}",
            raw=frame,
            offset=30,
        )
    out: list[Measurement] = []
    atm_channel = "atm" if cf1_channel else None
    for index, quantity in enumerate(_PM):
        cf1, atm = float(words[index]), float(words[index + 3])
        out.append(
            measurement(
                quantity, atm, device_id=device_id, channel=atm_channel, metadata={"cf1": cf1}
            )
        )
        if cf1_channel:
            out.append(measurement(quantity, cf1, device_id=device_id, channel="cf1"))
    for index, quantity in enumerate(_COUNTS):
        out.append(measurement(quantity, float(words[6 + index]), device_id=device_id))
    return Decoded(tuple(out), raw=bytes(frame))


class Pms5003Decoder(StreamDecoder):
    """Stream decoder for PMS5003/PMS7003 frames; see the module docstring for the mapping."""

    name = "pms5003"

    def __init__(self, *, device_id: str | None = None, cf1_channel: bool = False) -> None:
        super().__init__(device_id=device_id)
        self.cf1_channel = cf1_channel

    def _drain(self, results: list[DecodeResult]) -> None:
        buf = self._buffer
        while True:
            start = buf.find(HEAD)
            if start < 0:
                # Keep a trailing 0x42: it may be the first half of the next header.
                keep = 1 if buf.endswith(b"B") else 0
                self._skip(len(buf) - keep)
                return
            self._skip(start)
            if len(buf) < 4:
                return
            if (buf[2] << 8 | buf[3]) != DATA_LEN:
                results.append(
                    DecodeError(
                        "bad_length",
                        f"frame length field is {buf[2] << 8 | buf[3]}, expected 28",
                        raw=bytes(buf[:4]),
                        offset=2,
                    )
                )
                del buf[:1]
                continue
            if len(buf) < FRAME_LEN:
                return
            result = decode_pms5003_frame(
                bytes(buf[:FRAME_LEN]), self.device_id, cf1_channel=self.cf1_channel
            )
            # After a bad frame drop only the header byte: a real frame may begin inside it.
            del buf[: 1 if isinstance(result, DecodeError) else FRAME_LEN]
            results.append(result)
