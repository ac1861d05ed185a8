"""NGSI-LD entities of the Smart Data Models from the console's live state, and the
read-only NGSI-LD API that serves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from climastream.contract import (
    Alert,
    AlertSeverity,
    AlertState,
    EvidencePoint,
    KpiValue,
    Location,
    Quantity,
)
from console import ngsi
from console.auth import Credentials, Principal, Role
from console.feed import ListActionSink
from console.hub import Hub
from console.state import DeviceInfo, LiveState
from console.web import ConsoleApp
from tests.unit.console.builders import T0, reading

VIEW_TOKEN = "viewer-token-0123456789"
AUTH = {"Authorization": f"Bearer {VIEW_TOKEN}"}
AQO = "urn:ngsi-ld:AirQualityObserved:device:aq-1"
WO = "urn:ngsi-ld:WeatherObserved:device:aq-1"


def _state() -> LiveState:
    """aq-1 measures PM2.5, temperature and humidity; wx-1 wind only; gps-1 neither model."""
    state = LiveState(clock=lambda: T0)
    later = T0 + timedelta(seconds=30)
    state.add_readings(
        [
            reading("aq-1", "centre", 1, Quantity.PM2_5, 12.5),
            reading("aq-1", "centre", 2, Quantity.PM2_5, 14.0, later),
            reading("aq-1", "centre", 3, Quantity.TEMPERATURE, 21.25),
            reading("aq-1", "centre", 4, Quantity.RELATIVE_HUMIDITY, 64.0),
            reading("wx-1", "park", 1, Quantity.WIND_SPEED, 3.5),
            reading("gps-1", "park", 1, Quantity.BATTERY_VOLTAGE, 3.7),
        ]
    )
    return state


def _by_id(state: LiveState) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in ngsi.entities(state.devices.values())}


def test_a_node_becomes_one_entity_per_smart_data_model_it_measures_for() -> None:
    found = _by_id(_state())
    assert sorted(found) == [AQO, WO, "urn:ngsi-ld:WeatherObserved:device:wx-1"]
    aqo = found[AQO]
    assert aqo["type"] == "AirQualityObserved"
    # the newest value, its unit code and its own event time
    assert aqo["pm25"] == {
        "type": "Property",
        "value": 14.0,
        "unitCode": "GQ",
        "observedAt": "2026-06-01T12:00:30Z",
    }
    assert aqo["temperature"]["value"] == 21.25
    assert aqo["temperature"]["unitCode"] == "CEL"
    # relative humidity is a fraction in both models
    assert aqo["relativeHumidity"]["value"] == 0.64
    assert aqo["dateObserved"]["value"] == {"@type": "DateTime", "@value": "2026-06-01T12:00:30Z"}
    # GeoJSON: longitude first
    assert aqo["location"] == {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [4.3, 50.8]},
    }
    assert aqo["areaServed"] == {"type": "Property", "value": "centre"}
    assert aqo["refDevice"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:aq-1"}
    # the same node's weather entity has no pollutant, and its own dateObserved
    weather = found[WO]
    assert "pm25" not in weather
    assert weather["dateObserved"]["value"]["@value"] == "2026-06-01T12:00:00Z"
    assert weather["relativeHumidity"]["value"] == 0.64


def test_a_thermometer_alone_is_no_air_quality_station() -> None:
    state = LiveState(clock=lambda: T0)
    state.add_readings([reading("t-1", "z", 1, Quantity.TEMPERATURE, 20.0)])
    assert [e["type"] for e in ngsi.entities(state.devices.values())] == ["WeatherObserved"]


def test_a_configured_node_without_readings_and_without_location_is_served_as_known() -> None:
    silent = DeviceInfo("quiet-1", zone="z", lat=50.0, lon=4.0)
    assert ngsi.entities([silent]) == []
    state = LiveState(clock=lambda: T0)
    unlocated = reading("u-1", "z", 1, Quantity.NO2, 40.0).model_copy(update={"location": None})
    state.add_readings([unlocated])
    (entity,) = ngsi.entities(state.devices.values())
    assert "location" not in entity
    assert entity["no2"]["value"] == 40.0


def _eaqi(zone: str, value: float, minutes: int = 60) -> KpiValue:
    return KpiValue(
        kpi_id="eaqi",
        kpi_version="1",
        zone=zone,
        window_start=T0 - timedelta(minutes=minutes),
        window_end=T0,
        value=value,
        unit="1",
        sample_count=120,
        completeness=1.0,
    )


def test_a_zone_with_an_eaqi_kpi_is_an_air_quality_entity() -> None:
    state = _state()
    state.add_kpi(_eaqi("centre", 5.0))
    state.add_readings([reading("zone:centre", "centre", 1, Quantity.PM10, 30.0)])
    found = {e["id"]: e for e in ngsi.entities(state.devices.values(), state.zone_kpis.values())}
    zone = found["urn:ngsi-ld:AirQualityObserved:zone:centre"]
    assert zone["airQualityIndex"] == {
        "type": "Property",
        "value": 5,
        "observedAt": "2026-06-01T12:00:00Z",
    }
    assert zone["airQualityLevel"]["value"] == "veryPoor"
    assert zone["areaServed"]["value"] == "centre"
    assert zone["dataProvider"]["value"] == "climastream kpi eaqi version 1"
    # a device called "zone:centre" cannot take the zone's place
    oddly_named = found["urn:ngsi-ld:AirQualityObserved:device:zone:centre"]
    assert oddly_named["pm10"]["value"] == 30.0
    assert ngsi.AIR_QUALITY_LEVELS == (
        "good",
        "fair",
        "moderate",
        "poor",
        "veryPoor",
        "extremelyPoor",
    )


def test_key_values_is_the_simplified_form() -> None:
    aqo = _by_id(_state())[AQO]
    assert ngsi.key_values(aqo) == {
        "id": AQO,
        "type": "AirQualityObserved",
        "pm25": 14.0,
        "temperature": 21.25,
        "relativeHumidity": 0.64,
        "dateObserved": "2026-06-01T12:00:30Z",
        "location": {"type": "Point", "coordinates": [4.3, 50.8]},
        "areaServed": "centre",
        "refDevice": "urn:ngsi-ld:Device:aq-1",
    }


def test_queries_filter_project_and_page() -> None:
    found = ngsi.entities(_state().devices.values())
    page, total = ngsi.select(found, ngsi.parse_query({"type": "WeatherObserved"}))
    assert total == 2
    assert [e["id"] for e in page] == [WO, "urn:ngsi-ld:WeatherObserved:device:wx-1"]
    # the Smart Data Models' expanded type IRI matches too
    iri = "https://smartdatamodels.org/dataModel.Environment/AirQualityObserved"
    page, _ = ngsi.select(found, ngsi.parse_query({"type": iri}))
    assert [e["id"] for e in page] == [AQO]
    # attrs: only those attributes, and only entities that have one of them
    page, total = ngsi.select(found, ngsi.parse_query({"attrs": "windSpeed"}))
    assert total == 1
    assert set(page[0]) == {"id", "type", "windSpeed"}
    page, total = ngsi.select(
        found, ngsi.parse_query({"id": f"{AQO},{WO}", "limit": "1", "offset": "1"})
    )
    assert (total, [e["id"] for e in page]) == (2, [WO])
    page, total = ngsi.select(found, ngsi.parse_query({"limit": "0", "count": "true"}))
    assert (page, total) == ([], 3)
    # empty list items are dropped, and an empty parameter is no filter
    assert ngsi.parse_query({"attrs": "pm25,,no2", "type": " "}).attrs == ("pm25", "no2")
    assert ngsi.parse_query({"type": " , "}).types is None
    # format decides over options (NGSI-LD 1.6+)
    assert ngsi.parse_query({"options": "keyValues", "format": "normalized"}).key_values is False
    assert ngsi.parse_query({"options": "count,simplified"}).key_values is True
    assert ngsi.parse_query({"options": "normalized,keyValues"}).key_values is True
    # unknown types and ids match nothing: an empty answer, as NGSI-LD says
    assert ngsi.select(found, ngsi.parse_query({"type": "Nope"})) == ([], 0)
    # NGSI-LD 1.5's "|" is "any of these", like ","
    page, total = ngsi.select(found, ngsi.parse_query({"type": "AirQualityObserved|Nope"}))
    assert [e["id"] for e in page] == [AQO]


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"limit": "1001"}, "limit must be an integer from 0 to 1000"),
        ({"limit": "ten"}, "limit must be an integer"),
        ({"limit": "1_0"}, "limit must be an integer from 0 to 1000, not '1_0'"),
        ({"offset": "-1"}, "offset must be an integer"),
        ({"count": "yes"}, "count must be true or false"),
        ({"options": "sysAttrs"}, "'sysAttrs' not supported"),
        ({"options": ""}, "options '' not supported"),
        ({"format": " keyValues"}, "format ' keyValues' not supported"),
        ({"q": "pm25>10"}, "parameter 'q' is not supported"),
        ({"idPattern": ".*"}, "parameter 'idPattern' is not supported"),
        ({"tpye": "AirQualityObserved"}, "unknown parameter 'tpye'"),
        ({"type": "AirQualityObserved;Alert"}, "type selection with ';' is not supported"),
        ({"type": "(A|B);C"}, "type selection with '(' ')' ';' is not supported"),
        ({"id": f"{AQO},aqo-1"}, "entity id 'aqo-1' is not a URI"),
        ({"id": "urn:x y"}, "entity id 'urn:x y' is not a URI"),
    ],
)
def test_a_bad_query_names_the_parameter(params: dict[str, str], names: str) -> None:
    with pytest.raises(ngsi.NgsiError) as caught:
        ngsi.parse_query(params)
    assert caught.value.status == 400
    assert names in caught.value.detail
    assert caught.value.problem()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


def test_retrieve_and_type_list() -> None:
    found = ngsi.entities(_state().devices.values())
    entity = ngsi.retrieve(found, AQO, ngsi.parse_retrieve({"attrs": "pm25"}))
    assert set(entity) == {"id", "type", "pm25"}
    with pytest.raises(ngsi.NgsiError) as caught:
        ngsi.retrieve(found, AQO, ngsi.parse_retrieve({"attrs": "windSpeed"}))
    assert caught.value.status == 404
    assert caught.value.kind == "ResourceNotFound"
    assert ngsi.type_list(found)["typeList"] == ["AirQualityObserved", "WeatherObserved"]


@pytest.fixture
async def client() -> AsyncIterator[TestClient[object, object]]:
    credentials = Credentials()
    credentials.add_token(VIEW_TOKEN, Principal("twin", Role.VIEWER))
    app = ConsoleApp(Hub(_state()), credentials, ListActionSink()).build()
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_the_api_needs_a_token_and_negotiates_json_ld(client: TestClient) -> None:
    url = "/ngsi-ld/v1/entities?type=AirQualityObserved"
    refused = await client.get(url)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="climastream"'
    assert await refused.json() == {
        "type": "about:blank",
        "title": "Unauthorized",
        "detail": "login required",
    }
    response = await client.get(url, headers=AUTH)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.headers["Link"] == ngsi.CONTEXT_LINK
    (entity,) = await response.json()
    assert entity["id"] == AQO
    assert "@context" not in entity
    response = await client.get(url, headers={**AUTH, "Accept": "application/ld+json"})
    assert response.content_type == "application/ld+json"
    (entity,) = await response.json(content_type="application/ld+json")
    assert entity["@context"] == [ngsi.SDM_CONTEXT, ngsi.CORE_CONTEXT]
    assert "Link" not in response.headers
    refused = await client.get(url, headers={**AUTH, "Accept": "text/html"})
    assert refused.status == 406
    # q-values decide; a tie goes to JSON-LD, which the client named
    for accept, expected in [
        ("application/ld+json;q=0.5, application/json", "application/json"),
        ("application/json;q=0.2, application/ld+json", "application/ld+json"),
        ("*/*, application/ld+json", "application/ld+json"),
        ("application/ld+json;q=0, text/html", None),
    ]:
        answer = await client.get(url, headers={**AUTH, "Accept": accept})
        if expected is None:
            assert answer.status == 406, accept
        else:
            assert answer.content_type == expected, accept


async def test_the_api_counts_retrieves_and_explains_refusals(client: TestClient) -> None:
    response = await client.get(
        "/ngsi-ld/v1/entities?limit=1&count=true&options=keyValues", headers=AUTH
    )
    assert response.headers["NGSILD-Results-Count"] == "3"
    (entity,) = await response.json()
    assert entity["pm25"] == 14.0
    response = await client.get(f"/ngsi-ld/v1/entities/{AQO}", headers=AUTH)
    assert (await response.json())["pm25"]["value"] == 14.0
    missing = await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:X:device:no", headers=AUTH)
    assert missing.status == 404
    assert (await missing.json())["type"].endswith("/ResourceNotFound")
    not_an_id = await client.get("/ngsi-ld/v1/entities/aqo-1", headers=AUTH)
    assert not_an_id.status == 400
    assert (await not_an_id.json())["type"].endswith("/BadRequestData")
    bad = await client.get("/ngsi-ld/v1/entities?type=A&type=B", headers=AUTH)
    assert bad.status == 400
    assert (await bad.json())["detail"] == "parameter 'type' given more than once"
    types = await (await client.get("/ngsi-ld/v1/types", headers=AUTH)).json()
    assert types["typeList"] == ["AirQualityObserved", "WeatherObserved"]


async def test_entities_are_rebuilt_at_most_once_a_second_while_data_flows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker paging through 10,000 entities must not rebuild them per page."""
    import console.web

    credentials = Credentials()
    credentials.add_token(VIEW_TOKEN, Principal("twin", Role.VIEWER))
    state = _state()
    app = ConsoleApp(Hub(state), credentials, ListActionSink()).build()
    url = f"/ngsi-ld/v1/entities/{AQO}?options=keyValues"
    later = T0 + timedelta(minutes=1)
    async with TestClient(TestServer(app)) as client:
        assert (await (await client.get(url, headers=AUTH)).json())["pm25"] == 14.0
        state.add_readings([reading("aq-1", "centre", 9, Quantity.PM2_5, 50.0, later)])
        # within the interval: the list built a moment ago
        assert (await (await client.get(url, headers=AUTH)).json())["pm25"] == 14.0
        monkeypatch.setattr(console.web, "NGSI_REBUILD_S", 0.0)
        assert (await (await client.get(url, headers=AUTH)).json())["pm25"] == 50.0


