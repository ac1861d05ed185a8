"""Pure KPI formulas, each with its unit and the published source it implements.

No I/O, no clocks, no Faust: the stream job, ``climastream kpi eval`` and the unit tests call
exactly these functions. Inputs are canonical units (see :mod:`climastream.quantities`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from climastream.contract import Quantity

# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks.

    This is the "linear" method (Hyndman & Fan type 7), the default of NumPy and R, so an
    auditor can reproduce it with ``numpy.percentile(values, q)``.
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --------------------------------------------------------------------------- heat stress

#: Magnus coefficients over water recommended by the WMO (Sonntag 1990), valid -45..60 °C.
MAGNUS_B = 17.62
MAGNUS_C = 243.12


def dew_point(temperature_c: float, relative_humidity: float) -> float:
    """Dew point in °C by the Magnus formula (WMO-No. 8, Annex 4.B; Sonntag 1990).

    ``gamma = ln(RH/100) + b*T/(c+T)``, ``Td = c*gamma/(b-gamma)`` with b=17.62, c=243.12 °C.
    """
    if not 0.0 < relative_humidity <= 100.0:
        raise ValueError(f"relative humidity {relative_humidity} %RH is outside (0, 100]")
    gamma = math.log(relative_humidity / 100.0) + MAGNUS_B * temperature_c / (
        MAGNUS_C + temperature_c
    )
    return MAGNUS_C * gamma / (MAGNUS_B - gamma)


#: °F: binary floating point holds neither the °C -> °F conversion nor the heat index's
#: decimal coefficients exactly, so a simple value that is 80 °F by the published arithmetic
#: (26.01 °C at 76.6 %RH) can come out as 79.99999999999999; within this, it is 80
HEAT_INDEX_TOLERANCE_F = 1e-9


def heat_index(temperature_c: float, relative_humidity: float) -> float:
    """Heat index in °C per the US NWS/NOAA algorithm (Rothfusz 1990, NWS SR 90-23).

    As published by NOAA's Weather Prediction Center: first the simple formula
    ``HI = 0.5*(T + 61 + (T-68)*1.2 + RH*0.094)`` (°F), which is already Steadman's value
    averaged with T; if that is 80 °F or more, the Rothfusz regression is used instead,
    minus the low-humidity adjustment (RH < 13 %, 80..112 °F) or plus the high-humidity
    one (RH > 85 %, 80..87 °F). The NWS heat index calculator decides on the simple value
    itself (it does not average with T a second time) and gives T itself at or below
    40 °F, where a heat index means nothing; so does this function.
    """
    t = temperature_c * 9.0 / 5.0 + 32.0
    rh = relative_humidity
    simple = 0.5 * (t + 61.0 + (t - 68.0) * 1.2 + rh * 0.094)
    if t <= 40.0:
        hi = t
    elif simple < 80.0 - HEAT_INDEX_TOLERANCE_F:
        hi = simple
    else:
        hi = (
            -42.379
            + 2.04901523 * t
            + 10.14333127 * rh
            - 0.22475541 * t * rh
            - 0.00683783 * t * t
            - 0.05481717 * rh * rh
            + 0.00122874 * t * t * rh
            + 0.00085282 * t * rh * rh
            - 0.00000199 * t * t * rh * rh
        )
        if rh < 13.0 and 80.0 <= t <= 112.0:
            hi -= ((13.0 - rh) / 4.0) * math.sqrt((17.0 - abs(t - 95.0)) / 17.0)
        elif rh > 85.0 and 80.0 <= t <= 87.0:
            hi += ((rh - 85.0) / 10.0) * ((87.0 - t) / 5.0)
    return (hi - 32.0) * 5.0 / 9.0


def humidex(temperature_c: float, dew_point_c: float) -> float:
    """Humidex (dimensionless) per Environment Canada (Masterton & Richardson 1979).

    ``H = T + 0.5555*(e - 10)`` with the vapour pressure
    ``e = 6.11*exp(5417.7530*(1/273.16 - 1/(273.15 + Td)))`` in hPa.
    """
    e = 6.11 * math.exp(5417.7530 * (1.0 / 273.16 - 1.0 / (273.15 + dew_point_c)))
    return temperature_c + 0.5555 * (e - 10.0)


# --------------------------------------------------------------------------- noise


def energy_sum(levels_db: Iterable[float]) -> float:
    """Sum of ``10^(L/10)`` over levels: the additive form of an energetic mean."""
    return sum(10.0 ** (level / 10.0) for level in levels_db)


def level_from_energy(energy: float, count: int) -> float:
    """``10*log10(energy/count)`` dB: LAeq of ``count`` equal-duration levels."""
    if count <= 0 or energy <= 0.0:
        raise ValueError("an energetic mean needs at least one level")
    return 10.0 * math.log10(energy / count)


def laeq(levels_db: Sequence[float]) -> float:
    """Energetic mean LAeq in dB(A) of equal-duration A-weighted levels (ISO 1996-1):
    ``10*log10(mean(10^(Li/10)))``."""
    return level_from_energy(energy_sum(levels_db), len(levels_db))


def lden(l_day: float, l_evening: float, l_night: float) -> float:
    """Day-evening-night level in dB(A), EU Directive 2002/49/EC Annex I:
    ``10*lg(1/24*(12*10^(Lday/10) + 4*10^((Levening+5)/10) + 8*10^((Lnight+10)/10)))``
    with the default periods day 07-19, evening 19-23, night 23-07 (local time)."""
    return 10.0 * math.log10(
        (
            12.0 * 10.0 ** (l_day / 10.0)
            + 4.0 * 10.0 ** ((l_evening + 5.0) / 10.0)
            + 8.0 * 10.0 ** ((l_night + 10.0) / 10.0)
        )
        / 24.0
    )


# --------------------------------------------------------------------------- heatwave


@dataclass(frozen=True, slots=True)
class HeatwaveState:
    """The run of consecutive warm days ending at the last closed day.

    Belgian RMI (KMI/IRM) definition for Uccle: a heatwave is a run of at least 5
    consecutive days with Tmax >= 25 °C of which at least 3 days have Tmax >= 30 °C.
    """

    consecutive_days: int = 0  # days with Tmax >= 25 °C ending at the last closed day
    hot_days: int = 0  # days with Tmax >= 30 °C within that run

    @property
    def in_heatwave(self) -> bool:
        return self.consecutive_days >= 5 and self.hot_days >= 3


def heatwave_step(state: HeatwaveState, tmax_c: float | None) -> HeatwaveState:
    """Fold one day's maximum temperature into the run (None: no data, which ends the run)."""
    if tmax_c is None or tmax_c < 25.0:
        return HeatwaveState()
    return HeatwaveState(state.consecutive_days + 1, state.hot_days + (1 if tmax_c >= 30.0 else 0))


