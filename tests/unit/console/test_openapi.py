"""The console's OpenAPI document says what the code does.

Every route is documented and every documented operation is a route; the enums and bounds
are the code's own; each panel's schema accepts what :class:`LiveState` really renders and
refuses what it never would. Schemathesis then checks the running server against it
(``tests/integration/console/test_console_api.py``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import fields
from datetime import timedelta
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from climastream.contract import (
    Alert,
    AlertAction,
    AlertActionKind,
    AlertSeverity,
    AlertState,
    EvidencePoint,
    GatewayStatus,
    KpiValue,
    Quantity,
    SourceState,
)
from console import ngsi
from console.auth import Credentials, Principal, Role
from console.feed import ListActionSink
from console.hub import Hub
from console.state import MAX_DEVICE_SEARCH, PANELS, DeviceInfo, LiveState, StreamsView
from console.web import ACTION_KEYS, MAX_SILENCE, ConsoleApp, openapi_document
from tests.unit.console.builders import T0, reading

TOKEN = "operator-token-0123456789"
DOC = openapi_document()
SCHEMAS = DOC["components"]["schemas"]
PANEL_SCHEMAS = {
    "map": "MapSnapshot",
    "streams": "StreamsSnapshot",
    "kpi": "KpiSnapshot",
    "alerts": "AlertsSnapshot",
    "gateways": "GatewaysSnapshot",
    "stats": "StatsSnapshot",
}
METHODS = {"get", "post", "put", "patch", "delete"}


def _operator() -> Credentials:
    credentials = Credentials()
    credentials.add_token(TOKEN, Principal("olga", Role.OPERATOR))
    return credentials


def validator(ref: str) -> jsonschema.Draft202012Validator:
    """A JSON Schema 2020-12 validator (what OpenAPI 3.1 uses) for one component schema,
    with date-time formats checked."""
    schema = {"$ref": f"#/components/schemas/{ref}", "components": DOC["components"]}
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_document_is_valid_openapi_3_1() -> None:
    validate(DOC)  # raises, naming the offending part, when it is not
    assert DOC["openapi"].startswith("3.1")


def test_every_route_is_documented_and_every_operation_is_a_route() -> None:
    app = ConsoleApp(Hub(LiveState()), Credentials(), ListActionSink()).build()
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp adds HEAD to GET
    }
    documented = {
        (method, path)
        for path, item in DOC["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routes == documented


def _params(path: str) -> dict[str, dict[str, Any]]:
    """An operation's parameters by name, references resolved."""
    params = DOC["components"]["parameters"]
    resolved = (
        params[p["$ref"].rsplit("/", 1)[-1]] if "$ref" in p else p
        for p in DOC["paths"][path]["get"]["parameters"]
    )
    return {p["name"]: p for p in resolved}


def _panel_param() -> dict[str, Any]:
    ref: str = _params("/api/snapshot/{panel}")["panel"]["schema"]["$ref"]
    return SCHEMAS[ref.rsplit("/", 1)[-1]]


def test_the_streams_filter_is_documented_as_the_code_takes_it() -> None:
    assert set(_params("/api/snapshot/{panel}")) == {"panel", "zone", "device"}
    events = _params("/api/events")
    assert set(events) == {"zone", "device"}
    assert events["device"]["schema"]["maxLength"] == MAX_DEVICE_SEARCH
    streams = SCHEMAS["StreamsSnapshot"]["properties"]
    assert streams["view"]["required"] == [f.name for f in fields(StreamsView)]


def test_enums_and_bounds_are_the_codes_own() -> None:
    assert _panel_param()["enum"] == list(PANELS)
    assert set(PANEL_SCHEMAS) == set(PANELS)
    assert SCHEMAS["ActionKind"]["enum"] == [k.value for k in AlertActionKind]
    action = SCHEMAS["ActionRequest"]
    assert set(action["properties"]) == ACTION_KEYS
    assert action["properties"]["minutes"]["maximum"] == MAX_SILENCE.total_seconds() // 60
    model = AlertAction.model_json_schema()["properties"]
    path_fingerprint = DOC["paths"]["/api/alerts/{fingerprint}/actions"]["post"]["parameters"][0]
    assert path_fingerprint["schema"]["pattern"] == model["fingerprint"]["pattern"]
    assert action["properties"]["comment"]["maxLength"] == model["comment"]["maxLength"]
    view = SCHEMAS["AlertView"]["properties"]
    assert view["fingerprint"]["pattern"] == model["fingerprint"]["pattern"]
    assert view["state"]["enum"] == [s.value for s in AlertState]
    assert view["severity"]["enum"] == [s.value for s in AlertSeverity]
    gateway = SCHEMAS["GatewaysSnapshot"]["properties"]["gateways"]["items"]["properties"]
    assert gateway["sources"]["additionalProperties"]["enum"] == [s.value for s in SourceState]
    me = DOC["paths"]["/api/me"]["get"]["responses"]["200"]["content"]["application/json"]
    assert me["schema"]["properties"]["role"]["enum"] == [r.value for r in Role]


