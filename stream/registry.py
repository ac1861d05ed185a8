"""The KPI registry: every KPI the engine emits, declared once.

A declaration says what a KPI reads (quantities, scope), over which window, how it
aggregates, its unit, its version and where its formula comes from. The engine
(:mod:`stream.zones`) computes the families declared here and stamps each KpiValue with
the declaration's id, version and unit; the Faust app enables exactly the declared KPIs
(optionally filtered by ``StreamConfig.kpis``), and ``climastream kpi list`` prints them.
Bump ``version`` whenever a formula or its parameters change (ISO 37114 traceability).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from climastream.contract import Quantity
from stream.config import StreamConfig
from stream.formulas import EAQI_POLLUTANTS


class WindowKind(StrEnum):
    TUMBLING = "tumbling"
    HOPPING = "hopping"
    LOCAL_DAY = "local_day"  # calendar day in StreamConfig.timezone
    LDEN_DAY = "lden_day"  # 07:00 .. 07:00 local, so a day's night is contiguous
    LOCAL_NIGHT = "local_night"  # StreamConfig.uhi_night_window from uhi_night_hour


class WindowRef(StrEnum):
    """Which configured window a KPI uses; resolved against a StreamConfig."""

    BASE = "base"
    EAQI = "eaqi"
    EAQI_RUNNING = "eaqi_running"
    DAY = "day"
    LDEN_DAY = "lden_day"
    LNIGHT = "lnight"
    UHI_NIGHT = "uhi_night"


@dataclass(frozen=True, slots=True)
class WindowSpec:
    kind: WindowKind
    size: timedelta
    step: timedelta

    def describe(self) -> str:
        if self.kind is WindowKind.TUMBLING:
            return f"tumbling {self.size}"
        if self.kind is WindowKind.HOPPING:
            return f"hopping size {self.size} step {self.step}"
        return f"{self.kind.value} ({self.size})"


def resolve_window(ref: WindowRef, config: StreamConfig) -> WindowSpec:
    day = timedelta(days=1)
    if ref is WindowRef.BASE:
        return WindowSpec(WindowKind.TUMBLING, config.window, config.window)
    if ref is WindowRef.EAQI:
        return WindowSpec(WindowKind.TUMBLING, config.eaqi_period, config.eaqi_period)
    if ref is WindowRef.EAQI_RUNNING:
        size = config.eaqi_period * config.eaqi_running_periods
        return WindowSpec(WindowKind.HOPPING, size, config.eaqi_period)
    if ref is WindowRef.DAY:
        return WindowSpec(WindowKind.LOCAL_DAY, day, day)
    if ref is WindowRef.LDEN_DAY:
        return WindowSpec(WindowKind.LDEN_DAY, day, day)
    if ref is WindowRef.LNIGHT:
        return WindowSpec(WindowKind.LOCAL_NIGHT, timedelta(hours=8), day)
    return WindowSpec(WindowKind.LOCAL_NIGHT, config.uhi_night_window, day)


@dataclass(frozen=True, slots=True)
class KpiDef:
    kpi_id: str
    version: str
    family: str
    inputs: tuple[Quantity, ...]  # empty: any quantity
    scopes: tuple[str, ...]  # "device" and/or "zone"
    window: WindowRef
    aggregation: str
    unit: str  # "" means: the input quantity's canonical unit
    description: str


_ALL: tuple[Quantity, ...] = ()
_T, _RH = Quantity.TEMPERATURE, Quantity.RELATIVE_HUMIDITY
_BOTH = ("device", "zone")

REGISTRY: tuple[KpiDef, ...] = (
    # ------------------------------------------------------------- statistics
    KpiDef("stat.mean", "1", "stat", _ALL, _BOTH, WindowRef.BASE, "arithmetic mean", "",
           "Mean of the readings in the window (zone: of all its devices' readings)."),
    KpiDef("stat.min", "1", "stat", _ALL, _BOTH, WindowRef.BASE, "minimum", "",
           "Smallest reading in the window."),
    KpiDef("stat.max", "1", "stat", _ALL, _BOTH, WindowRef.BASE, "maximum", "",
           "Largest reading in the window."),
    KpiDef("stat.count", "1", "stat", _ALL, _BOTH, WindowRef.BASE, "count", "count",
           "Number of distinct readings (by device and seq) in the window."),
    KpiDef("stat.p95", "1", "stat", _ALL, _BOTH, WindowRef.BASE, "95th percentile", "",
           "95th percentile, linear interpolation (Hyndman & Fan type 7, numpy default)."),
    KpiDef("completeness", "1", "completeness", _ALL, ("device",), WindowRef.BASE,
           "received / expected", "1",
           "Readings received over readings expected from the device's declared cadence "
           "(window / cadence per declared quantity), capped at 1; 0 for a silent device."),
    # ------------------------------------------------------------- air quality
    KpiDef("eaqi.pollutant", "1", "eaqi", EAQI_POLLUTANTS, ("zone",), WindowRef.EAQI,
           "band of the hourly mean (NO2, O3, SO2) or 24 h running mean (PM)", "1",
           "EEA European Air Quality Index band per pollutant (value 1..6); hourly means "
           "for NO2/O3/SO2, 24-hour running mean of hourly means for PM2.5/PM10; band table "
           "from StreamConfig.eaqi_table (airindex.eea.europa.eu)."),
    KpiDef("eaqi", "1", "eaqi", EAQI_POLLUTANTS, ("zone",), WindowRef.EAQI,
           "worst pollutant band", "1",
           "EEA European Air Quality Index: the worst band of any pollutant (1 good .. 6 "
           "extremely poor); attributes.dominant_pollutant is that pollutant (CLIMABOROUGH "
           "'dominentpol')."),
    # ------------------------------------------------------------- urban heat island
    KpiDef("uhi.intensity", "1", "uhi", (_T,), ("zone",), WindowRef.BASE,
           "zone mean minus reference mean", "Cel",
           "Urban heat island intensity: the zone's mean air temperature minus the "
           "reference station's mean over the same window (Brussels UHI plan, seed 002; "
           "Oke 1973)."),
    KpiDef("uhi.night", "1", "uhi", (_T,), ("zone",), WindowRef.UHI_NIGHT,
           "zone mean minus reference mean at the nightly hour", "Cel",
           "UHI intensity over uhi_night_window from uhi_night_hour local time (23:00 in "
           "Brussels' 2022 campaign). Both means are taken over the base windows in which "
           "the zone and the reference both reported (paired), so a reference gap does "
           "not compare a cooling zone's later minutes with the reference's earlier ones; "
           "completeness shows the share of the night those windows cover."),
    KpiDef("uhi.daily_max", "1", "uhi", (_T,), ("zone",), WindowRef.DAY,
           "maximum of the window UHI intensities", "Cel",
           "Largest uhi.intensity of the local calendar day."),
    # ------------------------------------------------------------- heat stress
    KpiDef("heat.dew_point", "1", "heat", (_T, _RH), _BOTH, WindowRef.BASE,
           "Magnus formula on window means", "Cel",
           "Dew point by the Magnus formula, b=17.62, c=243.12 °C (WMO-No. 8; Sonntag 1990)."),
    KpiDef("heat.heat_index", "3", "heat", (_T, _RH), _BOTH, WindowRef.BASE,
           "NOAA Rothfusz regression on window means", "Cel",
           "NWS heat index: simple formula below 80 °F, else Rothfusz regression with the "
           "low/high humidity adjustments (NWS SR 90-23; NOAA WPC)."),
    KpiDef("heat.humidex", "1", "heat", (_T, _RH), _BOTH, WindowRef.BASE,
           "Environment Canada humidex on window means", "1",
           "Humidex = T + 0.5555*(6.11*exp(5417.753*(1/273.16 - 1/(273.15+Td))) - 10) "
           "(Masterton & Richardson 1979)."),
    KpiDef("heatwave.status", "1", "heatwave", (_T,), ("zone",), WindowRef.DAY,
           "RMI heatwave rule over daily maxima", "1",
           "1 when the run of consecutive days with Tmax >= 25 °C ending today is >= 5 days "
           "long with >= 3 days Tmax >= 30 °C (Belgian RMI definition), else 0. Tmax is the "
           "largest reading of the zone in the local day; a day without data ends the run."),
    # ------------------------------------------------------------- noise
    KpiDef("noise.laeq", "1", "noise", (Quantity.NOISE_LAEQ,), _BOTH, WindowRef.BASE,
           "energetic mean", "dB(A)",
           "LAeq = 10*log10(mean(10^(Li/10))) of equal-duration levels (ISO 1996-1)."),
    KpiDef("noise.lden", "2", "noise", (Quantity.NOISE_LAEQ,), _BOTH, WindowRef.LDEN_DAY,
           "day-evening-night level", "dB(A)",
           "Lden per Directive 2002/49/EC Annex I, day 07-19, evening 19-23 (+5 dB), night "
           "23-07 (+10 dB), over one 07:00-07:00 local day."),
    KpiDef("noise.lnight", "2", "noise", (Quantity.NOISE_LAEQ,), _BOTH, WindowRef.LNIGHT,
           "energetic mean 23:00-07:00", "dB(A)",
           "Lnight per Directive 2002/49/EC Annex I: LAeq over 23:00-07:00 local."),
    # ------------------------------------------------------------- mobility
    KpiDef("traffic.vehicles", "1", "traffic", (Quantity.VEHICLE_COUNT,), _BOTH,
           WindowRef.BASE, "sum", "count", "Vehicles counted in the window."),
    KpiDef("traffic.intensity_km2", "1", "traffic", (Quantity.VEHICLE_COUNT,), ("zone",),
           WindowRef.BASE, "sum / zone area", "count/km2",
           "Vehicles in the window per km² of zone (zones.<zone>.area_km2; CLIMABOROUGH "
           "Annex A 'traffic intensity per km²')."),
    KpiDef("parking.occupancy", "1", "traffic", (Quantity.PARKING_OCCUPANCY,), _BOTH,
           WindowRef.BASE, "mean", "%", "Mean parking occupancy in the window."),
    # ------------------------------------------------------------- energy, water, waste
    KpiDef("energy.kwh", "1", "energy", (Quantity.ENERGY,), _BOTH, WindowRef.BASE, "sum",
           "kWh", "Energy consumed in the window (sum of interval readings)."),
    KpiDef("energy.co2e_kg", "1", "energy", (Quantity.ENERGY,), _BOTH, WindowRef.BASE,
           "sum * emission factor", "kg",
           "CO2-equivalent of energy.kwh with co2e_kg_per_kwh (GHG Protocol scope 2, "
           "location-based)."),
    KpiDef("water.m3", "1", "water", (Quantity.WATER_VOLUME,), _BOTH, WindowRef.BASE, "sum",
           "m3", "Water consumed in the window (sum of interval readings)."),
    KpiDef("waste.fill_level", "1", "waste", (Quantity.BIN_FILL_LEVEL,), ("device",),
           WindowRef.BASE, "latest reading", "%", "Bin fill level: the latest reading."),
    KpiDef("waste.bins_over_threshold", "1", "waste", (Quantity.BIN_FILL_LEVEL,), ("zone",),
           WindowRef.BASE, "count of bins with fill level >= threshold", "count",
           "Bins of the zone whose latest fill level is >= bin_threshold_pct."),
)  # fmt: skip

BY_ID: dict[str, KpiDef] = {k.kpi_id: k for k in REGISTRY}


def enabled(config: StreamConfig, only: str | None = None) -> dict[str, KpiDef]:
    """The KPIs to compute: the registry, filtered by config and by ``only`` (--kpi)."""
    wanted = set(config.kpis) | ({only} if only else set())
    unknown = wanted - BY_ID.keys()
    if unknown:
        raise ValueError(f"unknown KPI id(s) {sorted(unknown)}; known: {sorted(BY_ID)}")
    selected = {only} if only else (set(config.kpis) or set(BY_ID))
    return {k: v for k, v in BY_ID.items() if k in selected}
