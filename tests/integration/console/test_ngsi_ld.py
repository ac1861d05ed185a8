"""The console as an NGSI-LD context source: readings on the real broker come out of its
NGSI-LD API as Smart Data Models entities, with the values, units and times they were
sent with.

Schemathesis checks the same three operations against the OpenAPI document in
``test_console_api.py``; this test checks what they say against what was produced.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from climastream.contract import (
    AlertState,
    KpiValue,
    Location,
    Quantity,
    Reading,
    ReadingBatch,
    Topics,
    encode,
)
from climastream.quantities import CANONICAL_UNITS
from climastream.stack import Stack
from tests.integration.console.conftest import VIEWER_TOKEN
from tests.integration.console.helpers import firing_alert, produce

pytestmark = pytest.mark.integration


def _get(
    url: str, accept: str = "application/json", token: str | None = VIEWER_TOKEN
) -> tuple[int, dict[str, str], Any]:
    headers = {"Accept": accept}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), orjson.loads(error.read())


def _batch(device: str, seq: int, at: datetime, pm25: float, celsius: float) -> ReadingBatch:
    values = [
        (Quantity.PM2_5, pm25),
        (Quantity.TEMPERATURE, celsius),
        (Quantity.RELATIVE_HUMIDITY, 71.0),
        (Quantity.WIND_SPEED, 4.5),
    ]
    return ReadingBatch(
        gateway_id="gw-ngsi",
        readings=tuple(
            Reading(
                device_id=device,
                gateway_id="gw-ngsi",
                seq=seq * 10 + i,
                quantity=quantity,
                value=value,
                unit=CANONICAL_UNITS[quantity],
                event_time=at,
                ingest_time=at,
                zone="north",
                location=Location(lat=50.8671, lon=4.3512),
            )
            for i, (quantity, value) in enumerate(values)
        ),
    )


async def _send(stack: Stack, batch: ReadingBatch) -> None:
    await produce(stack.config.kafka_bootstrap, Topics.READINGS.name, [(batch.key, encode(batch))])


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


async def test_readings_come_out_as_smart_data_models_entities(
    console_url: str, stack: Stack
) -> None:
    device = f"ngsi-{uuid.uuid4().hex[:6]}"
    aqo_url = f"{console_url}/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:device:{device}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    # until the console's consumer has joined, a record may land before its backfill: send
    # until the node shows up, then the batch the assertions are about
    deadline = time.monotonic() + 60
    seq = 0
    while _get(aqo_url)[0] != 200:
        if time.monotonic() > deadline:
            pytest.fail(f"{device} did not show up in the NGSI-LD API within 60 s")
        await _send(stack, _batch(device, seq, start + timedelta(seconds=seq), 5.0, 10.0))
        seq += 1
        await asyncio.sleep(1.0)
    final_at = start + timedelta(seconds=seq + 5)
    await _send(stack, _batch(device, seq, final_at, 23.5, 18.25))
    deadline = time.monotonic() + 30
    while True:
        status, headers, entity = _get(aqo_url)
        if entity["pm25"]["value"] == 23.5:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the last batch did not reach the entity within 30 s: {entity}")
        await asyncio.sleep(0.5)

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in headers["Link"]
    observed = _iso(final_at)
    assert entity["id"] == f"urn:ngsi-ld:AirQualityObserved:device:{device}"
    assert entity["type"] == "AirQualityObserved"
    assert entity["pm25"] == {
        "type": "Property",
        "value": 23.5,
        "unitCode": "GQ",
        "observedAt": observed,
    }
    assert entity["temperature"]["value"] == 18.25
    assert entity["temperature"]["unitCode"] == "CEL"
    assert entity["relativeHumidity"]["value"] == 0.71
    assert entity["dateObserved"]["value"]["@value"] == observed
    assert entity["location"]["value"] == {"type": "Point", "coordinates": [4.3512, 50.8671]}
    assert entity["areaServed"]["value"] == "north"
    assert entity["refDevice"]["object"] == f"urn:ngsi-ld:Device:{device}"
    assert "windSpeed" not in entity  # wind belongs to the weather entity

    # the same node as a weather station, simplified, found by a query
    wo_id = f"urn:ngsi-ld:WeatherObserved:device:{device}"
    status, headers, found = _get(
        f"{console_url}/ngsi-ld/v1/entities?type=WeatherObserved&id={wo_id}"
        "&options=keyValues&count=true"
    )
    assert status == 200
    assert headers["NGSILD-Results-Count"] == "1"
    assert found == [
        {
            "id": wo_id,
            "type": "WeatherObserved",
            "temperature": 18.25,
            "relativeHumidity": 0.71,
            "windSpeed": 4.5,
            "dateObserved": observed,
            "location": {"type": "Point", "coordinates": [4.3512, 50.8671]},
            "areaServed": "north",
            "refDevice": f"urn:ngsi-ld:Device:{device}",
        }
    ]
    # JSON-LD: the @context in the body
    status, headers, (ld,) = _get(
        f"{console_url}/ngsi-ld/v1/entities?id={wo_id}&attrs=windSpeed", "application/ld+json"
    )
    assert headers["Content-Type"].startswith("application/ld+json")
    assert set(ld) == {"id", "type", "windSpeed", "@context"}
    assert "https://smartdatamodels.org/context.jsonld" in ld["@context"]
    # a filter this source cannot apply is refused, by name
    status, _, problem = _get(f"{console_url}/ngsi-ld/v1/entities?q=pm25>10")
    assert status == 400
    assert problem["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    assert "'q'" in problem["detail"]
    # and nobody reads it without a token
    assert _get(aqo_url, token=None)[0] == 401


async def test_a_zones_eaqi_kpi_comes_out_as_its_air_quality_entity(
    console_url: str, stack: Stack
) -> None:
    zone = f"ngsi-zone-{uuid.uuid4().hex[:6]}"
    url = f"{console_url}/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:zone:{zone}"
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    kpi = KpiValue(
        kpi_id="eaqi",
        kpi_version="1",
        zone=zone,
        window_start=end - timedelta(hours=1),
        window_end=end,
        value=4.0,
        unit="1",
        sample_count=360,
        completeness=0.98,
        band="poor",
    )
    noise = kpi.model_copy(
        update={"kpi_id": "noise.laeq", "window_start": end - timedelta(minutes=1), "value": 58.5}
    )
    noise_url = f"{console_url}/ngsi-ld/v1/entities/urn:ngsi-ld:NoiseLevelObserved:zone:{zone}"
    records = [(kpi.key, encode(kpi)), (noise.key, encode(noise))]
    deadline = time.monotonic() + 60
    while (answer := _get(url + "?options=keyValues"))[0] != 200 or _get(noise_url)[0] != 200:
        if time.monotonic() > deadline:
            pytest.fail(f"zone {zone} did not show up in the NGSI-LD API within 60 s")
        # resent until the console's consumer has joined (a KPI is an upsert: same value)
        await produce(stack.config.kafka_bootstrap, Topics.KPI.name, records)
        await asyncio.sleep(1.0)
    level = _get(noise_url)[2]
    assert level["LAeq"] == {
        "type": "Property",
        "value": 58.5,
        "unitCode": "2N",
        "observedAt": _iso(end),
    }
    assert level["dateObservedFrom"]["value"]["@value"] == _iso(end - timedelta(minutes=1))
    assert answer[2] == {
        "id": f"urn:ngsi-ld:AirQualityObserved:zone:{zone}",
        "type": "AirQualityObserved",
        "airQualityIndex": 4,
        "airQualityLevel": "poor",
        "dateObserved": _iso(end),
        "areaServed": zone,
        "dataProvider": "climastream kpi eaqi version 1",
    }


async def test_a_firing_alert_comes_out_as_an_alert_entity(console_url: str, stack: Stack) -> None:
    kafka = stack.config.kafka_bootstrap
    alert = firing_alert()  # PM2.5 poor in centre, with PM2.5 evidence
    url = f"{console_url}/ngsi-ld/v1/entities/urn:ngsi-ld:Alert:{alert.fingerprint}"
    deadline = time.monotonic() + 60
    while (answer := _get(url + "?options=keyValues"))[0] != 200:
        if time.monotonic() > deadline:
            pytest.fail(f"alert {alert.fingerprint} did not show up within 60 s")
        await produce(
            stack.config.kafka_bootstrap, Topics.ALERTS.name, [(alert.key, encode(alert))]
        )
        await asyncio.sleep(1.0)
    entity = answer[2]
    assert entity["category"] == "environment"
    assert entity["subCategory"] == "airPollution"
    assert entity["severity"] == "medium"
    assert entity["alertSource"] == "urn:ngsi-ld:Device:pm-centre-1"
    assert entity["dateIssued"] == _iso(alert.started_at)
    assert entity["data"]["state"] == "firing"
    # resolved: it leaves the list
    resolved = alert.model_copy(
        update={"state": AlertState.RESOLVED, "updated_at": datetime.now(UTC)}
    )
    await produce(kafka, Topics.ALERTS.name, [(alert.key, encode(resolved))])
    deadline = time.monotonic() + 30
    while _get(url)[0] != 404:
        if time.monotonic() > deadline:
            pytest.fail("the resolved alert is still an entity after 30 s")
        await asyncio.sleep(0.5)