# --------------------------------------------------------------------------- EAQI

BANDS: tuple[str, ...] = ("good", "fair", "moderate", "poor", "very_poor", "extremely_poor")
EAQI_POLLUTANTS: tuple[Quantity, ...] = (
    Quantity.PM2_5,
    Quantity.PM10,
    Quantity.NO2,
    Quantity.O3,
    Quantity.SO2,
)
#: pollutants whose index uses the 24-hour running mean; the others use hourly means
EAQI_RUNNING_24H: frozenset[Quantity] = frozenset({Quantity.PM2_5, Quantity.PM10})


@dataclass(frozen=True, slots=True)
class EaqiTable:
    """A versioned EAQI band table: for each pollutant, the upper bounds (µg/m³) of every
    band but the last; anything above the last bound is in the table's top band.

    Upper bounds are inclusive: a concentration ``c`` is in band ``i`` when
    ``bound[i-1] < c <= bound[i]``. The 2024 table is published as integer ranges
    ("0-5, 6-15, 16-50 ..." for PM2.5), which puts 5 µg/m³ in *good*; the older tables'
    ranges ("0-10, 10-20") are read the same way. Six-band tables end at *extremely poor*;
    the 2017 launch table had five bands and ends at *very poor*.
    """

    version: str
    bounds: dict[Quantity, tuple[float, ...]]
    source: str

    @property
    def top_band(self) -> int:
        return len(next(iter(self.bounds.values()))) + 1

    def band_index(self, pollutant: Quantity, concentration: float) -> int:
        """Band number 1 (good) .. :attr:`top_band`."""
        for index, upper in enumerate(self.bounds[pollutant]):
            if concentration <= upper:
                return index + 1
        return self.top_band

    def position(self, pollutant: Quantity, concentration: float) -> float:
        """How far into its band a concentration is (0..1); breaks ties between pollutants."""
        bounds = (0.0, *self.bounds[pollutant])
        band = self.band_index(pollutant, concentration)
        if band == self.top_band:
            return concentration / bounds[-1]
        low, high = bounds[band - 1], bounds[band]
        return (concentration - low) / (high - low)


