"""Differential test: the edge fast path decides and encodes exactly like pydantic ``Reading``.

For arbitrary dicts (mostly near-valid, with every field independently perturbed into
something invalid or unusual) ``ReadingEncoder(now).encode`` must

* accept exactly when ``Reading.model_validate(d, context={"now": now})`` accepts,
* return the very bytes ``contract.encode`` gives for that model, which ``decode`` reads
  back to the same model, and
* reject with a :class:`ContractError` that names the bad field.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from climastream.contract import (
    EARLIEST_EVENT_TIME,
    MAX_CLOCK_SKEW,
    ContractError,
    QualityFlag,
    Quantity,
    Reading,
    decode,
    encode,
)
from climastream.fastpath import ReadingEncoder
from climastream.quantities import SPECS

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LATEST = NOW + MAX_CLOCK_SKEW
NAIVE_LOW = datetime(2014, 12, 31)  # noqa: DTZ001 - naive on purpose
NAIVE_HIGH = datetime(2027, 1, 1)  # noqa: DTZ001

valid_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:\-]{0,20}\Z")
bad_ids = st.one_of(
    st.sampled_from(["", "a b", "a\n", "-lead", "a/b", "a,b", 'a"b', "ä", "x" * 128, "x" * 129]),
    st.text(max_size=8),
    st.integers(),
    st.none(),
    st.binary(max_size=4),
)
ids = st.one_of(valid_ids, valid_ids, valid_ids, bad_ids)

valid_times = st.one_of(
    st.datetimes(
        min_value=EARLIEST_EVENT_TIME.replace(tzinfo=None),
        max_value=LATEST.replace(tzinfo=None),
        timezones=st.just(UTC),
    ),
    st.sampled_from([EARLIEST_EVENT_TIME, LATEST, NOW]),
)
odd_times = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))])),  # any era
    st.datetimes(min_value=NAIVE_LOW, max_value=NAIVE_HIGH),  # naive
    st.datetimes(
        min_value=NAIVE_LOW,
        max_value=NAIVE_HIGH,
        timezones=st.sampled_from(
            [timezone(timedelta(hours=-5)), timezone(timedelta(0)), timezone(timedelta(hours=9))]
        ),
    ),
    st.sampled_from(
        [
            EARLIEST_EVENT_TIME - timedelta(microseconds=1),
            LATEST + timedelta(microseconds=1),
            "2026-11-23T12:00:00Z",
            0,
            None,
        ]
    ),
)
times = st.one_of(valid_times, valid_times, valid_times, odd_times)

any_floats = st.floats(allow_nan=True, allow_infinity=True)
odd_numbers = st.one_of(
    any_floats,
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, True, False, "1.5", None]),
    st.integers(min_value=-(2**70), max_value=2**70),
)

QUANTITY_VALUES = [q.value for q in Quantity]
ALL_UNITS = [*sorted({spec.unit for spec in SPECS.values()}), "degC", "K", "", "Cel\n", "%"]


@st.composite
def plain_valid_readings(draw: st.DrawFn) -> dict[str, Any]:
    """The shape the edge agent builds: these must all take the fast path."""
    quantity = draw(st.sampled_from(list(Quantity)))
    spec = SPECS[quantity]
    data: dict[str, Any] = {
        "schema_version": 1,
        "device_id": draw(valid_ids),
        "gateway_id": draw(valid_ids),
        "seq": draw(st.integers(min_value=0, max_value=2**63 - 1)),
        "quantity": quantity.value,
        "value": draw(st.floats(min_value=max(spec.low, -1e12), max_value=min(spec.high, 1e12))),
        "unit": spec.unit,
        "event_time": draw(valid_times),
        "ingest_time": NOW,
        "zone": draw(st.one_of(st.none(), valid_ids)),
        "quality": draw(st.lists(st.sampled_from([f.value for f in QualityFlag]), max_size=2)),
    }
    if draw(st.booleans()):
        data["score"] = draw(st.floats(min_value=0, max_value=1))
        data["model_id"] = draw(valid_ids)
    if draw(st.booleans()):
        data["location"] = {"lat": draw(st.floats(-90, 90)), "lon": draw(st.floats(-180, 180))}
    return data


def _near(value: float) -> st.SearchStrategy[float]:
    """Floats at and just beyond a bound (off-by-one checks)."""
    return st.sampled_from(
        [value, math.nextafter(value, math.inf), math.nextafter(value, -math.inf)]
    )


#: per field: values that are invalid, unusual or on a boundary (some are valid)
MUTATIONS: dict[str, st.SearchStrategy[Any]] = {
    "device_id": bad_ids,
    "gateway_id": bad_ids,
    "zone": st.one_of(bad_ids, valid_ids),
    "model_id": st.one_of(bad_ids, valid_ids),
    "seq": st.sampled_from([-1, 0, 2**63 - 1, 2**63, 2**64, True, 1.0, "3", None]),
    "quantity": st.one_of(
        st.sampled_from(list(Quantity)),
        st.sampled_from(["", "Temperature", "pm25", "unknown", None, 1]),
        st.sampled_from(QUANTITY_VALUES),
    ),
    "value": odd_numbers,
    "unit": st.sampled_from(ALL_UNITS),
    "event_time": odd_times,
    "ingest_time": odd_times,
    "schema_version": st.sampled_from([1, 2, 0, True, 1.0, "1", None]),
    "quality": st.one_of(
        st.lists(
            st.one_of(
                st.sampled_from(list(QualityFlag)),
                st.sampled_from(["", "bad", "Corrected", 1, None]),
                st.sampled_from([f.value for f in QualityFlag]),
            ),
            max_size=3,
        ).flatmap(lambda xs: st.sampled_from([xs, tuple(xs)])),
        st.sampled_from(["corrected", None, {"corrected"}, ()]),
    ),
    "score": st.one_of(odd_numbers, st.none()),
    "location": st.one_of(
        st.fixed_dictionaries(
            {
                "lat": st.one_of(st.floats(-90, 90), _near(90.0), _near(-90.0), odd_numbers),
                "lon": st.one_of(st.floats(-180, 180), _near(180.0), _near(-180.0)),
            },
            optional={
                "alt_m": st.one_of(
                    st.floats(-1000, 20000), _near(-1000.0), _near(20000.0), odd_numbers
                ),
                "x": st.just(1.0),
            },
        ),
        st.sampled_from([None, {}, {"lat": 1.0}, {"lat": 1, "lon": 2}, [1.0, 2.0], "here"]),
    ),
}


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    """A valid agent-shaped reading with 0-2 fields perturbed, sometimes a key added/removed."""
    data = draw(plain_valid_readings())
    spec = SPECS[Quantity(data["quantity"])]
    if draw(st.integers(0, 3)) == 0:  # values on and just beyond the plausibility bounds
        data["value"] = draw(_near(spec.low) if draw(st.booleans()) else _near(spec.high))
        if not math.isfinite(data["value"]):
            data["value"] = 0.0
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=2, unique=True)):
        data[name] = draw(MUTATIONS[name])
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.sampled_from(["extra", "Value", "seq_no"]))] = 1
    if draw(st.integers(0, 9)) == 0:
        del data[draw(st.sampled_from(sorted(data)))]
    return data


@settings(max_examples=500, deadline=None)
@given(plain_valid_readings())
def test_agent_shaped_readings_take_the_fast_path(data: dict[str, Any]) -> None:
    encoder = ReadingEncoder(NOW)
    assert encoder.encode(data) == reference(data)
    assert (encoder.fast, encoder.slow) == (1, 0)


def reference(data: Any) -> bytes | None:
    try:
        return encode(Reading.model_validate(data, context={"now": NOW}))
    except ValidationError:
        return None


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings())
def test_fast_path_accepts_exactly_what_reading_accepts(data: dict[str, Any]) -> None:
    expected = reference(data)
    encoder = ReadingEncoder(NOW)
    message = ""
    try:
        got: bytes | None = encoder.encode(data)
    except ContractError as exc:
        got, message = None, str(exc)
    assert got == expected
    if got is None:
        assert message.startswith("invalid Reading: ")
    if got is not None:
        assert decode(got, Reading, now=NOW) == Reading.model_validate(data, context={"now": NOW})


def _valid() -> dict[str, Any]:
    return {
        "device_id": "th-001",
        "gateway_id": "gw-1",
        "seq": 7,
        "quantity": "temperature",
        "value": 21.5,
        "unit": "Cel",
        "event_time": NOW - timedelta(seconds=5),
        "ingest_time": NOW,
    }


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"value": math.nan}, "value", "finite"),
        ({"value": 99.0}, "<record>", "plausible range"),
        ({"unit": "K"}, "<record>", "canonical unit"),
        ({"quantity": "heat"}, "quantity", "Input should be"),
        ({"device_id": "th 001"}, "device_id", "pattern"),
        ({"event_time": NAIVE_HIGH}, "event_time", "timezone"),
        ({"event_time": datetime(2001, 1, 1, tzinfo=UTC)}, "<record>", "clock is probably unset"),
        ({"event_time": NOW + timedelta(hours=2)}, "<record>", "ahead of now"),
        ({"score": 0.5}, "<record>", "score given without the model_id"),
        ({"seq": -1}, "seq", "greater than or equal"),
        ({"extra": 1}, "extra", "Extra inputs"),
    ],
)
def test_rejections_name_the_field_and_reason(
    change: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ContractError) as info:
        ReadingEncoder(NOW).encode({**_valid(), **change})
    assert f"{field}: " in str(info.value)
    assert reason in str(info.value)


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ReadingEncoder(NAIVE_LOW)


_bounds = st.one_of(
    st.floats(-25000, 25000),
    *(_near(b) for b in (90.0, -90.0, 180.0, -180.0, -1000.0, 20000.0)),
    odd_numbers,
)


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {
                "lat": st.one_of(st.floats(-90, 90), _bounds),
                "lon": st.one_of(st.floats(-180, 180), _bounds),
            },
            optional={"alt_m": st.one_of(_bounds, st.none())},
        ),
        st.dictionaries(
            st.sampled_from(["lat", "lon", "alt_m", "x"]), st.one_of(_bounds, st.none())
        ),
    )
)
def test_locations_decided_like_reading(location: dict[str, Any]) -> None:
    """Location is nested, so it gets its own focused differential test."""
    data = {**_valid(), "location": location}
    try:
        got: bytes | None = ReadingEncoder(NOW).encode(data)
    except ContractError:
        got = None
    assert got == reference(data)


def test_fast_path_reads_exactly_the_fields_of_reading() -> None:
    from climastream import fastpath

    assert set(Reading.model_fields) == fastpath._REQUIRED | fastpath._OPTIONAL
    required = {name for name, field in Reading.model_fields.items() if field.is_required()}
    assert required == fastpath._REQUIRED