def _alert(fingerprint: str, **fields: Any) -> Alert:
    base: dict[str, Any] = {
        "fingerprint": fingerprint,
        "rule_id": "rule",
        "state": AlertState.FIRING,
        "severity": AlertSeverity.WARNING,
        "summary": "Something in centre",
        "started_at": T0,
        "updated_at": T0,
        "zone": "centre",
    }
    return Alert(**{**base, **fields})


def test_city_alerts_are_smart_data_models_alerts_and_operational_ones_are_not() -> None:
    pm = EvidencePoint(time=T0, value=60.0, device_id="aq-1", quantity=Quantity.PM2_5)
    temperature = EvidencePoint(time=T0, value=-3.0, quantity=Quantity.TEMPERATURE)
    alerts = [
        _alert(
            "a0000001",
            rule_id="eaqi-poor",
            kpi_id="eaqi",
            severity=AlertSeverity.CRITICAL,
            summary="Air quality is poor in centre",
            description="Reduce strenuous activity.",
            device_id="aq-1",
            location=Location(lat=50.8, lon=4.3),
            value=4.0,
            threshold=4.0,
            unit="1",
        ),
        _alert("a0000002", evidence=(pm,), labels={"kind": "rate_of_change"}),
        _alert("a0000003", kpi_id="heatwave.status"),
        _alert("a0000004", evidence=(temperature,), value=-3.0, threshold=0.0),
        _alert("a0000005", kpi_id="noise.lnight"),
        # about the monitoring itself: no Alert entity
        _alert("a0000006", labels={"kind": "stale"}, device_id="aq-1"),
        _alert("a0000007", labels={"kind": "gateway_offline"}),
        _alert("a0000008", kpi_id="completeness"),
        _alert("a0000009", kpi_id="waste.fill_level"),
    ]
    found = {e["id"].rsplit(":", 1)[1]: e for e in ngsi.entities([], [], alerts)}
    assert sorted(found) == ["a0000001", "a0000002", "a0000003", "a0000004", "a0000005"]
    eaqi = ngsi.key_values(found["a0000001"])
    assert eaqi == {
        "id": "urn:ngsi-ld:Alert:a0000001",
        "type": "Alert",
        "category": "environment",
        "subCategory": "airPollution",
        "severity": "critical",
        "description": "Air quality is poor in centre. Reduce strenuous activity.",
        "dateIssued": "2026-06-01T12:00:00Z",
        "validFrom": "2026-06-01T12:00:00Z",
        "location": {"type": "Point", "coordinates": [4.3, 50.8]},
        "areaServed": "centre",
        "alertSource": "urn:ngsi-ld:Device:aq-1",
        "data": {
            "rule": "eaqi-poor",
            "state": "firing",
            "kpi_id": "eaqi",
            "value": 4.0,
            "threshold": 4.0,
            "unit": "1",
        },
    }
    categories = {
        key: (e["category"]["value"], e.get("subCategory", {}).get("value"))
        for key, e in found.items()
    }
    assert categories == {
        "a0000001": ("environment", "airPollution"),
        "a0000002": ("environment", "airPollution"),
        "a0000003": ("weather", "heatWave"),
        "a0000004": ("weather", "lowTemperature"),
        "a0000005": ("environment", None),
    }
    assert found["a0000002"]["severity"]["value"] == "medium"


