"""Known physical quantities, their canonical units and plausibility bounds.

Every reading on the wire carries its quantity and the canonical unit for it, so that a
consumer never has to guess (Annex B of the CLIMABOROUGH scheme leaves most units implicit;
we do not). Unit symbols follow SenML (RFC 8428 §12.1) where it registers one, else UCUM.

The bounds are *physical plausibility* limits, not alert thresholds: a value outside them is
a broken sensor or a decoding bug and is rejected at the contract with a named reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Quantity(StrEnum):
    """What a reading measures. The string value is the wire name."""

    TEMPERATURE = "temperature"
    RELATIVE_HUMIDITY = "relative_humidity"
    DEW_POINT = "dew_point"
    PRESSURE = "pressure"
    PM1 = "pm1"
    PM2_5 = "pm2_5"
    PM10 = "pm10"
    NO2 = "no2"
    O3 = "o3"
    SO2 = "so2"
    CO = "co"
    CO2 = "co2"
    PARTICLES_0_3 = "particles_0_3"
    PARTICLES_0_5 = "particles_0_5"
    PARTICLES_1_0 = "particles_1_0"
    PARTICLES_2_5 = "particles_2_5"
    PARTICLES_5_0 = "particles_5_0"
    PARTICLES_10 = "particles_10"
    WIND_SPEED = "wind_speed"
    WIND_GUST = "wind_gust"
    WIND_DIRECTION = "wind_direction"
    PRECIPITATION = "precipitation"
    SOLAR_RADIATION = "solar_radiation"
    UV_INDEX = "uv_index"
    ILLUMINANCE = "illuminance"
    VISIBILITY = "visibility"
    NOISE_LAEQ = "noise_laeq"
    VEHICLE_COUNT = "vehicle_count"
    PEDESTRIAN_COUNT = "pedestrian_count"
    PARKING_OCCUPANCY = "parking_occupancy"
    ENERGY = "energy"
    POWER = "power"
    WATER_VOLUME = "water_volume"
    BIN_FILL_LEVEL = "bin_fill_level"
    BATTERY_VOLTAGE = "battery_voltage"
    RSSI = "rssi"
    SNR = "snr"
    ACCELERATION_X = "acceleration_x"
    ACCELERATION_Y = "acceleration_y"
    ACCELERATION_Z = "acceleration_z"
    LATITUDE = "latitude"
    LONGITUDE = "longitude"
    ALTITUDE = "altitude"
    DIGITAL = "digital"
    ANALOG = "analog"
    PRESENCE = "presence"
    ANGULAR_VELOCITY_X = "angular_velocity_x"
    ANGULAR_VELOCITY_Y = "angular_velocity_y"
    ANGULAR_VELOCITY_Z = "angular_velocity_z"


@dataclass(frozen=True, slots=True)
class QuantitySpec:
    unit: str
    low: float
    high: float
    description: str


_INF = math.inf

SPECS: dict[Quantity, QuantitySpec] = {
    Quantity.TEMPERATURE: QuantitySpec("Cel", -90.0, 70.0, "air temperature"),
    Quantity.RELATIVE_HUMIDITY: QuantitySpec("%RH", 0.0, 100.0, "relative humidity"),
    Quantity.DEW_POINT: QuantitySpec("Cel", -90.0, 70.0, "dew point temperature"),
    Quantity.PRESSURE: QuantitySpec("hPa", 300.0, 1100.0, "barometric pressure"),
    Quantity.PM1: QuantitySpec("ug/m3", 0.0, 10000.0, "particulate matter <= 1 um"),
    Quantity.PM2_5: QuantitySpec("ug/m3", 0.0, 10000.0, "particulate matter <= 2.5 um"),
    Quantity.PM10: QuantitySpec("ug/m3", 0.0, 10000.0, "particulate matter <= 10 um"),
    Quantity.NO2: QuantitySpec("ug/m3", 0.0, 20000.0, "nitrogen dioxide"),
    Quantity.O3: QuantitySpec("ug/m3", 0.0, 20000.0, "ozone"),
    Quantity.SO2: QuantitySpec("ug/m3", 0.0, 20000.0, "sulphur dioxide"),
    Quantity.CO: QuantitySpec("mg/m3", 0.0, 1000.0, "carbon monoxide"),
    Quantity.CO2: QuantitySpec("ppm", 0.0, 100000.0, "carbon dioxide"),
    Quantity.PARTICLES_0_3: QuantitySpec("/dL", 0.0, 1e7, "particles > 0.3 um per 0.1 L"),
    Quantity.PARTICLES_0_5: QuantitySpec("/dL", 0.0, 1e7, "particles > 0.5 um per 0.1 L"),
    Quantity.PARTICLES_1_0: QuantitySpec("/dL", 0.0, 1e7, "particles > 1.0 um per 0.1 L"),
    Quantity.PARTICLES_2_5: QuantitySpec("/dL", 0.0, 1e7, "particles > 2.5 um per 0.1 L"),
    Quantity.PARTICLES_5_0: QuantitySpec("/dL", 0.0, 1e7, "particles > 5.0 um per 0.1 L"),
    Quantity.PARTICLES_10: QuantitySpec("/dL", 0.0, 1e7, "particles > 10 um per 0.1 L"),
    Quantity.WIND_SPEED: QuantitySpec("m/s", 0.0, 120.0, "wind speed"),
    Quantity.WIND_GUST: QuantitySpec("m/s", 0.0, 150.0, "wind gust"),
    Quantity.WIND_DIRECTION: QuantitySpec("deg", 0.0, 360.0, "wind direction, from north"),
    Quantity.PRECIPITATION: QuantitySpec("mm", 0.0, 1000.0, "precipitation amount"),
    Quantity.SOLAR_RADIATION: QuantitySpec("W/m2", 0.0, 2000.0, "global solar irradiance"),
    Quantity.UV_INDEX: QuantitySpec("UVI", 0.0, 30.0, "UV index"),
    Quantity.ILLUMINANCE: QuantitySpec("lx", 0.0, 200000.0, "illuminance"),
    Quantity.VISIBILITY: QuantitySpec("m", 0.0, 100000.0, "horizontal visibility"),
    Quantity.NOISE_LAEQ: QuantitySpec("dB(A)", 0.0, 200.0, "A-weighted equivalent level"),
    Quantity.VEHICLE_COUNT: QuantitySpec("count", 0.0, 1e6, "vehicles counted in interval"),
    Quantity.PEDESTRIAN_COUNT: QuantitySpec("count", 0.0, 1e6, "people counted in interval"),
    Quantity.PARKING_OCCUPANCY: QuantitySpec("%", 0.0, 100.0, "parking spaces occupied"),
    Quantity.ENERGY: QuantitySpec("kWh", 0.0, 1e9, "energy consumed in interval"),
    Quantity.POWER: QuantitySpec("W", -1e9, 1e9, "active power"),
    Quantity.WATER_VOLUME: QuantitySpec("m3", 0.0, 1e7, "water consumed in interval"),
    Quantity.BIN_FILL_LEVEL: QuantitySpec("%", 0.0, 100.0, "waste bin fill level"),
    Quantity.BATTERY_VOLTAGE: QuantitySpec("V", 0.0, 60.0, "device battery voltage"),
    Quantity.RSSI: QuantitySpec("dBm", -200.0, 50.0, "radio signal strength"),
    Quantity.SNR: QuantitySpec("dB", -50.0, 50.0, "radio signal-to-noise ratio"),
    Quantity.ACCELERATION_X: QuantitySpec("g", -64.0, 64.0, "acceleration, x axis"),
    Quantity.ACCELERATION_Y: QuantitySpec("g", -64.0, 64.0, "acceleration, y axis"),
    Quantity.ACCELERATION_Z: QuantitySpec("g", -64.0, 64.0, "acceleration, z axis"),
    Quantity.LATITUDE: QuantitySpec("lat", -90.0, 90.0, "GNSS latitude, WGS84"),
    Quantity.LONGITUDE: QuantitySpec("lon", -180.0, 180.0, "GNSS longitude, WGS84"),
    Quantity.ALTITUDE: QuantitySpec("m", -1000.0, 20000.0, "GNSS altitude"),
    Quantity.DIGITAL: QuantitySpec("1", -_INF, _INF, "digital input or output level"),
    Quantity.ANALOG: QuantitySpec("1", -_INF, _INF, "analog input or output, unscaled"),
    Quantity.PRESENCE: QuantitySpec("1", 0.0, 255.0, "presence detector (Cayenne LPP 102)"),
    Quantity.ANGULAR_VELOCITY_X: QuantitySpec("deg/s", -1e4, 1e4, "angular velocity, x axis"),
    Quantity.ANGULAR_VELOCITY_Y: QuantitySpec("deg/s", -1e4, 1e4, "angular velocity, y axis"),
    Quantity.ANGULAR_VELOCITY_Z: QuantitySpec("deg/s", -1e4, 1e4, "angular velocity, z axis"),
}

CANONICAL_UNITS: dict[Quantity, str] = {q: s.unit for q, s in SPECS.items()}


class UnitError(ValueError):
    """A unit that is unknown for a quantity, or a value outside its plausibility bounds."""


def _affine(scale: float, offset: float = 0.0) -> Callable[[float], float]:
    return lambda v: v * scale + offset


# (canonical unit, source unit) -> converter. Only conversions a real device emits.
_CONVERSIONS: dict[tuple[str, str], Callable[[float], float]] = {
    ("Cel", "K"): _affine(1.0, -273.15),
    ("Cel", "degF"): lambda v: (v - 32.0) * 5.0 / 9.0,
    ("Cel", "°C"): _affine(1.0),
    ("Cel", "degC"): _affine(1.0),
    ("%RH", "%"): _affine(1.0),
    ("%RH", "/"): _affine(100.0),
    ("hPa", "Pa"): _affine(0.01),
    ("hPa", "kPa"): _affine(10.0),
    ("hPa", "mbar"): _affine(1.0),
    ("ug/m3", "mg/m3"): _affine(1000.0),
    ("ug/m3", "µg/m3"): _affine(1.0),
    ("ug/m3", "μg/m³"): _affine(1.0),
    ("mg/m3", "ug/m3"): _affine(0.001),
    ("m/s", "km/h"): _affine(1.0 / 3.6),
    ("kWh", "Wh"): _affine(0.001),
    ("kWh", "J"): _affine(1.0 / 3.6e6),
    ("m3", "l"): _affine(0.001),
    ("m3", "L"): _affine(0.001),
    ("V", "mV"): _affine(0.001),
    ("%", "/"): _affine(100.0),
    ("dB(A)", "dBA"): _affine(1.0),
    ("m", "km"): _affine(1000.0),
}


def to_canonical(quantity: Quantity, value: float, unit: str) -> float:
    """Convert ``value`` in ``unit`` to the canonical unit of ``quantity``.

    Raises :class:`UnitError` naming the quantity and unit when no conversion is known.
    """
    canonical = CANONICAL_UNITS[quantity]
    if unit == canonical:
        return value
    convert = _CONVERSIONS.get((canonical, unit))
    if convert is None:
        raise UnitError(
            f"unit {unit!r} is not convertible to {canonical!r} for quantity {quantity.value!r}"
        )
    return convert(value)


def check_plausible(quantity: Quantity, value: float) -> None:
    """Raise :class:`UnitError` when ``value`` cannot be a real measurement of ``quantity``."""
    spec = SPECS[quantity]
    if not math.isfinite(value):
        raise UnitError(f"{quantity.value} value {value!r} is not a finite number")
    if not spec.low <= value <= spec.high:
        raise UnitError(
            f"{quantity.value} value {value!r} {spec.unit} is outside the plausible range "
            f"[{spec.low:g}, {spec.high:g}]"
        )
