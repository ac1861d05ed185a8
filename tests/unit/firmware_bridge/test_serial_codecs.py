"""Stream behaviour of the serial decoders, the checksums, and the MicroPython sender."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from climastream.quantities import Quantity
from firmware_bridge.checksums import (
    CobsError,
    _cobs_decode_general,
    cobs_decode,
    cobs_encode,
    cobs_encoded_offset,
    crc16_ccitt_false,
    nmea_checksum,
)
from firmware_bridge.codecs import decode_payload
from firmware_bridge.firmware import climastream_node as node
from firmware_bridge.model import Decoded, DecodeError, DecodeResult
from firmware_bridge.serial_codecs import (
    FramedDecoder,
    Pms5003Decoder,
    Sds011Decoder,
    TextLineDecoder,
)
from firmware_bridge.serial_codecs.framed import RECORD_TYPES, EncodeError, encode_frame
from firmware_bridge.serial_codecs.sds011 import encode_sds011
from firmware_bridge.serial_codecs.textline import MAX_LINE, decode_line, encode_line

TESTDATA = Path(__file__).resolve().parents[3] / "testdata"
SDS = bytes.fromhex("AA C0 D4 00 F4 01 A1 60 CA AB")  # 21.2 / 50.0 ug/m3, id A160


def test_crc16_ccitt_false_catalogue_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert node.crc16(b"123456789") == 0x29B1


def test_crc16_agrees_with_the_firmwares_bitwise_version() -> None:
    rng = random.Random(16)
    for length in range(0, 300, 7):
        data = rng.randbytes(length)
        assert crc16_ccitt_false(data) == node.crc16(data), data.hex()


def test_nmea_checksum_of_the_reference_gga_sentence() -> None:
    body = b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert nmea_checksum(body) == 0x47


@pytest.mark.parametrize(
    ("plain", "encoded"),
    [  # examples from the COBS paper / Wikipedia table
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
    ],
)
def test_cobs_matches_reference_examples(plain: bytes, encoded: bytes) -> None:
    assert cobs_encode(plain) == encoded
    assert node.cobs_encode(plain) == encoded
    assert cobs_decode(encoded) == plain


def _cobs_outcome(decode: object, block: bytes) -> tuple[object, ...]:
    try:
        return ("ok", decode(block))  # type: ignore[operator]
    except CobsError as exc:
        return ("error", exc.offset, str(exc))


_runs = st.lists(st.one_of(st.binary(max_size=300), st.just(bytes(range(1, 255)))), max_size=4).map(
    b"\x00".join
)


@given(data=_runs, flips=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=3))
def test_cobs_fast_path_agrees_with_the_general_loop(
    data: bytes, flips: list[tuple[int, int]]
) -> None:
    """The in-place fast path decodes and fails exactly like the run-by-run loop."""
    block = bytearray(cobs_encode(data))
    assert cobs_decode(bytes(block)) == data
    for at, value in flips:  # corrupt it: codes past the end, zeros inside, 0xFF codes
        if block:
            block[at % len(block)] = value
    assert _cobs_outcome(cobs_decode, bytes(block)) == _cobs_outcome(
        _cobs_decode_general, bytes(block)
    )


def test_sds011_one_byte_at_a_time_with_garbage_and_counters() -> None:
    decoder = Sds011Decoder()
    corrupted = bytearray(SDS)
    corrupted[3] ^= 0x01
    stream = b"\x01\x02" + SDS + bytes(corrupted) + SDS + b"\xaa\xc5" + bytes(6) + b"\xcb\xab"[:0]
    results = [r for byte in stream for r in decoder.feed(bytes([byte]))]
    ok = [r for r in results if isinstance(r, Decoded)]
    assert [[m.value for m in r.measurements] for r in ok] == [[21.2, 50.0], [21.2, 50.0]]
    assert [r.reason for r in results if isinstance(r, DecodeError)] == ["bad_checksum"]
    assert decoder.counters["frames_ok"] == 2
    assert decoder.counters["bad_checksum"] == 1
    # 2 leading + the 9 bytes of the bad frame after its header byte
    assert decoder.counters["garbage_bytes"] == 2 + 9
    assert decoder.buffered == 8  # the incomplete command reply waits for more bytes


def test_sds011_command_reply_is_counted_not_reported() -> None:
    reply = bytearray(b"\xaa\xc5\x07\x01\x00\x00\xa1\x60\x00\xab")
    reply[8] = sum(reply[2:8]) & 0xFF
    decoder = Sds011Decoder()
    assert decoder.feed(bytes(reply) + SDS)[0].measurements[0].value == 21.2  # type: ignore[union-attr]
    assert decoder.counters["command_replies"] == 1


def test_pms5003_bad_length_field_resyncs_to_next_frame() -> None:
    real = bytes.fromhex("424D001C00050009000C00050008000B04B0015E003C00080002000100000237")
    decoder = Pms5003Decoder(device_id="pms-a")
    results = decoder.feed(b"BM\x00\x99" + real)
    assert [r.reason for r in results if isinstance(r, DecodeError)] == ["bad_length"]
    decoded = [r for r in results if isinstance(r, Decoded)]
    assert len(decoded) == 1
    assert decoded[0].measurements[1].quantity is Quantity.PM2_5
    assert decoded[0].measurements[1].value == 8
    assert decoded[0].measurements[1].device_id == "pms-a"


def test_textline_rejects_missing_checksum_and_overlong_line() -> None:
    decoder = TextLineDecoder()
    results = decoder.feed(b"$t=21.5\n$" + b"x" * 600)
    assert [r.reason for r in results if isinstance(r, DecodeError)] == [
        "missing_checksum",
        "line_too_long",
    ]
    assert decoder.buffered == 0 or decoder.buffered < 600


def test_framed_idle_delimiters_oversize_and_unknown_type() -> None:
    frame = encode_frame("n1", 5, None, [(Quantity.CO2, 612, 0)])
    decoder = FramedDecoder()
    results = decoder.feed(b"\x00\x00" + frame + b"\x01" * 1100 + b"\x00" + frame)
    assert [type(r).__name__ for r in results] == ["Decoded", "DecodeError", "Decoded"]
    assert isinstance(results[1], DecodeError)
    assert results[1].reason == "oversize"
    assert results[0].measurements[0].value == 612  # type: ignore[union-attr]
    assert results[0].measurements[0].time is None  # type: ignore[union-attr]
    # a record type the v1 table does not define: rebuild the frame with type 0x7F
    body = bytearray(cobs_decode(frame[:-1]))
    body[12 + 2] = 0x7F
    body[-2:] = crc16_ccitt_false(bytes(body[:-2])).to_bytes(2, "big")
    (error,) = FramedDecoder().feed(cobs_encode(bytes(body)) + b"\x00")
    assert isinstance(error, DecodeError)
    assert (error.reason, error.offset) == ("unknown_type", 14)


def test_framed_encoder_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(EncodeError):
        encode_frame("n1", 0, None, [(Quantity.TEMPERATURE, 400.0, 0)])
    with pytest.raises(EncodeError):
        encode_frame("bad id", 0, None, [])
    with pytest.raises(ValueError, match="out of range"):
        node.encode_frame("n1", 0, [("temperature", 400.0, 0)])


def test_micropython_sender_matches_golden_vectors() -> None:
    cases = [p for p in (TESTDATA / "framed").iterdir() if (p / "meta.json").exists()]
    assert cases
    for case in cases:
        spec = json.loads((case / "meta.json").read_text())["encode"]
        expected = bytes.fromhex((case / "input.hex").read_text())
        records = [tuple(r) for r in spec["records"]]
        assert (
            node.encode_frame(spec["device_id"], spec["seq"], records, spec["unix_time"])
            == expected
        )
        when = datetime.fromtimestamp(spec["unix_time"], UTC)
        typed = [(Quantity(name), value, channel) for name, value, channel in records]
        assert encode_frame(spec["device_id"], spec["seq"], when, typed) == expected


def test_micropython_table_matches_decoder_table() -> None:
    firmware = {name: spec for name, spec in node.RECORD_TYPES.items()}
    gateway = {rt.quantity.value: (rt.type_id, rt.fmt, rt.divisor) for rt in RECORD_TYPES.values()}
    assert firmware == gateway


def test_micropython_node_numbers_frames() -> None:
    written: list[bytes] = []
    sender = node.Node("n2", written.append, seq=2**32 - 1)
    assert sender.send([("pm2_5", 12.3, 0)]) == 2**32 - 1
    assert sender.send([("pm2_5", 12.4, 0)]) == 0
    results = FramedDecoder().feed(b"".join(written))
    assert [(r.measurements[0].seq, r.measurements[0].value) for r in results] == [  # type: ignore[union-attr]
        (2**32 - 1, 12.3),
        (0, 12.4),
    ]


def test_sds011_encoder_rounds_to_datasheet_resolution() -> None:
    assert encode_sds011(21.2, 50.0, 0xA160) == SDS


def test_framed_device_id_with_a_trailing_newline_is_a_bad_header() -> None:
    """A regex "$" matches before a final newline; the id check must not let one through."""
    import struct

    from firmware_bridge.serial_codecs.framed import decode_frame

    body = struct.pack(">BBB", 1, 0, 5) + b"node\n" + struct.pack(">IIB", 7, 0, 0)
    frame = body + struct.pack(">H", crc16_ccitt_false(body))
    result = decode_frame(frame)
    assert isinstance(result, DecodeError)
    assert (result.reason, result.offset) == ("bad_header", 3)
    with pytest.raises(EncodeError):
        encode_frame("node\n", 7, None, [])


def test_framed_error_offset_and_raw_refer_to_the_input_given() -> None:
    good = encode_frame("n1", 1, None, [(Quantity.TEMPERATURE, 21.5, 0)])
    bad = bytearray(encode_frame("n1", 2, None, [(Quantity.TEMPERATURE, 21.5, 0)]))
    bad[-3] ^= 0x01  # the CRC's first byte (then its second, then the 0x00 delimiter)
    payload = good + good + bytes(bad)
    *decoded, error = decode_payload("framed", payload)
    assert all(isinstance(r, Decoded) for r in decoded)
    assert isinstance(error, DecodeError)
    # was "at byte 18" with the decoded frame as raw: the CRC's place in the decoded frame
    assert (error.reason, error.offset) == ("bad_checksum", len(payload) - 3)
    assert error.raw == bytes(bad[:-1])  # the COBS block as given, not the decoded frame
    assert "at byte 63" in str(error)


def test_framed_error_offset_points_at_the_bad_byte_of_the_input() -> None:
    frame = encode_frame("n1", 5, None, [(Quantity.CO2, 612, 0)])
    body = bytearray(cobs_decode(frame[:-1]))
    body[12 + 2] = 0x7F  # a record type v1 does not define
    body[-2:] = crc16_ccitt_false(bytes(body[:-2])).to_bytes(2, "big")
    payload = b"\x00" + frame + cobs_encode(bytes(body)) + b"\x00"
    decoded, error = decode_payload("framed", payload)
    assert isinstance(decoded, Decoded)
    assert isinstance(error, DecodeError)
    assert error.reason == "unknown_type"
    assert error.offset is not None
    assert payload[error.offset] == 0x7F


@given(st.binary(max_size=600))
def test_cobs_encoded_offset_maps_each_decoded_byte_to_its_place(data: bytes) -> None:
    block = cobs_encode(data)
    places = [cobs_encoded_offset(block, i) for i in range(len(data))]
    assert places == sorted(set(places))  # one place per byte, in order
    assert all(block[p] == b for p, b in zip(places, data, strict=True) if b)
    assert cobs_encoded_offset(block, len(data)) == len(block)


def _outcome(results: list[DecodeResult]) -> list[object]:
    return [r.to_json() if isinstance(r, DecodeError) else r for r in results]


@settings(max_examples=200, deadline=None)
@given(keys=st.integers(60, 110), data=st.data())
def test_textline_verdict_does_not_depend_on_read_boundaries(
    keys: int, data: st.DataObject
) -> None:
    # lines from ~420 to ~900 bytes, across MAX_LINE; a short line follows each
    line = encode_line({"id": "n7", "seq": 1, "t": 21.5, **{f"x{i}": i for i in range(keys)}})
    stream = line + encode_line({"id": "n7", "seq": 2, "t": 21.6})
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    whole = TextLineDecoder()
    expected = _outcome(whole.feed(stream))
    split = TextLineDecoder()
    got: list[DecodeResult] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += split.feed(stream[start:stop])
    assert _outcome(got) == expected
    assert split.counters == whole.counters
    too_long = line.index(b"\n") > MAX_LINE
    assert [type(r).__name__ for r in got] == (
        ["DecodeError", "Decoded"] if too_long else ["Decoded", "Decoded"]
    )


@pytest.mark.parametrize(
    ("when", "channel", "message"),
    [
        (datetime(1969, 12, 31, tzinfo=UTC), 0, "is outside uint32 Unix seconds"),
        (datetime(2106, 2, 8, tzinfo=UTC), 0, "is outside uint32 Unix seconds"),
        (None, 256, "temperature channel 256 is not a byte"),
        (None, -1, "temperature channel -1 is not a byte"),
    ],
)
def test_framed_encoder_names_what_does_not_fit(
    when: datetime | None, channel: int, message: str
) -> None:
    with pytest.raises(EncodeError, match=message):
        encode_frame("n1", 0, when, [(Quantity.TEMPERATURE, 21.5, channel)])


def test_textline_device_id_with_a_trailing_newline_is_refused() -> None:
    body = b"id=n7\n,t=1"
    line = b"$" + body + b"*%02X\r\n" % nmea_checksum(body)
    result = decode_line(line)
    assert isinstance(result, DecodeError)
    assert (result.reason, result.offset) == ("bad_field", 4)
