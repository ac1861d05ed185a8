"""NGSI-LD entities of the FIWARE Smart Data Models, for what the console knows now.

The CLIMABOROUGH architecture asks for open standards, and NGSI-LD with the Smart Data
Models is the EU's MIM1 interoperability mechanism. The console therefore answers the
read-only part of the NGSI-LD API (ETSI GS CIM 009) for its live picture of the city, as
a *context source*: a city's context broker (Orion-LD, Scorpio, Stellio) can register it,
or a digital twin can query it directly with a viewer token.

Each sensor node becomes up to two entities, one per Smart Data Model whose quantities it
measures:

- ``AirQualityObserved`` (``urn:ngsi-ld:AirQualityObserved:device:<device>``) for a node
  with any pollutant (PM1, PM2.5, PM10, NO2, O3, SO2, CO, CO2); its temperature and
  humidity ride along, as in the model's own example;
- ``WeatherObserved`` (``urn:ngsi-ld:WeatherObserved:device:<device>``) for a node with
  any weather quantity (temperature, humidity, dew point, pressure, wind, precipitation,
  solar radiation, illuminance, visibility).

Each zone with an ``eaqi`` KPI from the stream job becomes an ``AirQualityObserved``
(``urn:ngsi-ld:AirQualityObserved:zone:<zone>``) with ``airQualityIndex`` (the European
AQI band, 1-6) and ``airQualityLevel`` (its name); each zone with a ``noise.laeq`` KPI a
``NoiseLevelObserved`` (``urn:ngsi-ld:NoiseLevelObserved:zone:<zone>``) with ``LAeq`` over
the KPI's window (``dateObservedFrom`` / ``dateObservedTo``). The ``device:`` and ``zone:``
parts keep node and zone ids apart whatever a device is called.

Each active alert about the city's environment or weather (air pollution, heat, noise,
wind, rain; not the operational ones such as a silent sensor or a gateway offline) is an
``Alert`` (``urn:ngsi-ld:Alert:<fingerprint>``) with the model's ``category``,
``subCategory`` where one fits, ``severity``, ``dateIssued``/``validFrom`` (when it started
firing), ``description``, ``location``, ``areaServed`` and ``alertSource`` (the device).
It leaves the list when the alert resolves.

Every measured attribute is a Property with the node's newest value, its UN/CEFACT
``unitCode`` and ``observedAt`` (the reading's event time). ``dateObserved`` is the newest
of those times, ``location`` a GeoJSON point, ``areaServed`` the zone and ``refDevice`` a
Relationship to ``urn:ngsi-ld:Device:<device>``. Relative humidity is a fraction (0-1), as
both models define it; every other value keeps its canonical unit.

This module is pure. :func:`entities` builds entities from
:class:`~console.state.DeviceInfo` and :class:`~climastream.contract.KpiValue`;
:func:`parse_query`, :func:`select` and :func:`retrieve` answer a request's parameters.
The HTTP side lives in :mod:`console.web`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from climastream.contract import Alert, AlertSeverity, KpiValue, Quantity
from console.state import DeviceInfo
from stream.formulas import BANDS

CORE_CONTEXT: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
#: the Smart Data Models' combined @context: defines every attribute name used here
SDM_CONTEXT: Final = "https://smartdatamodels.org/context.jsonld"
#: what an ``application/json`` answer carries instead of an ``@context`` member
CONTEXT_LINK: Final = (
    f'<{SDM_CONTEXT}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
)
ERRORS: Final = "https://uri.etsi.org/ngsi-ld/errors/"
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class Attribute:
    """How one climastream quantity appears in a Smart Data Model."""

    name: str
    #: UN/CEFACT common code of the value's unit
    unit_code: str
    #: value = reading value x scale (relative humidity: % -> fraction)
    scale: float = 1.0

    def convert(self, value: float) -> float:
        if self.scale == 1.0:
            return value
        # 0.7 % x 0.01 is 0.006999999999999999 in binary floating point: six decimals of a
        # fraction are far below any sensor's resolution
        return round(value * self.scale, 6)


_TEMPERATURE = Attribute("temperature", "CEL")
_HUMIDITY = Attribute("relativeHumidity", "C62", 0.01)

#: entity type -> quantity -> attribute
MODELS: Final[dict[str, dict[Quantity, Attribute]]] = {
    "AirQualityObserved": {
        Quantity.PM1: Attribute("pm1", "GQ"),
        Quantity.PM2_5: Attribute("pm25", "GQ"),
        Quantity.PM10: Attribute("pm10", "GQ"),
        Quantity.NO2: Attribute("no2", "GQ"),
        Quantity.O3: Attribute("o3", "GQ"),
        Quantity.SO2: Attribute("so2", "GQ"),
        Quantity.CO: Attribute("co", "GP"),
        Quantity.CO2: Attribute("co2", "59"),
        Quantity.TEMPERATURE: _TEMPERATURE,
        Quantity.RELATIVE_HUMIDITY: _HUMIDITY,
    },
    "WeatherObserved": {
        Quantity.TEMPERATURE: _TEMPERATURE,
        Quantity.RELATIVE_HUMIDITY: _HUMIDITY,
        Quantity.DEW_POINT: Attribute("dewPoint", "CEL"),
        Quantity.PRESSURE: Attribute("atmosphericPressure", "A97"),
        Quantity.WIND_SPEED: Attribute("windSpeed", "MTS"),
        Quantity.WIND_GUST: Attribute("gustSpeed", "MTS"),
        Quantity.WIND_DIRECTION: Attribute("windDirection", "DD"),
        Quantity.PRECIPITATION: Attribute("precipitation", "MMT"),
        Quantity.SOLAR_RADIATION: Attribute("solarRadiation", "D54"),
        Quantity.ILLUMINANCE: Attribute("illuminance", "LUX"),
        Quantity.VISIBILITY: Attribute("visibility", "MTR"),
    },
}
#: the quantities that make a node an entity of the type: a thermometer is a weather
#: station, not an air-quality station
DEFINING: Final[dict[str, frozenset[Quantity]]] = {
    "AirQualityObserved": frozenset(MODELS["AirQualityObserved"])
    - {Quantity.TEMPERATURE, Quantity.RELATIVE_HUMIDITY},
    "WeatherObserved": frozenset(MODELS["WeatherObserved"]),
}
_POLLUTANTS: Final = DEFINING["AirQualityObserved"]
#: Smart Data Models' Alert severity for ours
ALERT_SEVERITY: Final = {
    AlertSeverity.INFO: "informational",
    AlertSeverity.WARNING: "medium",
    AlertSeverity.CRITICAL: "critical",
}
#: rule kinds about the monitoring itself, not about the city: no Alert entity
OPERATIONAL_KINDS: Final = frozenset({"stale", "gateway_offline", "anomaly"})
#: every entity type this source serves
ENTITY_TYPES: Final = (*MODELS, "NoiseLevelObserved", "Alert")
OPTIONS: Final = frozenset({"keyValues", "simplified", "normalized"})
#: parameters whose filter this source cannot apply: refusing them beats answering as if
#: they had not been asked
UNSUPPORTED: Final = frozenset(
    {
        "q",
        "idPattern",
        "georel",
        "geometry",
        "coordinates",
        "geoproperty",
        "csf",
        "scopeQ",
        "pick",
        "omit",
        "expandValues",
        "datasetId",
        "join",
        "joinLevel",
        "containedBy",
    }
)
#: accepted and without effect here: every entity is local, none has a language map
IGNORED: Final = frozenset({"local", "lang"})
QUERY_PARAMETERS: Final = frozenset(
    {"type", "id", "attrs", "limit", "offset", "count", "options", "format"}
)


class NgsiError(Exception):
    """A request this source refuses, as an NGSI-LD ProblemDetails."""

    def __init__(self, status: int, kind: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail

    def problem(self) -> dict[str, Any]:
        return {"type": ERRORS + self.kind, "title": self.title, "detail": self.detail}


def bad_request(detail: str) -> NgsiError:
    return NgsiError(400, "BadRequestData", "Bad request data", detail)


def entity_id(entity_type: str, device_id: str) -> str:
    return f"urn:ngsi-ld:{entity_type}:device:{device_id}"


def zone_entity_id(entity_type: str, zone: str) -> str:
    return f"urn:ngsi-ld:{entity_type}:zone:{zone}"


def _property(value: Any, **meta: str) -> dict[str, Any]:
    """An NGSI-LD Property; ``meta``: ``unitCode``, ``observedAt``."""
    return {"type": "Property", "value": value, **meta}


def _datetime(iso: str) -> dict[str, Any]:
    """A Property whose value is an NGSI-LD DateTime (what keyValues flattens to ``iso``)."""
    return _property({"@type": "DateTime", "@value": iso})


def _point(lat: float, lon: float) -> dict[str, Any]:
    """A GeoProperty: a GeoJSON point, longitude first."""
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def _device(device_id: str) -> dict[str, Any]:
    """A Relationship to the device's own entity."""
    return {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{device_id}"}


def _provider(kpi: KpiValue) -> dict[str, Any]:
    """Which KPI and version made the entity: traceable to the algorithm (ISO 37114 draft)."""
    return _property(f"climastream kpi {kpi.kpi_id} version {kpi.kpi_version}")


def _camel(band: str) -> str:
    """``very_poor`` -> ``veryPoor``, as Smart Data Models spell enumerations."""
    first, *rest = band.split("_")
    return first + "".join(part.capitalize() for part in rest)


#: EAQI band names in the models' spelling, by index 1-6
AIR_QUALITY_LEVELS: Final = tuple(_camel(band) for band in BANDS)


def zone_air_quality(kpi: KpiValue) -> dict[str, Any]:
    """A zone's ``AirQualityObserved`` from the stream's ``eaqi`` KPI (the value is the
    European AQI band index; the hour's window end is when it was observed)."""
    index = max(1, min(len(AIR_QUALITY_LEVELS), round(kpi.value)))
    observed = _iso(kpi.window_end)
    assert kpi.zone is not None
    return {
        "id": zone_entity_id("AirQualityObserved", kpi.zone),
        "type": "AirQualityObserved",
        "airQualityIndex": _property(index, observedAt=observed),
        "airQualityLevel": _property(AIR_QUALITY_LEVELS[index - 1], observedAt=observed),
        "dateObserved": _datetime(observed),
        "areaServed": _property(kpi.zone),
        "dataProvider": _provider(kpi),
    }


def zone_noise(kpi: KpiValue) -> dict[str, Any]:
    """A zone's ``NoiseLevelObserved`` from the stream's ``noise.laeq`` KPI: the energetic
    mean level over the KPI's window, which is the observation period."""
    assert kpi.zone is not None
    start, end = _iso(kpi.window_start), _iso(kpi.window_end)
    return {
        "id": zone_entity_id("NoiseLevelObserved", kpi.zone),
        "type": "NoiseLevelObserved",
        "LAeq": _property(kpi.value, unitCode="2N", observedAt=end),
        "dateObserved": _property(f"{start}/{end}"),
        "dateObservedFrom": _datetime(start),
        "dateObservedTo": _datetime(end),
        "areaServed": _property(kpi.zone),
        "dataProvider": _provider(kpi),
    }


#: zone-scoped KPI id -> the entity it makes
ZONE_ENTITIES: Final = {"eaqi": zone_air_quality, "noise.laeq": zone_noise}


def alert_category(alert: Alert) -> tuple[str, str | None] | None:
    """(``category``, ``subCategory`` or None) of the Smart Data Models' Alert, or None for
    an alert about the monitoring itself (a silent sensor, a gateway offline)."""
    kpi = alert.kpi_id or ""
    if alert.labels.get("kind") in OPERATIONAL_KINDS or kpi == "completeness":
        return None
    quantities = {p.quantity for p in alert.evidence if p.quantity is not None}
    if kpi.startswith("eaqi") or quantities & _POLLUTANTS:
        return "environment", "airPollution"
    if kpi.startswith("heatwave"):
        return "weather", "heatWave"
    if kpi.startswith(("uhi.", "heat.")) or Quantity.TEMPERATURE in quantities:
        if alert.value is not None and alert.threshold is not None:
            above = alert.value >= alert.threshold
            return "weather", "highTemperature" if above else "lowTemperature"
        return "weather", None
    if kpi.startswith("noise.") or Quantity.NOISE_LAEQ in quantities:
        return "environment", None
    if quantities & {Quantity.WIND_SPEED, Quantity.WIND_GUST}:
        return "weather", "wind"
    if Quantity.PRECIPITATION in quantities:
        return "weather", "rainfall"
    if kpi.startswith("traffic."):
        return "traffic", None
    return None


def alert_entity(alert: Alert) -> dict[str, Any] | None:
    """An active alert as a Smart Data Models ``Alert``; None for an operational one."""
    category = alert_category(alert)
    if category is None:
        return None
    started = _iso(alert.started_at)
    entity: dict[str, Any] = {
        "id": f"urn:ngsi-ld:Alert:{alert.fingerprint}",
        "type": "Alert",
        "category": _property(category[0]),
    }
    if category[1] is not None:
        entity["subCategory"] = _property(category[1])
    text = alert.summary + (f". {alert.description}" if alert.description else "")
    entity["severity"] = _property(ALERT_SEVERITY[alert.severity])
    entity["description"] = _property(text)
    entity["dateIssued"] = _datetime(started)
    entity["validFrom"] = _datetime(started)
    if alert.location is not None:
        entity["location"] = _point(alert.location.lat, alert.location.lon)
    if alert.zone:
        entity["areaServed"] = _property(alert.zone)
    if alert.device_id:
        entity["alertSource"] = _device(alert.device_id)
    data: dict[str, Any] = {"rule": alert.rule_id, "state": alert.state.value}
    for key in ("kpi_id", "value", "threshold", "unit"):
        if getattr(alert, key) is not None:
            data[key] = getattr(alert, key)
    entity["data"] = _property(data)
    return entity


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def device_entities(device: DeviceInfo) -> list[dict[str, Any]]:
    """The node's entities in normalized form, one per model it measures for."""
    measured: dict[Quantity, tuple[float, datetime]] = {}
    for name, (value, _unit) in device.latest.items():
        when = device.observed.get(name)
        try:
            quantity = Quantity(name)
        except ValueError:
            continue
        if when is not None:
            measured[quantity] = (value, when)
    out = []
    for entity_type, attributes in MODELS.items():
        if not DEFINING[entity_type] & measured.keys():
            continue
        entity: dict[str, Any] = {"id": entity_id(entity_type, device.device_id)}
        entity["type"] = entity_type
        newest: datetime | None = None
        for quantity, attribute in attributes.items():
            if quantity not in measured:
                continue
            value, when = measured[quantity]
            newest = when if newest is None or when > newest else newest
            entity[attribute.name] = _property(
                attribute.convert(value), unitCode=attribute.unit_code, observedAt=_iso(when)
            )
        assert newest is not None  # a defining quantity was measured
        entity["dateObserved"] = _datetime(_iso(newest))
        if device.lat is not None and device.lon is not None:
            entity["location"] = _point(device.lat, device.lon)
        if device.zone:
            entity["areaServed"] = _property(device.zone)
        entity["refDevice"] = _device(device.device_id)
        out.append(entity)
    return out


def entities(
    devices: Iterable[DeviceInfo],
    zone_kpis: Iterable[KpiValue] = (),
    alerts: Iterable[Alert] = (),
) -> list[dict[str, Any]]:
    """Every node's, zone's and active alert's entities, ordered by id (so pages are
    stable).

    ``zone_kpis``: the newest zone-scoped KPI values; those in :data:`ZONE_ENTITIES` make
    zone entities.
    ``alerts``: the active (not resolved) alerts.
    """
    found = [entity for device in devices for entity in device_entities(device)]
    found += [ZONE_ENTITIES[k.kpi_id](k) for k in zone_kpis if k.kpi_id in ZONE_ENTITIES and k.zone]
    found += [e for alert in alerts if (e := alert_entity(alert)) is not None]
    found.sort(key=lambda entity: str(entity["id"]))
    return found


def key_values(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The simplified (``options=keyValues``) form of a normalized entity."""
    out: dict[str, Any] = {}
    for name, attribute in entity.items():
        if not isinstance(attribute, dict):
            out[name] = attribute  # id, type
        elif attribute["type"] == "Relationship":
            out[name] = attribute["object"]
        elif isinstance(attribute["value"], dict) and "@value" in attribute["value"]:
            out[name] = attribute["value"]["@value"]  # a DateTime
        else:
            out[name] = attribute["value"]
    return out


@dataclass(frozen=True, slots=True)
class EntityQuery:
    types: frozenset[str] | None = None
    ids: frozenset[str] | None = None
    attrs: tuple[str, ...] | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    count: bool = False
    key_values: bool = False


#: the whitespace around list items: spelled out, because ``\s`` and ``str.strip()`` mean
#: more in Python (``\x1c``, ``\x85`` ...) than in the ECMA regexes of OpenAPI clients
SPACE = " \t\n\r\f\v"
#: an absolute URI as NGSI-LD needs for entity ids: a scheme, a colon, no whitespace
#: (openapi.yaml's patterns are built from the same text; see tests/unit/console)
URI_TEXT = r"[A-Za-z][A-Za-z0-9+.\-]*:[^ \t\n\r\f\v]*"
URI = re.compile(URI_TEXT)


def _split(raw: str | None, separators: str = ",") -> tuple[str, ...] | None:
    """A list parameter's items; empty items are dropped, and a parameter with nothing
    left (or none) is no filter at all."""
    if raw is None:
        return None
    for separator in separators[1:]:
        raw = raw.replace(separator, separators[0])
    names = tuple(name for part in raw.split(separators[0]) if (name := part.strip(SPACE)))
    return names or None


def _names(params: Mapping[str, str], key: str) -> tuple[str, ...] | None:
    return _split(params.get(key))


def _types(params: Mapping[str, str]) -> frozenset[str] | None:
    """``type``: entity types, any of which matches (``,`` or NGSI-LD 1.5's ``|``).

    Its ``;`` (all of these types) and parentheses are refused rather than read as part
    of a type name, which would silently match nothing.
    """
    raw = params.get("type")
    if raw is not None and (used := sorted(set(raw) & set(";()"))):
        raise bad_request(
            f"type selection with {' '.join(repr(c) for c in used)} is not supported by "
            "this source; list the types with ',' or '|' (any of them matches)"
        )
    names = _split(raw, ",|")
    return frozenset(names) if names is not None else None


def check_entity_id(value: str) -> str:
    """An entity id must be a URI (NGSI-LD: else BadRequestData, not ResourceNotFound)."""
    if not URI.fullmatch(value):
        raise bad_request(f"entity id {value!r} is not a URI (urn:ngsi-ld:<Type>:...)")
    return value


def _integer(params: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = params.get(key)
    if raw is None:
        return default
    # digits only: Python's int() would also take " 5", "+5" or "1_000"
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise bad_request(f"{key} must be an integer from {low} to {high}, not {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise bad_request(f"{key} must be an integer from {low} to {high}, not {value}")
    return value


def _option_names(params: Mapping[str, str], key: str) -> list[str]:
    """``options`` / ``format`` values: exact names, comma-separated, each one known."""
    raw = params.get(key)
    if raw is None:
        return []
    known = OPTIONS | ({"count"} if key == "options" else set())
    names = raw.split(",")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise bad_request(
            f"{key} {', '.join(map(repr, unknown))} not supported here; "
            f"supported: {', '.join(sorted(known))}"
        )
    return names


def _representation(params: Mapping[str, str]) -> bool:
    """True for the simplified (keyValues) representation. ``format`` decides when given
    (NGSI-LD 1.6+), else ``options``; within one of them keyValues wins over normalized."""
    for key in ("format", "options"):
        names = {name for name in _option_names(params, key) if name != "count"}
        if names:
            return bool({"keyValues", "simplified"} & names)
    return False


def check_parameters(params: Mapping[str, str], allowed: frozenset[str]) -> None:
    for key in params:
        if key in allowed or key in IGNORED:
            continue
        if key in UNSUPPORTED:
            raise bad_request(
                f"parameter {key!r} is not supported by this context source; "
                f"supported: {', '.join(sorted(allowed)) or 'none'}"
            )
        raise bad_request(
            f"unknown parameter {key!r}; known: {', '.join(sorted(allowed | IGNORED))}"
        )


def parse_query(params: Mapping[str, str]) -> EntityQuery:
    """``GET /ngsi-ld/v1/entities`` parameters, or :class:`NgsiError` naming the bad one."""
    check_parameters(params, QUERY_PARAMETERS)
    count = params.get("count", "false")
    if count not in ("true", "false"):
        raise bad_request(f"count must be true or false, not {count!r}")
    ids = _names(params, "id")
    options = _option_names(params, "options")
    return EntityQuery(
        types=_types(params),
        ids=frozenset(check_entity_id(i) for i in ids) if ids is not None else None,
        attrs=_names(params, "attrs"),
        limit=_integer(params, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT),
        offset=_integer(params, "offset", 0, 0, 2**31 - 1),
        count=count == "true" or "count" in options,
        key_values=_representation(params),
    )


def parse_retrieve(params: Mapping[str, str]) -> EntityQuery:
    """``GET /ngsi-ld/v1/entities/{id}`` parameters (attrs, type, options/format)."""
    check_parameters(params, frozenset({"attrs", "type", "options", "format"}))
    return EntityQuery(
        types=_types(params),
        attrs=_names(params, "attrs"),
        key_values=_representation(params),
    )


def _project(entity: dict[str, Any], attrs: tuple[str, ...] | None) -> dict[str, Any] | None:
    """The entity with only ``attrs`` (id and type always), None if it has none of them."""
    if attrs is None:
        return entity
    kept = {name: entity[name] for name in attrs if name in entity and name not in ("id", "type")}
    if not kept:
        return None
    return {"id": entity["id"], "type": entity["type"], **kept}


def _type_matches(entity_type: str, types: frozenset[str] | None) -> bool:
    # short names, or the Smart Data Models' expanded type IRI
    return types is None or any(t == entity_type or t.endswith("/" + entity_type) for t in types)


def select(found: Iterable[dict[str, Any]], query: EntityQuery) -> tuple[list[dict[str, Any]], int]:
    """(the page of matching entities, the number that matched before paging)."""
    matched = []
    for entity in found:
        if not _type_matches(entity["type"], query.types):
            continue
        if query.ids is not None and entity["id"] not in query.ids:
            continue
        projected = _project(entity, query.attrs)
        if projected is not None:
            matched.append(key_values(projected) if query.key_values else projected)
    return matched[query.offset : query.offset + query.limit], len(matched)


def retrieve(found: Iterable[dict[str, Any]], wanted: str, query: EntityQuery) -> dict[str, Any]:
    """One entity by id, or a ResourceNotFound :class:`NgsiError`."""
    for entity in found:
        if entity["id"] != wanted or not _type_matches(entity["type"], query.types):
            continue
        projected = _project(entity, query.attrs)
        if projected is None:
            break
        return key_values(projected) if query.key_values else projected
    raise NgsiError(
        404,
        "ResourceNotFound",
        "Resource not found",
        f"no entity {wanted!r}"
        + (f" with any of the attributes {', '.join(query.attrs)}" if query.attrs else "")
        + "; list them with GET /ngsi-ld/v1/entities",
    )


def type_list(found: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``GET /ngsi-ld/v1/types``: the entity types present now."""
    present = sorted({str(entity["type"]) for entity in found})
    return {
        "id": "urn:ngsi-ld:EntityTypeList:climastream",
        "type": "EntityTypeList",
        "typeList": present,
    }
