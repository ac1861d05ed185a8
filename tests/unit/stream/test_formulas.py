"""KPI formulas against values computed by hand from their published definitions."""

from __future__ import annotations

import math

import pytest

from climastream.contract import Quantity
from stream import formulas as f


def _c(fahrenheit: float) -> float:
    return (fahrenheit - 32.0) * 5.0 / 9.0


def test_percentile_linear_interpolation() -> None:
    # ranks 0..4 of [1,2,3,4,5]: p95 sits at rank 3.8 -> 4 + 0.8*(5-4)
    assert f.percentile([5, 1, 3, 2, 4], 95) == pytest.approx(4.8)
    assert f.percentile([7.0], 95) == 7.0


def test_dew_point_magnus() -> None:
    # T=20, RH=50: gamma = ln(0.5) + 17.62*20/263.12 = -0.693147 + 1.339313 = 0.646166
    # Td = 243.12*0.646166/(17.62-0.646166) = 9.2555
    assert f.dew_point(20.0, 50.0) == pytest.approx(9.2555, abs=1e-3)
    assert f.dew_point(25.0, 100.0) == pytest.approx(25.0)  # saturated air
    with pytest.raises(ValueError, match="relative humidity"):
        f.dew_point(20.0, 0.0)


def _rothfusz(t: float, rh: float) -> float:
    """The Rothfusz regression (°F), written out here as NWS publishes it."""
    return (
        -42.379 + 2.04901523 * t + 10.14333127 * rh - 0.22475541 * t * rh
        - 0.00683783 * t * t - 0.05481717 * rh * rh + 0.00122874 * t * t * rh
        + 0.00085282 * t * rh * rh - 0.00000199 * t * t * rh * rh
    )  # fmt: skip


@pytest.mark.parametrize(
    ("t_f", "rh", "hi_f"),
    [
        # NOAA/NWS heat index chart values (rounded to whole °F in the chart)
        (90.0, 50.0, 95.0),
        (96.0, 65.0, 121.0),
        (100.0, 40.0, 109.0),
        (86.0, 90.0, 105.0),
    ],
)
def test_heat_index_matches_nws_chart(t_f: float, rh: float, hi_f: float) -> None:
    assert f.heat_index(_c(t_f), rh) == pytest.approx(_c(hi_f), abs=0.6 * 5 / 9)


def test_heat_index_simple_formula_below_80f() -> None:
    # T=70 °F, RH=50: simple = 0.5*(70+61+(70-68)*1.2+50*0.094) = 69.05 °F (< 80)
    assert f.heat_index(_c(70.0), 50.0) == pytest.approx(_c(69.05))


def test_heat_index_switches_to_the_regression_on_the_simple_value_itself() -> None:
    # T=78.8 °F (26 °C), RH=100: simple = 0.5*(78.8+61+10.8*1.2+9.4) = 81.08 °F >= 80,
    # so the NWS calculator uses the regression (83.15 °F = 28.41 °C). Averaging the
    # simple value with T once more (79.94 °F) would have kept the simple 81.08 °F.
    t, rh = 78.8, 100.0
    reg = _rothfusz(t, rh)
    # (no high-humidity adjustment: that one is for 80..87 °F)
    assert f.heat_index(26.0, rh) == pytest.approx(_c(reg))
    assert f.heat_index(26.0, rh) == pytest.approx(28.41, abs=0.01)


@pytest.mark.parametrize(
    ("t_c", "rh"),
    # simple = 0.5*(T + 61 + (T-68)*1.2 + RH*0.094) = 80 °F exactly, by hand:
    [
        (26.01, 76.6),  # T = 78.818 °F: 78.818 + 61 + 12.9816 + 7.2004 = 160
        (25.54, 96.4),  # T = 77.972 °F: 77.972 + 61 + 11.9664 + 9.0616 = 160
        (26.95, 37.0),  # T = 80.51 °F: 80.51 + 61 + 15.012 + 3.478 = 160
    ],
)
def test_heat_index_uses_the_regression_from_exactly_80f(t_c: float, rh: float) -> None:
    # NWS: "If this heat index value is 80 degrees F or higher, the full regression
    # equation ... is applied", also when the arithmetic lands on 80 exactly
    t = t_c * 1.8 + 32.0
    assert f.heat_index(t_c, rh) == pytest.approx(_c(_rothfusz(t, rh)), abs=1e-9)


def test_heat_index_keeps_the_simple_value_just_below_80f() -> None:
    # 26.01 °C (78.818 °F) at 76.5 %RH: simple = 80 - 0.5*0.1*0.094 = 79.9953 °F
    assert f.heat_index(26.01, 76.5) == pytest.approx(_c(79.9953), abs=1e-9)


def test_heat_index_high_humidity_adjustment_includes_80f() -> None:
    # 80 °F, RH=90: simple 81.93 °F, so the regression, plus ((90-85)/10)*((87-80)/5)
    assert f.heat_index(_c(80.0), 90.0) == pytest.approx(_c(_rothfusz(80.0, 90.0) + 0.7))
    # at 87 °F and at RH=85 the adjustment is zero: no step at either bound
    assert f.heat_index(_c(87.0), 90.0) == pytest.approx(_c(_rothfusz(87.0, 90.0)))
    assert f.heat_index(_c(85.0), 85.0) == pytest.approx(_c(_rothfusz(85.0, 85.0)))
    # RH=13 at 100 °F: the low-humidity adjustment is zero there too
    assert f.heat_index(_c(100.0), 13.0) == pytest.approx(_c(_rothfusz(100.0, 13.0)))