def test_ngsi_ld_enums_and_bounds_are_the_codes_own() -> None:
    query = {p.get("name"): p for p in DOC["paths"]["/ngsi-ld/v1/entities"]["get"]["parameters"]}
    params = DOC["components"]["parameters"]
    limit = query["limit"]["schema"]
    assert (limit["maximum"], limit["default"]) == (ngsi.MAX_LIMIT, ngsi.DEFAULT_LIMIT)
    assert set(params["NgsiFormat"]["schema"]["enum"]) == ngsi.OPTIONS
    option = params["NgsiOptions"]["schema"]["pattern"]
    assert set(option.split(")(")[0].strip("^(").split("|")) == ngsi.OPTIONS | {"count"}
    documented = {
        p["name"] if "name" in p else params[p["$ref"].rsplit("/", 1)[-1]]["name"]
        for p in DOC["paths"]["/ngsi-ld/v1/entities"]["get"]["parameters"]
    }
    assert documented == ngsi.QUERY_PARAMETERS
    types = list(ngsi.ENTITY_TYPES)
    assert SCHEMAS["NgsiEntity"]["properties"]["type"]["enum"] == types
    # entity ids: the document's pattern is the code's, alone or as list items
    retrieve = DOC["paths"]["/ngsi-ld/v1/entities/{entity_id}"]["get"]["parameters"]
    assert retrieve[0]["schema"]["pattern"] == f"^{ngsi.URI_TEXT}$"
    space = r"[ \t\n\r\f\v]*"
    assert ngsi.SPACE == " \t\n\r\f\v"  # the characters that class names, no more
    item = ngsi.URI_TEXT.removesuffix(r"[^ \t\n\r\f\v]*") + r"[^ \t\n\r\f\v,]*"
    assert query["id"]["schema"]["pattern"] == (
        f"^{space}({item})?{space}(,{space}({item})?{space})*$"
    )
    assert SCHEMAS["NgsiTypeList"]["properties"]["typeList"]["items"]["enum"] == types


def test_comment_pattern_is_the_contracts_single_line_rule() -> None:
    """The comment pattern refuses exactly the characters SafeText refuses."""
    pattern = re.compile(SCHEMAS["ActionRequest"]["properties"]["comment"]["pattern"])
    for code in range(0x3000):
        char = chr(code)
        try:
            AlertAction(
                fingerprint="0123456789abcdef",
                action=AlertActionKind.ACKNOWLEDGE,
                actor="olga",
                at=T0,
                comment=f"ok {char}",
            )
            accepted = True
        except ValueError:
            accepted = False
        assert (pattern.fullmatch(f"ok {char}") is not None) == accepted, hex(code)


def _kpi(kpi_id: str, zone: str, value: float, unit: str, **extra: Any) -> KpiValue:
    return KpiValue(
        kpi_id=kpi_id,
        kpi_version="1",
        zone=zone,
        window_start=T0 - timedelta(minutes=1),
        window_end=T0,
        value=value,
        unit=unit,
        sample_count=10,
        completeness=0.9,
        **extra,
    )


def _alert(fingerprint: str, state: AlertState, **extra: Any) -> Alert:
    return Alert(
        fingerprint=fingerprint,
        rule_id="pm25-high",
        state=state,
        severity=AlertSeverity.WARNING,
        summary="PM2.5 high in centre",
        started_at=T0,
        updated_at=T0,
        **extra,
    )


