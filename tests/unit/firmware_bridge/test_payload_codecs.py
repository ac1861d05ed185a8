"""Annex B both ways, config validation, and uplink envelope details."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from climastream.quantities import Quantity
from firmware_bridge.lorawan.cayenne import decode_cayenne, encode_cayenne
from firmware_bridge.lorawan.layout import LayoutError, layout_from_mapping
from firmware_bridge.model import Decoded, measurement
from firmware_bridge.mqtt.annex_b import decode_annex_b, dominant_pollutant, encode_annex_b
from firmware_bridge.mqtt.generic_json import MappingError, mapping_from_dict

T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)


def test_annex_b_round_trip_keeps_values_and_units() -> None:
    readings = [
        measurement(Quantity.TEMPERATURE, 24.3, device_id="s", time=T0),
        measurement(Quantity.PM2_5, 30.0, device_id="s", time=T0),
        measurement(Quantity.PM10, 40.0, device_id="s", time=T0),
        measurement(Quantity.CO, 0.4, device_id="s", time=T0),
        measurement(Quantity.PRESSURE, 1012.3, device_id="s", time=T0),
    ]
    document = encode_annex_b(
        readings, source="climastream", city_name="Brussels", countrycode="BE"
    )
    # pm25 30/15 = 2.0 beats pm10 40/45 and co 0.4/4: pm25 dominates
    assert document["dominentpol"] == "pm25"
    assert document["timeRecorded"] == 1717236000
    back = decode_annex_b(document)
    assert isinstance(back, Decoded)
    assert {(m.quantity, m.value, m.unit) for m in back.measurements} == {
        (m.quantity, m.value, m.unit) for m in readings
    }
    assert all(m.device_id == "climastream-Brussels" for m in back.measurements)


def test_annex_b_units_override_for_a_feed_in_other_units() -> None:
    result = decode_annex_b(
        {"pressure": 101325, "visibility": 10}, units={"pressure": "Pa", "visibility": "km"}
    )
    assert isinstance(result, Decoded)
    assert [(m.quantity, m.value) for m in result.measurements] == [
        (Quantity.PRESSURE, 1013.25),
        (Quantity.VISIBILITY, 10000.0),
    ]


def test_dominant_pollutant_by_who_ratio() -> None:
    assert dominant_pollutant({"no2": 50.0, "pm25": 15.0}) == "no2"  # 2.0 vs 1.0
    assert dominant_pollutant({}) is None


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (
            {
                "name": "x",
                "fields": [
                    {
                        "name": "t",
                        "offset": 0,
                        "type": "int17",
                        "unit": "Cel",
                        "quantity": "temperature",
                    }
                ],
            },
            "fields[0].type",
        ),
        (
            {
                "name": "x",
                "fields": [
                    {
                        "name": "t",
                        "offset": 0,
                        "type": "int16",
                        "unit": "furlong",
                        "quantity": "temperature",
                    }
                ],
            },
            "fields[0].unit",
        ),
        (
            {
                "name": "x",
                "fields": [
                    {
                        "name": "t",
                        "offset": -1,
                        "type": "int16",
                        "unit": "Cel",
                        "quantity": "temperature",
                    }
                ],
            },
            "fields[0].offset",
        ),
        (
            {
                "name": "x",
                "fields": [
                    {"name": "t", "offset": 0, "type": "int16", "unit": "Cel", "quantity": "heat"}
                ],
            },
            "fields[0].quantity",
        ),
        ({"name": "x", "fields": []}, "fields"),
    ],
)
def test_layout_errors_name_the_key(layout: dict[str, object], message: str) -> None:
    with pytest.raises(LayoutError, match=message.replace("[", r"\[").replace("]", r"\]")):
        layout_from_mapping(layout)


def test_layout_little_endian_float_and_offset() -> None:
    layout = layout_from_mapping(
        {
            "name": "x",
            "endianness": "little",
            "fields": [
                {"name": "p", "offset": 1, "type": "uint24", "unit": "Pa", "quantity": "pressure"},
                {
                    "name": "t",
                    "offset": 4,
                    "type": "float32",
                    "unit": "K",
                    "quantity": "temperature",
                },
            ],
        }
    )
    # 101325 = 0x018BCD little-endian CD 8B 01; 293.15 K as float32 = 0x43929333, LE 33 93 92 43
    result = layout.decode(bytes.fromhex("FF CD 8B 01 33 93 92 43"))
    assert isinstance(result, Decoded)
    assert result.measurements[0].value == pytest.approx(1013.25)
    assert result.measurements[1].value == pytest.approx(20.0, abs=1e-4)


def test_mapping_requires_explicit_units() -> None:
    with pytest.raises(MappingError, match=r"fields.t.unit"):
        mapping_from_dict({"fields": {"t": {"quantity": "temperature"}}})


def test_cayenne_encoder_round_trip_all_types() -> None:
    records = [
        (1, "digital_input", [1]),
        (2, "analog_output", [-3.5]),
        (3, "illuminance", [800]),
        (4, "temperature", [-12.3]),
        (5, "humidity", [55.5]),
        (6, "accelerometer", [0.5, -0.25, 1.0]),
        (7, "barometer", [998.7]),
        (8, "gyrometer", [10.5, -2.25, 0]),
        (9, "gps", [50.8503, 4.3517, 56.5]),
    ]
    result = decode_cayenne(encode_cayenne(records))
    assert isinstance(result, Decoded)
    assert [m.value for m in result.measurements] == pytest.approx(
        [v for _, _, values in records for v in values]
    )


FIELDS = {"t": {"quantity": "temperature", "unit": "Cel"}}


@pytest.mark.parametrize(
    ("topic", "device_id", "message"),
    [
        (
            "city/{zone-id}/{device_id}",
            "{device_id}",
            "source.topic: variable '{zone-id}' of 'city/{zone-id}/{device_id}' is not a name",
        ),
        ("city/{1st}/x", None, "source.topic: variable '{1st}' of"),
        ("city/{zone}/{zone}", None, "source.topic: variable '{zone}' appears twice"),
        ("city/{zone}-{id}", None, "source.topic: level '{zone}-{id}' of"),
        ("city/{}/x", None, "source.topic: variable '{}' of"),
        ("city/#/x", None, "source.topic: 'city/#/x': '#' may only be the last level"),
        (
            "city/{zone}/{device_id}",
            "{zone.x}",
            "source.device_id: {zone.x} in '{zone.x}': use plain {zone}, without '.'",
        ),
        (
            "city/{zone}/{device_id}",
            "{zone[0]}",
            "source.device_id: {zone[0]} in '{zone[0]}': use plain {zone}",
        ),
        (
            "city/{zone}/{device_id}",
            "{station}",
            "source.device_id: {station} in '{station}' is not a topic variable "
            "(they are {zone}, {device_id})",
        ),
        (None, "{device_id}", "source.device_id: {device_id} in '{device_id}' is not a topic"),
        ("city/{zone}", "{zone!r}", "source.device_id: '{zone!r}': use plain {zone}, without"),
        ("city/{zone}", "{zone", "source.device_id: '{zone' is not a valid template"),
        ("city/{zone}", "$.", "source.device_id: '$.' needs a path"),
    ],
)
def test_mapping_templates_are_checked_at_load(
    topic: str | None, device_id: str | None, message: str
) -> None:
    config = {"topic": topic, "device_id": device_id, "fields": FIELDS}
    with pytest.raises(MappingError) as info:
        mapping_from_dict(config, "source")
    assert str(info.value).startswith(message), str(info.value)


def test_mapping_templates_that_load_decode() -> None:
    mapping = mapping_from_dict(
        {"topic": "city/{zone}/+/{device_id}/#", "device_id": "st-{device_id}", "fields": FIELDS}
    )
    result = mapping.decode(b'{"t": 21.5}', "city/north/x/ws-1/state/now")
    assert isinstance(result, Decoded)
    assert result.measurements[0].device_id == "st-ws-1"
    assert result.measurements[0].metadata["zone"] == "north"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([(1, "temperature", [float("inf")])], "temperature value inf is not a finite number"),
        ([(1, "humidity", [float("nan")])], "humidity value nan is not a finite number"),
        ([(256, "temperature", [21.5])], "temperature channel 256 is not a byte"),
    ],
)
def test_cayenne_encoder_raises_value_error_naming_the_problem(
    records: list[tuple[int, str, list[float]]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_cayenne(records)