def test_the_operational_kinds_are_real_rule_kinds() -> None:
    from typing import get_args

    from stream.alerts import rules

    kinds = {
        get_args(model.model_fields["kind"].annotation)[0]
        for model in vars(rules).values()
        if isinstance(model, type)
        and hasattr(model, "model_fields")
        and "kind" in model.model_fields
        and get_args(model.model_fields["kind"].annotation)
    }
    assert kinds > ngsi.OPERATIONAL_KINDS
    assert kinds - ngsi.OPERATIONAL_KINDS == {"threshold", "rate_of_change"}


def test_a_zone_with_a_noise_laeq_kpi_is_a_noise_level_entity() -> None:
    state = _state()
    state.add_kpi(_eaqi("park", 2.0).model_copy(update={"kpi_id": "noise.laeq", "value": 61.5}))
    state.add_kpi(_eaqi("park", 2.0).model_copy(update={"kpi_id": "noise.lden", "value": 70.0}))
    found = {e["id"]: e for e in ngsi.entities(state.devices.values(), state.zone_kpis.values())}
    noise = ngsi.key_values(found["urn:ngsi-ld:NoiseLevelObserved:zone:park"])
    assert noise == {
        "id": "urn:ngsi-ld:NoiseLevelObserved:zone:park",
        "type": "NoiseLevelObserved",
        "LAeq": 61.5,
        "dateObserved": "2026-06-01T11:00:00Z/2026-06-01T12:00:00Z",
        "dateObservedFrom": "2026-06-01T11:00:00Z",
        "dateObservedTo": "2026-06-01T12:00:00Z",
        "areaServed": "park",
        "dataProvider": "climastream kpi noise.laeq version 1",
    }
    # Lden has no attribute in the model: no second entity, no wrong value
    assert [e for e in found if "NoiseLevel" in e] == ["urn:ngsi-ld:NoiseLevelObserved:zone:park"]