def populated_state() -> LiveState:
    """A state with something in every field a panel can show, and the null cases too."""
    state = LiveState([DeviceInfo("quiet-1", zone="park", lat=50.9, lon=4.4)], clock=lambda: T0)
    state.add_readings(
        [
            reading("pm-1", "centre", 1, Quantity.PM2_5, 60.0),
            reading("t-1", "centre", 1, Quantity.TEMPERATURE, 25.0),
            reading("t-2", "park", 1, Quantity.TEMPERATURE, 21.5),
            reading("rh-3", "harbour", 1, Quantity.RELATIVE_HUMIDITY, 70.0),
        ]
    )
    state.add_kpi(_kpi("eaqi", "centre", 4.0, "1", band="poor"))
    state.add_kpi(_kpi("eaqi", "harbour", 2.0, "1", attributes={"dominant_pollutant": "o3"}))
    state.add_kpi(_kpi("uhi.intensity", "centre", 3.5, "Cel", quantity=Quantity.TEMPERATURE))
    state.add_kpi(_kpi("heat.heat_index", "centre", 31.0, "Cel"))
    state.add_kpi(_kpi("noise.laeq", "centre", 62.5, "dB(A)", quantity=Quantity.NOISE_LAEQ))
    state.add_kpi(_kpi("completeness", "park", 0.5, "1"))
    state.add_alert(
        _alert(
            "00000000aaaaaaaa",
            AlertState.FIRING,
            zone="centre",
            value=60.0,
            threshold=50.0,
            unit="ug/m3",
            completeness=0.9,
            evidence=(
                EvidencePoint(time=T0, value=60.0, device_id="pm-1", quantity=Quantity.PM2_5),
            ),
        )
    )
    state.add_alert(_alert("00000000bbbbbbbb", AlertState.FIRING))
    state.add_alert(_alert("00000000bbbbbbbb", AlertState.RESOLVED))
    state.add_gateway_status(
        GatewayStatus(
            gateway_id="gw-1",
            time=T0,
            software_version="0.1.0",
            uptime_s=10.0,
            buffer_depth=5,
            buffer_bytes=1200,
            buffer_capacity_bytes=10**9,
            buffer_oldest_age_s=2.5,
            outage_capacity_hours=71.5,
            dropped={"buffer_full": 2},
            decode_errors={"bad_crc": 1},
            sources={"serial-1": SourceState.UP, "lora": SourceState.DOWN},
        )
    )
    state.add_gateway_status(
        GatewayStatus(
            gateway_id="gw-2",
            time=T0 - timedelta(hours=1),
            software_version="0.1.0",
            uptime_s=10.0,
            buffer_depth=0,
            buffer_bytes=0,
            buffer_capacity_bytes=0,
        )
    )
    return state


def _wire(state: LiveState, panel: str) -> Any:
    """The panel as the server sends it (orjson, as Hub.render)."""
    return orjson.loads(orjson.dumps(state.snapshot(panel)))


@pytest.mark.parametrize("panel", PANELS)
def test_each_panel_matches_its_schema_and_only_its_schema(panel: str) -> None:
    response = DOC["paths"]["/api/snapshot/{panel}"]["get"]["responses"]["200"]
    one_of = response["content"]["application/json"]["schema"]
    for state in (LiveState(clock=lambda: T0), populated_state()):
        snapshot = _wire(state, panel)
        validator(PANEL_SCHEMAS[panel]).validate(snapshot)
        # the response's oneOf: exactly one alternative holds, so a client can tell
        matching = [
            alt["$ref"]
            for alt in one_of["oneOf"]
            if validator(alt["$ref"].rsplit("/", 1)[-1]).is_valid(snapshot)
        ]
        assert matching == [f"#/components/schemas/{PANEL_SCHEMAS[panel]}"]


def test_the_populated_state_reaches_every_optional_shape() -> None:
    """The fixture above is worth its name: tiles from KPIs and from readings, nulls,
    evidence, resolved alerts and gateways with and without buffer figures."""
    state = populated_state()
    kpi = _wire(state, "kpi")["zones"]
    assert kpi["centre"]["eaqi"]["source"] == "kpi"
    assert kpi["park"]["uhi"]["source"] == "readings"
    assert kpi["park"]["eaqi"] is None
    assert kpi["park"]["completeness"]["unit"] == "1"
    assert kpi["centre"]["completeness"]["kpis"] >= 1
    assert kpi["centre"]["traffic"] is None
    alerts = _wire(state, "alerts")
    assert alerts["active"][0]["evidence"]
    assert alerts["resolved"]
    gateways = {g["gateway_id"]: g for g in _wire(state, "gateways")["gateways"]}
    assert gateways["gw-2"]["outage_capacity_hours"] is None
    assert gateways["gw-1"]["outage_capacity_hours"] == 71.5
    devices = {d["id"]: d for d in _wire(state, "map")["devices"]}
    assert devices["quiet-1"]["last_seen"] is None
    assert _wire(state, "streams")["rows"]


