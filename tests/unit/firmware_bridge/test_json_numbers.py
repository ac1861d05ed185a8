"""Numbers beyond float range in JSON payloads are typed ``bad_value`` errors naming the field.

``float()`` of a 401-digit integer raises OverflowError, and ``json.loads`` of a 4301-digit
one raises ValueError (Python's int digit limit): both escaped every JSON codec.
"""

from __future__ import annotations

import pytest

from climastream.quantities import Quantity
from firmware_bridge.codecs import CodecOptions, decode_payload
from firmware_bridge.model import DecodeError, measurement
from firmware_bridge.mqtt.generic_json import mapping_from_dict
from firmware_bridge.serial_codecs.textline import decode_line, encode_line

OPTIONS = CodecOptions(
    mapping=mapping_from_dict(
        {"topic": "city/{device_id}", "fields": {"t": {"quantity": "temperature", "unit": "Cel"}}}
    ),
    topic="city/st1",
)

BIG = {
    "401 digits": (b"1" + b"0" * 400, "<an integer of 401 digits>"),
    "4301 digits": (b"1" + b"0" * 4300, "<an integer of 4301 digits>"),
    "-5000 digits": (b"-" + b"9" * 5000, "<an integer of 5000 digits>"),
    "1e400": (b"1e400", "inf"),
}
CASES = {
    "annexb": (b'{"temperature": %s}', "temperature"),
    "senml": (b'[{"n": "temperature", "v": %s}]', "record 0.v"),
    "chirpstack": (
        b'{"deviceInfo": {"devEui": "0011223344556677"}, "rxInfo": [{"rssi": %s}]}',
        "rxInfo[0].rssi",
    ),
    "tts": (
        b'{"end_device_ids": {"dev_eui": "0011223344556677"},'
        b' "uplink_message": {"rx_metadata": [{"rssi": %s}]}}',
        "uplink_message.rx_metadata[0].rssi",
    ),
    "json": (b'{"t": %s}', "t"),
}


@pytest.mark.parametrize("codec", sorted(CASES))
@pytest.mark.parametrize("size", sorted(BIG))
def test_a_number_beyond_float_range_is_bad_value_naming_the_field(codec: str, size: str) -> None:
    template, field = CASES[codec]
    number, shown = BIG[size]
    payload = template % number
    (result,) = decode_payload(codec, payload, OPTIONS)
    assert isinstance(result, DecodeError), result
    assert result.reason == "bad_value"
    assert result.message == f"{field} {shown} is not a finite number in float range"
    assert result.raw == payload


def test_a_huge_integer_time_is_bad_time() -> None:
    (result,) = decode_payload("annexb", b'{"timeRecorded": 1%s}' % (b"0" * 400))
    assert isinstance(result, DecodeError)
    assert result.reason == "bad_time"
    assert "timeRecorded <an integer of 401 digits>" in result.message


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            b'[{"bv": 1e308, "n": "temperature", "v": 1e308}]',
            "record 0.v: temperature value inf Cel is not a finite number",
        ),
        (
            b'[{"n": "pressure", "u": "kPa", "v": 1e308}]',
            "record 0.v: pressure value inf hPa (from 1e+308 kPa) is not a finite number",
        ),
    ],
)
def test_senml_value_infinite_after_base_value_or_conversion(payload: bytes, message: str) -> None:
    (result,) = decode_payload("senml", payload)
    assert isinstance(result, DecodeError), result
    assert (result.reason, result.message, result.raw) == ("bad_value", message, payload)


def test_annex_b_value_infinite_after_unit_conversion() -> None:
    payload = b'{"pressure": 1e308}'
    (result,) = decode_payload("annexb", payload, CodecOptions(units={"pressure": "kPa"}))
    assert isinstance(result, DecodeError), result
    assert result.reason == "bad_value"
    assert result.message.startswith("pressure: pressure value inf hPa")
    assert result.raw == payload


def test_measurement_refuses_non_finite_values_naming_the_field() -> None:
    with pytest.raises(
        DecodeError, match=r"^bad_value: vis: visibility value inf m \(from 1e\+308 km\)"
    ):
        measurement(Quantity.VISIBILITY, 1e308, "km", field="vis")
    with pytest.raises(DecodeError, match=r"^bad_value: temperature: temperature value nan"):
        measurement(Quantity.TEMPERATURE, float("nan"))


def test_textline_value_infinite_after_conversion_points_at_the_value() -> None:
    line = encode_line({"id": "n7", "pk": "1e308"})
    result = decode_line(line, keys={"pk": (Quantity.PRESSURE, "kPa")})
    assert isinstance(result, DecodeError), result
    assert (result.reason, result.offset) == ("bad_value", line.index(b"1e308"))
    assert result.message.startswith("pk: pressure value inf hPa (from 1e+308 kPa)")
