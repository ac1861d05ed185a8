"""climastream framed-protocol sender for MicroPython nodes (ESP32, RP2040).

Copy this file to the board as ``climastream_node.py``. It uses only ``struct`` (present in
every MicroPython port) and runs unchanged under CPython, where the gateway's tests check
its bytes against the golden vectors in ``testdata/framed/``. The protocol is specified in
``firmware_bridge/FRAMED_PROTOCOL.md``.

Usage on an ESP32::

    from machine import UART
    import time, climastream_node as cn
    uart = UART(1, baudrate=115200, tx=17, rx=16)
    node = cn.Node("n1", uart.write)
    while True:
        node.send([("temperature", read_temp(), 0), ("relative_humidity", read_rh(), 0)],
                  unix_time=None)   # pass seconds once the clock is set (NTP/GNSS)
        time.sleep(10)
"""

import struct

VERSION = 1
FLAG_TIME_VALID = 0x01

# quantity wire name -> (type id, struct format, divisor); must match the decoder's table
RECORD_TYPES = {
    "temperature": (0x01, "h", 100),
    "relative_humidity": (0x02, "H", 100),
    "pressure": (0x03, "I", 100),
    "pm1": (0x04, "H", 10),
    "pm2_5": (0x05, "H", 10),
    "pm10": (0x06, "H", 10),
    "no2": (0x07, "H", 10),
    "o3": (0x08, "H", 10),
    "so2": (0x09, "H", 10),
    "co": (0x0A, "H", 1000),
    "co2": (0x0B, "H", 1),
    "wind_speed": (0x0C, "H", 100),
    "wind_gust": (0x0D, "H", 100),
    "wind_direction": (0x0E, "H", 10),
    "precipitation": (0x0F, "H", 10),
    "solar_radiation": (0x10, "H", 10),
    "uv_index": (0x11, "H", 100),
    "illuminance": (0x12, "I", 100),
    "noise_laeq": (0x13, "H", 100),
    "battery_voltage": (0x14, "H", 1000),
    "dew_point": (0x15, "h", 100),
}

_LIMITS = {"h": (-32768, 32767), "H": (0, 65535), "I": (0, 4294967295)}


def crc16(data):
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); crc16(b"123456789") == 0x29B1."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            if crc & 0x8000:
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF
            else:
                crc = (crc << 1) & 0xFFFF
    return crc


def cobs_encode(data):
    """COBS-encode ``data``; the result has no 0x00 and no delimiter."""
    out = bytearray(b"\x00")
    code_index = 0
    code = 1
    for byte in data:
        if byte == 0:
            out[code_index] = code
            code_index = len(out)
            out.append(0)
            code = 1
        else:
            out.append(byte)
            code += 1
            if code == 0xFF:
                out[code_index] = code
                code_index = len(out)
                out.append(0)
                code = 1
    out[code_index] = code
    return bytes(out)


def _round(x):
    # round half away from zero would differ from CPython's round(); use the same rule as
    # the gateway encoder (banker's rounding) so both produce identical bytes
    return int(round(x))


def encode_frame(device_id, seq, records, unix_time=None):
    """Return the wire bytes of one frame, delimiter included.

    ``records`` is a list of (quantity name, value, channel). Raises ValueError for an
    unknown quantity, a value out of range or a bad device id, so a broken sensor reading
    is never sent as a wrong number.
    """
    ident = device_id.encode()
    if not 1 <= len(ident) <= 32:
        raise ValueError("device id must be 1..32 bytes")
    for i, c in enumerate(ident):
        ok = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)
        if not ok and (i == 0 or c not in b"_.:-"):
            raise ValueError("device id has a character outside [A-Za-z0-9_.:-]")
    if len(records) > 255:
        raise ValueError("at most 255 records")
    flags = FLAG_TIME_VALID if unix_time is not None else 0
    body = bytearray(struct.pack(">BBB", VERSION, flags, len(ident)))
    body.extend(ident)
    body.extend(struct.pack(">IIB", seq & 0xFFFFFFFF, int(unix_time or 0), len(records)))
    for name, value, channel in records:
        spec = RECORD_TYPES.get(name)
        if spec is None:
            raise ValueError("unknown quantity " + name)
        type_id, fmt, divisor = spec
        raw = _round(value * divisor)
        low, high = _LIMITS[fmt]
        if not low <= raw <= high or not 0 <= channel <= 255:
            raise ValueError("value out of range for " + name)
        body.extend(struct.pack(">BB" + fmt, type_id, channel, raw))
    body.extend(struct.pack(">H", crc16(body)))
    return cobs_encode(body) + b"\x00"


class Node:
    """A sensor node: numbers its frames and writes them with ``write`` (e.g. ``uart.write``)."""

    def __init__(self, device_id, write, seq=0):
        self.device_id = device_id
        self.write = write
        self.seq = seq

    def send(self, records, unix_time=None):
        """Encode and write one frame; return its sequence number."""
        frame = encode_frame(self.device_id, self.seq, records, unix_time)
        self.write(frame)
        sent = self.seq
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return sent
