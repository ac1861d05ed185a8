"""The flat air-quality/weather JSON scheme of CLIMABOROUGH Annex B, mapped both ways.

The scheme has no device id and leaves most units implicit. We make them explicit here;
:data:`ANNEX_B_FIELDS` is the contract (override per feed with ``units=``)::

    field           quantity           unit assumed
    temperature     temperature        Cel   (the scheme says °C)
    temp_min/max    kept as metadata 'temp_min'/'temp_max' of the temperature, Cel
    humidity        relative_humidity  %
    pressure        pressure           hPa
    dew             dew_point          Cel
    pm25, pm10      pm2_5, pm10        ug/m3
    no2, ozone,     no2, o3, so2       ug/m3
    sulphurDioxide
    co              co                 mg/m3
    windspeed       wind_speed         m/s
    windgust        wind_gust          m/s
    winddegree      wind_direction     deg
    visibility      visibility         m     (the scheme says metres)

Beware: feeds that copy the WAQI API put AQI *sub-indices* in the pollutant fields, not
concentrations. Such a feed must not be decoded with these defaults.

``timeRecorded`` (Unix seconds) is the event time. ``source``, ``cityName``,
``countrycode``, ``zipcode``, ``lat``, ``lon``, ``dominentpol`` (sic, the dominant
pollutant as WAQI names it), ``sunrise``, ``sunset`` and ``weather_icon`` are kept as
metadata. The device id is the ``device_id`` option, else ``<source>-<cityName>``.

The reverse mapping :func:`encode_annex_b` writes the scheme from measurements in the same
units; when ``dominentpol`` is not given it is the pollutant with the highest ratio to its
WHO 2021 24-hour guideline (pm25 15, pm10 45, no2 25, so2 40 ug/m3; co 4 mg/m3; o3 100
ug/m3 8-hour).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from climastream.quantities import CANONICAL_UNITS, Quantity, UnitError, to_canonical
from firmware_bridge.jsonutil import number, parse_json, parse_time, raw_bytes, safe_id
from firmware_bridge.model import (
    Decoded,
    DecodeError,
    DecodeResult,
    Measurement,
    MetaValue,
    measurement,
)

ANNEX_B_FIELDS: dict[str, tuple[Quantity, str]] = {
    "temperature": (Quantity.TEMPERATURE, "Cel"),
    "humidity": (Quantity.RELATIVE_HUMIDITY, "%"),
    "pressure": (Quantity.PRESSURE, "hPa"),
    "dew": (Quantity.DEW_POINT, "Cel"),
    "pm25": (Quantity.PM2_5, "ug/m3"),
    "pm10": (Quantity.PM10, "ug/m3"),
    "no2": (Quantity.NO2, "ug/m3"),
    "ozone": (Quantity.O3, "ug/m3"),
    "sulphurDioxide": (Quantity.SO2, "ug/m3"),
    "co": (Quantity.CO, "mg/m3"),
    "windspeed": (Quantity.WIND_SPEED, "m/s"),
    "windgust": (Quantity.WIND_GUST, "m/s"),
    "winddegree": (Quantity.WIND_DIRECTION, "deg"),
    "visibility": (Quantity.VISIBILITY, "m"),
}
METADATA_FIELDS = (
    "source",
    "cityName",
    "countrycode",
    "zipcode",
    "lat",
    "lon",
    "dominentpol",
    "sunrise",
    "sunset",
    "weather_icon",
)
_TEMP_EXTREMES = ("temp_min", "temp_max")
WHO_GUIDELINES: dict[str, float] = {
    "pm25": 15.0,
    "pm10": 45.0,
    "no2": 25.0,
    "so2": 40.0,
    "co": 4.0,
    "o3": 100.0,
}
_WAQI_NAMES = {
    "pm25": "pm25",
    "pm10": "pm10",
    "no2": "no2",
    "sulphurDioxide": "so2",
    "co": "co",
    "ozone": "o3",
}


def decode_annex_b(
    payload: bytes | str | Mapping[str, Any],
    *,
    device_id: str | None = None,
    units: Mapping[str, str] | None = None,
) -> DecodeResult:
    """Decode one Annex B document; null or absent fields are skipped, wrong types rejected."""
    raw = raw_bytes(payload)
    try:
        document = parse_json(payload)
        if not isinstance(document, Mapping):
            raise DecodeError("bad_json", "an Annex B document is a JSON object", raw=raw)
        when = (
            parse_time(document["timeRecorded"], "timeRecorded", raw)
            if document.get("timeRecorded") is not None
            else None
        )
        meta: dict[str, MetaValue] = {}
        for key in METADATA_FIELDS:
            value = document.get(key)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                meta[key] = value
        dev = device_id
        if (
            dev is None
            and isinstance(document.get("source"), str)
            and isinstance(document.get("cityName"), str)
        ):
            dev = safe_id(f"{document['source']}-{document['cityName']}") or None
        out: list[Measurement] = []
        for key, (quantity, default_unit) in ANNEX_B_FIELDS.items():
            if document.get(key) is None:
                continue
            value = number(document[key], key, raw)
            extra = dict(meta)
            if quantity is Quantity.TEMPERATURE:
                for extreme in _TEMP_EXTREMES:
                    if document.get(extreme) is not None:
                        extra[extreme] = number(document[extreme], extreme, raw)
            unit = (units or {}).get(key, default_unit)
            try:
                out.append(
                    measurement(
                        quantity, value, unit, device_id=dev, time=when, metadata=extra, field=key
                    )
                )
            except UnitError as exc:
                raise DecodeError("bad_unit", f"{key}: {exc}", raw=raw) from None
            except DecodeError as exc:
                raise exc.with_raw(raw) from None
        known = {*ANNEX_B_FIELDS, *METADATA_FIELDS, *_TEMP_EXTREMES, "timeRecorded"}
        unmapped = tuple(sorted(k for k in document if k not in known))
        return Decoded(tuple(out), raw=raw, unmapped=unmapped)
    except DecodeError as exc:
        return exc


def dominant_pollutant(concentrations: Mapping[str, float]) -> str | None:
    """The Annex B pollutant key whose concentration is highest relative to its WHO guideline."""
    ratios = {
        _WAQI_NAMES[key]: value / WHO_GUIDELINES[_WAQI_NAMES[key]]
        for key, value in concentrations.items()
        if key in _WAQI_NAMES
    }
    return max(ratios, key=lambda k: ratios[k]) if ratios else None


def encode_annex_b(
    measurements: Iterable[Measurement],
    *,
    source: str,
    city_name: str,
    countrycode: str | None = None,
    zipcode: float | None = None,
    lat: float | None = None,
    lon: float | None = None,
    dominentpol: str | None = None,
) -> dict[str, Any]:
    """Write the Annex B document for one place from measurements in canonical units.

    The latest measurement of each mapped quantity (channel None) wins; ``timeRecorded`` is
    the latest event time (Unix seconds). Unmapped quantities are left out.
    """
    by_quantity: dict[Quantity, Measurement] = {}
    latest: datetime | None = None
    for m in measurements:
        if m.channel is not None:
            continue
        current = by_quantity.get(m.quantity)
        if current is None or (m.time and (current.time is None or m.time >= current.time)):
            by_quantity[m.quantity] = m
        if m.time is not None and (latest is None or m.time > latest):
            latest = m.time
    document: dict[str, Any] = {"source": source, "cityName": city_name}
    for key, value in (
        ("countrycode", countrycode),
        ("zipcode", zipcode),
        ("lat", lat),
        ("lon", lon),
    ):
        if value is not None:
            document[key] = value
    concentrations: dict[str, float] = {}
    for key, (quantity, unit) in ANNEX_B_FIELDS.items():
        found = by_quantity.get(quantity)
        if found is None:
            continue
        value = _from_canonical(quantity, found.value, unit)
        document[key] = value
        concentrations[key] = value
        if quantity is Quantity.TEMPERATURE:
            for extreme in _TEMP_EXTREMES:
                if isinstance(found.metadata.get(extreme), int | float):
                    document[extreme] = found.metadata[extreme]
    pol = dominentpol or dominant_pollutant(concentrations)
    if pol is not None:
        document["dominentpol"] = pol
    if latest is not None:
        document["timeRecorded"] = latest.timestamp()
    return document


def _from_canonical(quantity: Quantity, value: float, unit: str) -> float:
    if unit == CANONICAL_UNITS[quantity]:
        return value
    factor = to_canonical(quantity, 1.0, unit)
    offset = to_canonical(quantity, 0.0, unit)
    return (value - offset) / (factor - offset)
