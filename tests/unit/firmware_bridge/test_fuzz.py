"""Property tests: no input makes a codec raise, and no corrupted frame passes as valid."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from climastream.quantities import Quantity
from firmware_bridge.codecs import CODECS, CodecOptions, decode_payload, stream_decoder
from firmware_bridge.lorawan.layout import builtin_layout
from firmware_bridge.model import Decoded, DecodeError
from firmware_bridge.mqtt.generic_json import mapping_from_dict
from firmware_bridge.serial_codecs.framed import encode_frame
from firmware_bridge.serial_codecs.pms5003 import encode_pms5003
from firmware_bridge.serial_codecs.sds011 import encode_sds011
from firmware_bridge.serial_codecs.textline import encode_line
from firmware_bridge.simulators.mqtt_json import STATION_MAPPING

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTIONS = CodecOptions(
    layout=builtin_layout("dragino-lht65"),
    mapping=mapping_from_dict(STATION_MAPPING),
    topic="city/a/stations/x/state",
)

u16 = st.integers(0, 0xFFFF)
sds_frames = st.builds(lambda a, b, i: encode_sds011(a / 10, b / 10, i), u16, u16, u16)
pms_frames = st.builds(
    lambda a, b, c: encode_pms5003(a, b, c),
    st.tuples(u16, u16, u16),
    st.tuples(u16, u16, u16),
    st.tuples(u16, u16, u16, u16, u16, u16),
)
framed_frames = st.builds(
    lambda dev, seq, t, h: encode_frame(
        dev,
        seq,
        datetime.fromtimestamp(1_700_000_000, UTC),
        [(Quantity.TEMPERATURE, t / 100, 0), (Quantity.RELATIVE_HUMIDITY, h / 100, 1)],
    ),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,31}", fullmatch=True),
    st.integers(0, 2**32 - 1),
    st.integers(-32768, 32767),
    u16,
)
text_frames = st.builds(
    lambda seq, t: encode_line({"id": "n1", "seq": seq, "t": t}),
    st.integers(0, 10**9),
    st.integers(-400, 600),
)


def _same_frame(result: Decoded, frame: bytes, codec: str) -> bool:
    if codec == "framed":
        reference = decode_payload("framed", frame)[0]
        return isinstance(reference, Decoded) and result.raw == reference.raw
    return result.raw == frame


FRAMES = {
    "sds011": sds_frames,
    "pms5003": pms_frames,
    "framed": framed_frames,
    "textline": text_frames,
}


@FAST
@given(codec=st.sampled_from(sorted(CODECS)), payload=st.binary(max_size=300))
def test_random_bytes_never_raise(codec: str, payload: bytes) -> None:
    for result in decode_payload(codec, payload, OPTIONS):
        assert isinstance(result, Decoded | DecodeError)
        if isinstance(result, DecodeError):
            assert result.reason != "internal_error", result


@FAST
@given(
    codec=st.sampled_from(["chirpstack", "tts", "senml", "annexb", "json"]),
    document=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "deviceInfo",
                        "devEui",
                        "data",
                        "fCnt",
                        "rxInfo",
                        "rssi",
                        "end_device_ids",
                        "uplink_message",
                        "dev_eui",
                        "frm_payload",
                        "f_cnt",
                        "rx_metadata",
                        "n",
                        "v",
                        "bn",
                        "bt",
                        "u",
                        "t",
                        "temperature",
                        "timeRecorded",
                        "tempF",
                        "air",
                        "pm25",
                    ]
                ),
                inner,
                max_size=6,
            )
        ),
        max_leaves=20,
    ),
)
def test_random_json_never_raises(codec: str, document: object) -> None:
    payload = json.dumps(document).encode()
    for result in decode_payload(codec, payload, OPTIONS):
        assert isinstance(result, Decoded | DecodeError)
        if isinstance(result, DecodeError):
            assert result.reason != "internal_error", result


@FAST
@given(codec=st.sampled_from(sorted(FRAMES)), data=st.data())
def test_valid_frames_decode_through_any_read_split(codec: str, data: st.DataObject) -> None:
    frames = data.draw(st.lists(FRAMES[codec], min_size=1, max_size=4))
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = stream_decoder(codec)
    results = []
    last = 0
    for cut in [*cuts, len(stream)]:
        results += decoder.feed(stream[last:cut])
        last = cut
    assert all(isinstance(r, Decoded) for r in results), results
    assert len(results) == len(frames)
    assert decoder.counters["frames_ok"] == len(frames)
    assert decoder.counters["garbage_bytes"] == 0


@FAST
@given(codec=st.sampled_from(sorted(FRAMES)), data=st.data())
def test_bit_flipped_frame_never_yields_a_wrong_reading(codec: str, data: st.DataObject) -> None:
    original = data.draw(FRAMES[codec])
    frame = bytearray(original)
    # framed: the trailing 0x00 is the delimiter, not part of the checked frame
    limit = len(frame) - 1 if codec == "framed" else len(frame)
    if codec == "textline":
        limit = len(frame) - 2  # CR LF end the line; flipping them only splits it
    bit = data.draw(st.integers(0, limit * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    decoder = stream_decoder(codec)
    results = decoder.feed(bytes(frame)) + decoder.feed(b"\x00" if codec == "framed" else b"\n")
    decoded = [r for r in results if isinstance(r, Decoded) and r.measurements]
    if decoded:
        # The only flips that may pass are the ones that change nothing the checksum
        # covers: the case of a hex checksum digit ('*6E' and '*6e' say the same).
        # Anything that decodes must be exactly the reading that was sent.
        reference = [r for r in decode_payload(codec, original) if isinstance(r, Decoded)]
        assert codec == "textline", results
        assert [r.measurements for r in decoded] == [r.measurements for r in reference], results
        star = original.rindex(b"*")
        assert star < bit // 8 <= star + 2, (bit, results)
        assert bit % 8 == 5, (bit, results)


@FAST
@given(codec=st.sampled_from(sorted(FRAMES)), data=st.data())
def test_truncated_frame_never_yields_a_reading(codec: str, data: st.DataObject) -> None:
    frame = data.draw(FRAMES[codec])
    cut = data.draw(st.integers(1, len(frame) - 2))
    results = decode_payload(codec, frame[:cut])
    assert all(isinstance(r, DecodeError) for r in results), results


@FAST
@given(codec=st.sampled_from(sorted(FRAMES)), data=st.data())
def test_resynchronises_after_garbage(codec: str, data: st.DataObject) -> None:
    garbage = data.draw(st.binary(max_size=80))
    frame = data.draw(FRAMES[codec])
    # COBS cannot tell garbage from a frame's first block, and a text line never restarts
    # on '$': our senders flush with 0x00 / CRLF at boot (FRAMED_PROTOCOL.md, textline.py).
    flush = {"framed": b"\x00", "textline": b"\r\n"}.get(codec, b"")
    decoder = stream_decoder(codec)
    stream = garbage + flush + frame
    split = data.draw(st.integers(0, len(stream)))
    results = decoder.feed(stream[:split]) + decoder.feed(stream[split:])
    assert any(isinstance(r, Decoded) and _same_frame(r, frame, codec) for r in results), results
    assert decoder.counters["frames_ok"] >= 1


@FAST
@given(payload=st.binary(min_size=1, max_size=64))
def test_lorawan_envelope_with_random_payload_never_raises(payload: bytes) -> None:
    event = {
        "deviceInfo": {"devEui": "0101010101010101"},
        "fCnt": 3,
        "data": base64.b64encode(payload).decode(),
        "rxInfo": [{"rssi": -80, "snr": 3}],
    }
    (result,) = decode_payload("chirpstack", json.dumps(event).encode())
    if isinstance(result, Decoded):
        assert all(m.seq == 3 for m in result.measurements)
