"""Checksums and framing primitives shared by the serial codecs and the simulators."""

from __future__ import annotations

import binascii


def crc16_ccitt_false(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0.

    The catalogue check value is ``crc16_ccitt_false(b"123456789") == 0x29B1``. This is
    exactly what :func:`binascii.crc_hqx` computes (in C: ~50x faster than a table loop in
    Python, which mattered on the gateway's hot path); the reference node firmware's
    bitwise MicroPython version is held to it by a differential test.
    """
    return binascii.crc_hqx(data, crc)


def nmea_checksum(body: bytes) -> int:
    """XOR of every byte, as NMEA 0183 computes it between ``$`` and ``*``."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00 (the delimiter is not added)."""
    out = bytearray()
    code_index = 0
    out.append(0)
    code = 1
    for byte in data:
        if byte == 0:
            out[code_index] = code
            code_index = len(out)
            out.append(0)
            code = 1
            continue
        out.append(byte)
        code += 1
        if code == 0xFF:
            out[code_index] = code
            code_index = len(out)
            out.append(0)
            code = 1
    out[code_index] = code
    return bytes(out)


class CobsError(ValueError):
    """A COBS block that cannot have come from :func:`cobs_encode`; ``offset`` is the bad byte."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def cobs_decode(block: bytes) -> bytes:
    """Invert :func:`cobs_encode` for one block without its delimiter.

    Raises :class:`CobsError` for a 0x00 inside the block or a code byte pointing past its end.

    Fast path (every block shorter than 254 bytes, i.e. every climastream frame): each code
    byte after the first stands exactly where the decoded data has a zero, so the block is
    copied once and those bytes overwritten, instead of slicing and joining each run. A
    0xFF code (a run of 254 non-zero bytes, which adds no zero) and every malformed block
    take the general loop, which finds the first error in walking order.
    """
    length = len(block)
    if not length or 0 in block:
        return _cobs_decode_general(block)  # raises with the exact offset, or b""
    out = bytearray(block)
    index = block[0]
    if index < 0xFF:
        while index < length:
            code = block[index]
            if code == 0xFF:
                break
            out[index] = 0
            index += code
        else:
            if index == length:
                del out[0]
                return bytes(out)
    return _cobs_decode_general(block)


def cobs_encoded_offset(block: bytes, offset: int) -> int:
    """Where byte ``offset`` of ``cobs_decode(block)`` stands in ``block``.

    A data byte maps to itself; a decoded zero to the code byte that encodes it; an offset
    at (or past) the end of the decoded data to the end of the block.
    """
    index = decoded = 0
    length = len(block)
    while index < length:
        code = block[index]
        if code == 0:
            break  # not a valid block: no better answer than the end
        if offset < decoded + code - 1:
            return index + 1 + (offset - decoded)
        decoded += code - 1
        index += code
        if code < 0xFF and index < length:
            if offset == decoded:
                return index
            decoded += 1
    return length


def _cobs_decode_general(block: bytes) -> bytes:
    out = bytearray()
    index = 0
    length = len(block)
    while index < length:
        code = block[index]
        if code == 0:
            raise CobsError("zero byte inside a COBS block", index)
        end = index + code
        if end > length:
            raise CobsError(
                f"COBS code {code} at byte {index} runs past the end of the {length}-byte block",
                index,
            )
        chunk = block[index + 1 : end]
        if 0 in chunk:
            raise CobsError("zero byte inside a COBS block", index + 1 + chunk.index(0))
        out += chunk
        index = end
        if code < 0xFF and index < length:
            out.append(0)
    return bytes(out)