def test_heat_index_is_the_temperature_at_or_below_40f() -> None:
    assert f.heat_index(-20.0, 50.0) == pytest.approx(-20.0)
    assert f.heat_index(_c(40.0), 90.0) == pytest.approx(_c(40.0))
    assert f.heat_index(_c(41.0), 90.0) != pytest.approx(_c(41.0))


def test_heat_index_adjustments() -> None:
    # low humidity: T=100 °F, RH=10: regression minus ((13-10)/4)*sqrt((17-5)/17)
    t, rh = 100.0, 10.0
    reg = _rothfusz(t, rh)
    expected = reg - 0.75 * math.sqrt(12.0 / 17.0)
    assert f.heat_index(_c(t), rh) == pytest.approx(_c(expected))
    # high humidity: T=85 °F, RH=90: plus ((90-85)/10)*((87-85)/5) = 0.2 °F
    t, rh = 85.0, 90.0
    reg = _rothfusz(t, rh)
    assert f.heat_index(_c(t), rh) == pytest.approx(_c(reg + 0.2))


def test_humidex() -> None:
    # T=30, Td=15: 5417.753*(1/273.16 - 1/288.15) = 1.03180, e = 6.11*e^1.03180 = 17.145 hPa
    # H = 30 + 0.5555*(17.145 - 10) = 33.97 (Environment Canada's table: 34)
    e = 6.11 * math.exp(5417.7530 * (1 / 273.16 - 1 / 288.15))
    assert e == pytest.approx(17.145, abs=0.01)
    assert f.humidex(30.0, 15.0) == pytest.approx(30 + 0.5555 * (e - 10))
    assert f.humidex(30.0, 15.0) == pytest.approx(33.97, abs=0.01)


def test_laeq_is_energetic_not_arithmetic() -> None:
    # 60 and 70 dB: 10*log10((10^6 + 10^7)/2) = 10*log10(5.5e6) = 67.404 dB
    assert f.laeq([60.0, 70.0]) == pytest.approx(67.4036, abs=1e-3)
    assert f.laeq([55.0, 55.0, 55.0]) == pytest.approx(55.0)


def test_lden_directive_formula() -> None:
    # equal 60 dB in every period: 10*lg((12*1e6 + 4*10^6.5 + 8*1e7)/24) = 66.39 dB
    expected = 10 * math.log10((12e6 + 4 * 10**6.5 + 8e7) / 24)
    assert f.lden(60.0, 60.0, 60.0) == pytest.approx(expected)
    assert f.lden(60.0, 60.0, 60.0) == pytest.approx(66.39, abs=0.01)


def test_heatwave_rmi_rule() -> None:
    state = f.HeatwaveState()
    maxima = [26.0, 31.0, 27.0, 30.0, 25.0]  # 5 days >= 25, of which 2 >= 30: not yet
    for tmax in maxima:
        state = f.heatwave_step(state, tmax)
    assert (state.consecutive_days, state.hot_days, state.in_heatwave) == (5, 2, False)
    state = f.heatwave_step(state, 32.0)  # 6 days, 3 hot: heatwave
    assert state.in_heatwave
    assert not f.heatwave_step(state, 24.9).in_heatwave  # run ends below 25 °C
    assert f.heatwave_step(state, None) == f.HeatwaveState()  # no data ends the run


@pytest.mark.parametrize(
    ("table", "pollutant", "value", "band"),
    [
        ("eaqi-2024", Quantity.PM2_5, 4.9, 1),
        ("eaqi-2024", Quantity.PM2_5, 5.0, 1),  # published as 0-5: the bound is good
        ("eaqi-2024", Quantity.PM2_5, 5.1, 2),
        ("eaqi-2024", Quantity.PM2_5, 140.0, 5),
        ("eaqi-2024", Quantity.PM2_5, 141.0, 6),
        ("eaqi-2024", Quantity.PM2_5, 16.0, 3),
        ("eaqi-2024", Quantity.PM10, 200.0, 5),
        ("eaqi-2024", Quantity.NO2, 30.0, 3),
        ("eaqi-2024", Quantity.O3, 185.0, 6),
        ("eaqi-2024", Quantity.SO2, 130.0, 4),
        ("eaqi-2023", Quantity.PM2_5, 22.0, 3),
        ("eaqi-2023", Quantity.NO2, 30.0, 1),
        ("eaqi-2023", Quantity.O3, 390.0, 6),
        ("eaqi-2023", Quantity.SO2, 750.0, 5),
        ("eaqi-2017", Quantity.NO2, 150.0, 3),  # 100-200 moderate in the launch table
        ("eaqi-2017", Quantity.PM10, 30.0, 2),  # 20-35 fair
        ("eaqi-2017", Quantity.O3, 390.0, 5),  # five bands: the top one is very poor
    ],
)
def test_eaqi_bands(table: str, pollutant: Quantity, value: float, band: int) -> None:
    assert f.EAQI_TABLES[table].band_index(pollutant, value) == band


def test_eaqi_overall_is_worst_and_names_dominant() -> None:
    table = f.EAQI_TABLES["eaqi-2024"]
    result = f.eaqi(table, {Quantity.PM2_5: 12.0, Quantity.NO2: 70.0, Quantity.O3: 50.0})
    assert (result.band_index, result.band) == (4, "poor")  # NO2 70 in 60..100
    assert result.dominant_pollutant is Quantity.NO2
    # both fair: PM2.5 14 is further into 5..15 than NO2 12 into 10..25
    tie = f.eaqi(table, {Quantity.PM2_5: 14.0, Quantity.NO2: 12.0})
    assert tie.dominant_pollutant is Quantity.PM2_5
