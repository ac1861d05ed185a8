"""Nova Fitness SDS011 laser PM sensor (datasheet V1.3).

A data frame is 10 bytes at 9600 8N1, one per second in active mode::

    AA C0 PM25_lo PM25_hi PM10_lo PM10_hi ID1 ID2 CHK AB

PM values are little-endian in units of 0.1 µg/m³; ``CHK`` is the sum of the six bytes
after ``C0`` modulo 256. Replies to commands (``AA C5 ...``) carry the same checksum and
are counted as ``command_replies`` but yield no measurement. The device id is rendered as
four upper-case hex digits, ID1 first (``A1 60`` -> ``"A160"``), unless the decoder was
given a ``device_id`` to use instead.
"""

from __future__ import annotations

from climastream.quantities import Quantity
from firmware_bridge.model import Decoded, DecodeError, DecodeResult, measurement
from firmware_bridge.serial_codecs.base import StreamDecoder

HEAD = 0xAA
TAIL = 0xAB
CMD_DATA = 0xC0
CMD_REPLY = 0xC5
FRAME_LEN = 10


def sds011_checksum(frame: bytes) -> int:
    """Sum of bytes 2..7 (the six bytes after the command byte) modulo 256."""
    return sum(frame[2:8]) & 0xFF


def encode_sds011(pm2_5: float, pm10: float, device_id: int = 0xA160) -> bytes:
    """A data frame as the sensor sends it; values in µg/m³, rounded to 0.1 and clamped."""
    pm25_raw = max(0, min(0xFFFF, round(pm2_5 * 10)))
    pm10_raw = max(0, min(0xFFFF, round(pm10 * 10)))
    body = bytes(
        [
            HEAD,
            CMD_DATA,
            pm25_raw & 0xFF,
            pm25_raw >> 8,
            pm10_raw & 0xFF,
            pm10_raw >> 8,
            (device_id >> 8) & 0xFF,
            device_id & 0xFF,
        ]
    )
    return body + bytes([sds011_checksum(body), TAIL])


def decode_sds011_frame(frame: bytes, device_id: str | None = None) -> DecodeResult:
    """Decode exactly one 10-byte frame."""
    if len(frame) != FRAME_LEN:
        return DecodeError(
            "truncated" if len(frame) < FRAME_LEN else "bad_length",
            f"an SDS011 frame is {FRAME_LEN} bytes, got {len(frame)}",
            raw=frame,
            offset=min(len(frame), FRAME_LEN),
        )
    if frame[0] != HEAD:
        return DecodeError(
            "bad_header", f"expected 0xAA, got 0x{frame[0]:02X}", raw=frame, offset=0
        )
    if frame[1] not in (CMD_DATA, CMD_REPLY):
        return DecodeError(
            "bad_header",
            f"expected command 0xC0 or 0xC5, got 0x{frame[1]:02X}",
            raw=frame,
            offset=1,
        )
    if frame[9] != TAIL:
        return DecodeError("bad_tail", f"expected 0xAB, got 0x{frame[9]:02X}", raw=frame, offset=9)
    expected = sds011_checksum(frame)
    if frame[8] != expected:
        return DecodeError(
            "bad_checksum",
            f"checksum byte is 0x{frame[8]:02X}, the data bytes sum to 0x{expected:02X}",
            raw=frame,
            offset=8,
        )
    if frame[1] == CMD_REPLY:
        return Decoded((), raw=bytes(frame), unmapped=("command_reply",))
    dev = device_id or f"{frame[6]:02X}{frame[7]:02X}"
    pm25 = (frame[2] | frame[3] << 8) / 10
    pm10 = (frame[4] | frame[5] << 8) / 10
    return Decoded(
        (
            measurement(Quantity.PM2_5, pm25, device_id=dev),
            measurement(Quantity.PM10, pm10, device_id=dev),
        ),
        raw=bytes(frame),
    )


class Sds011Decoder(StreamDecoder):
    """Stream decoder for SDS011 data frames; see the module docstring for the format."""

    name = "sds011"

    def _drain(self, results: list[DecodeResult]) -> None:
        buf = self._buffer
        while True:
            start = buf.find(HEAD)
            if start < 0:
                self._skip(len(buf))
                return
            self._skip(start)
            if len(buf) < 2:
                return
            if buf[1] not in (CMD_DATA, CMD_REPLY):
                self._skip(1)
                continue
            if len(buf) < FRAME_LEN:
                return
            result = decode_sds011_frame(bytes(buf[:FRAME_LEN]), self.device_id)
            if isinstance(result, DecodeError):
                # Drop only the header byte: a real frame may begin inside this one.
                del buf[:1]
                results.append(result)
                continue
            del buf[:FRAME_LEN]
            if result.measurements:
                results.append(result)
            else:
                self._count("command_replies")