EAQI_TABLES: dict[str, EaqiTable] = {
    table.version: table
    for table in (
        EaqiTable(
            "eaqi-2024",
            {
                Quantity.PM2_5: (5, 15, 50, 90, 140),
                Quantity.PM10: (15, 45, 120, 195, 270),
                Quantity.NO2: (10, 25, 60, 100, 150),
                Quantity.O3: (60, 100, 120, 160, 180),
                Quantity.SO2: (20, 40, 125, 190, 275),
            },
            "EEA European Air Quality Index, bands revised in 2024 to the WHO 2021 air "
            "quality guidelines (airindex.eea.europa.eu)",
        ),
        EaqiTable(
            "eaqi-2023",
            {
                Quantity.PM2_5: (10, 20, 25, 50, 75),
                Quantity.PM10: (20, 40, 50, 100, 150),
                Quantity.NO2: (40, 90, 120, 230, 340),
                Quantity.O3: (50, 100, 130, 240, 380),
                Quantity.SO2: (100, 200, 350, 500, 750),
            },
            "EEA European Air Quality Index, six-band table in force until the 2024 revision",
        ),
        EaqiTable(
            "eaqi-2017",
            {
                Quantity.PM2_5: (10, 20, 25, 50),
                Quantity.PM10: (20, 35, 50, 100),
                Quantity.NO2: (40, 100, 200, 400),
                Quantity.O3: (80, 120, 180, 240),
                Quantity.SO2: (100, 200, 350, 500),
            },
            "EEA European Air Quality Index as launched in November 2017: five bands, "
            "good .. very poor (EEA AQI viewer 'About the Index')",
        ),
    )
}
#: the table used unless the stream config names another
DEFAULT_EAQI_TABLE = "eaqi-2024"
EAQI_TABLES["eaqi-2021"] = EAQI_TABLES["eaqi-2024"]  # alias: the WHO-2021-aligned table


@dataclass(frozen=True, slots=True)
class EaqiResult:
    band_index: int
    band: str
    dominant_pollutant: Quantity
    per_pollutant: dict[Quantity, int]


def eaqi(table: EaqiTable, concentrations: dict[Quantity, float]) -> EaqiResult:
    """Overall EAQI: the worst band of any pollutant (EEA). The dominant pollutant (the
    ``dominentpol`` of the CLIMABOROUGH scheme) is the one with that band; ties go to the
    pollutant furthest into the band."""
    if not concentrations:
        raise ValueError("the EAQI needs at least one pollutant concentration")
    per = {p: table.band_index(p, c) for p, c in concentrations.items()}
    dominant = max(
        concentrations,
        key=lambda p: (per[p], table.position(p, concentrations[p]), -EAQI_POLLUTANTS.index(p)),
    )
    worst = per[dominant]
    return EaqiResult(worst, BANDS[worst - 1], dominant, per)