@pytest.mark.parametrize(
    ("panel", "break_it"),
    [
        ("map", lambda s: s["devices"][0].pop("stale")),
        ("map", lambda s: s["devices"][0].update(lat=91.0)),
        ("streams", lambda s: s["rows"][0]["points"].append([1.0])),
        ("kpi", lambda s: s["zones"]["centre"].update(wind="calm")),
        ("alerts", lambda s: s["active"][0].update(state="burning")),
        ("alerts", lambda s: s["active"][0].update(started_at="yesterday")),
        ("gateways", lambda s: s["gateways"][0]["sources"].update(x="flaky")),
        ("stats", lambda s: s["counts"].update(readings=-1)),
    ],
)
def test_panel_schemas_refuse_what_the_console_never_sends(panel: str, break_it: Any) -> None:
    snapshot = copy.deepcopy(_wire(populated_state(), panel))
    break_it(snapshot)
    assert not validator(PANEL_SCHEMAS[panel]).is_valid(snapshot)


async def test_the_document_is_served_without_login() -> None:
    app = ConsoleApp(Hub(LiveState()), _operator(), ListActionSink()).build()
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/api/openapi.json")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == DOC
        # and a typo'd panel is a JSON error like every other /api/ error
        response = await client.get(
            "/api/snapshot/mapp", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status == 404
        assert response.content_type == "application/json"
        assert "unknown panel 'mapp'" in (await response.json())["error"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "body must be JSON"),
        (b"[1]", "body must be a JSON object"),
        (b'{"action": "silence", "minute": 30}', "unknown key(s) 'minute'"),
        (b'{"action": "acknowledge", "minutes": 30}', "minutes applies only to action 'silence'"),
        (b'{"action": "silence", "minutes": true}', "minutes must be an integer from 1 to 10080"),
        (b'{"action": "silence", "minutes": 10081}', "minutes must be an integer from 1 to"),
        (b'{"action": "silence", "minutes": 1.5}', "minutes must be an integer from 1 to"),
        (b'{"action": "acknowledge", "comment": null}', "invalid action: comment"),
        (b'{"action": "acknowledge", "comment": "a\\nb"}', "invalid action: comment"),
        (b'{"action": "close"}', "invalid action: action"),
    ],
)
async def test_bad_action_bodies_are_refused_naming_what_is_wrong(body: bytes, error: str) -> None:
    sink = ListActionSink()
    app = ConsoleApp(Hub(LiveState()), _operator(), sink).build()
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/api/alerts/0123456789abcdef/actions",
            data=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        assert response.status == 400
        assert response.content_type == "application/json"
        assert error in (await response.json())["error"]
    assert sink.actions == []


async def test_an_unreadable_login_form_is_a_400_not_a_server_error() -> None:
    """Schemathesis found this: multipart/form-data without a boundary made aiohttp's form
    parser raise inside the handler (500)."""
    app = ConsoleApp(Hub(LiveState()), _operator(), ListActionSink()).build()
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/login",
            data=b"token=x",
            headers={"Content-Type": "multipart/form-data"},
            allow_redirects=False,
        )
        assert response.status == 400
        assert "boundary" in await response.text()


async def test_a_silence_of_days_is_sent_with_its_end() -> None:
    """Up to 7 days; 30.0 is JSON Schema's integer 30, as the OpenAPI document says."""
    sink = ListActionSink()
    state = LiveState(clock=lambda: T0)
    app = ConsoleApp(Hub(state), _operator(), sink).build()
    async with TestClient(TestServer(app)) as client:
        for minutes in (10080, 30.0):
            response = await client.post(
                "/api/alerts/0123456789abcdef/actions",
                json={"action": "silence", "minutes": minutes},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status == 202, await response.text()
    assert [a.until for a in sink.actions] == [T0 + MAX_SILENCE, T0 + timedelta(minutes=30)]
