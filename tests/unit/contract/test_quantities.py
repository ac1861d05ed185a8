from __future__ import annotations

import math

import pytest

from climastream.quantities import (
    CANONICAL_UNITS,
    SPECS,
    Quantity,
    UnitError,
    check_plausible,
    to_canonical,
)


def test_every_quantity_has_a_canonical_unit_and_sane_bounds() -> None:
    assert set(CANONICAL_UNITS) == set(Quantity)
    for spec in SPECS.values():
        assert spec.low < spec.high


@pytest.mark.parametrize(
    ("quantity", "value", "unit", "expected"),
    [
        (Quantity.TEMPERATURE, 293.15, "K", 20.0),
        (Quantity.TEMPERATURE, 212.0, "degF", 100.0),
        (Quantity.PRESSURE, 101325.0, "Pa", 1013.25),
        (Quantity.PM2_5, 0.012, "mg/m3", 12.0),
        (Quantity.WIND_SPEED, 36.0, "km/h", 10.0),
        (Quantity.ENERGY, 1500.0, "Wh", 1.5),
        (Quantity.RELATIVE_HUMIDITY, 0.55, "/", 55.0),
    ],
)
def test_unit_conversions(quantity: Quantity, value: float, unit: str, expected: float) -> None:
    assert to_canonical(quantity, value, unit) == pytest.approx(expected)


def test_unknown_unit_names_quantity_and_unit() -> None:
    with pytest.raises(UnitError, match=r"'furlong' is not convertible to 'Cel' for quantity"):
        to_canonical(Quantity.TEMPERATURE, 1.0, "furlong")


def test_plausibility() -> None:
    check_plausible(Quantity.TEMPERATURE, 45.0)
    with pytest.raises(UnitError, match="outside the plausible range"):
        check_plausible(Quantity.RELATIVE_HUMIDITY, 101.0)
    with pytest.raises(UnitError, match="not a finite number"):
        check_plausible(Quantity.TEMPERATURE, math.nan)
