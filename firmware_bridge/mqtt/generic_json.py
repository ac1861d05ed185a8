"""Generic JSON device payloads: a topic template names the device, a mapping the fields.

Configuration (YAML or a dict)::

    topic: "city/{zone}/sensors/{device_id}/state"   # '{name}' matches one topic level
    device_id: "{device_id}"     # template over topic variables, or "$.path" into the JSON
    time: ts                     # optional dotted path; RFC 3339 text or Unix seconds
    seq: n                       # optional dotted path to an unsigned integer
    fields:
      temp:     {quantity: temperature, unit: degF}
      hum:      {quantity: relative_humidity, unit: "%"}
      air.pm25: {quantity: pm2_5, unit: ug/m3, channel: 1}

Every mapped field that is present becomes a measurement (converted to the canonical
unit); an absent field is skipped, a non-numeric one rejects the payload (``bad_value``).
Fields of the payload that are not mapped are listed in ``Decoded.unmapped``. Topic
variables other than the device id (e.g. ``zone``) go into each measurement's metadata.

Templates are checked when the mapping is built, never first at decode time: a topic
variable is a whole level ``{name}`` with a unique identifier name (``{zone-id}`` is
refused), ``#`` only ends a filter, and a ``device_id`` template may only use plain
``{name}`` of the topic's variables (no ``{zone.x}``, ``{zone[0]}``, ``!r`` or ``:spec``).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from climastream.quantities import Quantity, UnitError, to_canonical
from firmware_bridge.jsonutil import get_path, number, parse_json, parse_time, raw_bytes, safe_id
from firmware_bridge.model import (
    Decoded,
    DecodeError,
    DecodeResult,
    Measurement,
    MetaValue,
    measurement,
)


class MappingError(ValueError):
    """A JSON mapping config that cannot be used; the message names the offending key."""


def _variables(topic: str) -> list[str]:
    """The variable names of a topic template; MappingError (key ``topic``) when malformed."""
    names: list[str] = []
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if level == "#" and index != len(levels) - 1:
            raise MappingError(f"topic: {topic!r}: '#' may only be the last level")
        if "{" not in level and "}" not in level:
            continue
        name = level[1:-1]
        if not (level.startswith("{") and level.endswith("}")) or "{" in name or "}" in name:
            raise MappingError(
                f"topic: level {level!r} of {topic!r} mixes text and a variable; "
                "a variable is a whole level, '{name}'"
            )
        if not name.isidentifier():
            raise MappingError(
                f"topic: variable {level!r} of {topic!r} is not a name "
                "(letters, digits and _, not starting with a digit)"
            )
        if name in names:
            raise MappingError(f"topic: variable {level!r} appears twice in {topic!r}")
        names.append(name)
    return names


@functools.lru_cache(maxsize=256)
def _topic_pattern(topic: str) -> re.Pattern[str]:
    """The compiled matcher of a topic template (validated: MappingError when malformed)."""
    _variables(topic)
    return re.compile(
        "/".join(
            f"(?P<{part[1:-1]}>[^/]+)"
            if part.startswith("{") and part.endswith("}")
            else "[^/]+"
            if part == "+"
            else ".*"
            if part == "#"
            else re.escape(part)
            for part in topic.split("/")
        )
    )


def _check_device_id(template: str, topic: str | None) -> None:
    """A ``device_id`` template uses only plain topic variables; MappingError otherwise."""
    if template.startswith("$."):
        if not template[2:]:
            raise MappingError("device_id: '$.' needs a path into the JSON, e.g. '$.id'")
        return
    variables = _variables(topic) if topic is not None else []
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise MappingError(f"device_id: {template!r} is not a valid template: {exc}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if base != name and base in variables:
            raise MappingError(
                f"device_id: {{{name}}} in {template!r}: use plain {{{base}}}, "
                "without '.' or '[...]' access"
            )
        if name not in variables:
            known = ", ".join(f"{{{v}}}" for v in variables) or "none: there is no topic template"
            raise MappingError(
                f"device_id: {{{name}}} in {template!r} is not a topic variable (they are {known})"
            )
        if spec or conversion:
            raise MappingError(
                f"device_id: {template!r}: use plain {{{name}}}, without '!' or ':' formatting"
            )


@dataclass(frozen=True, slots=True)
class FieldMap:
    path: str
    quantity: Quantity
    unit: str
    channel: int | str | None = None


@dataclass(frozen=True, slots=True)
class JsonMapping:
    """A validated mapping; :meth:`decode` turns one message into measurements."""

    topic: str | None
    device_id: str | None
    time_path: str | None
    seq_path: str | None
    fields: tuple[FieldMap, ...]

    def __post_init__(self) -> None:
        """Refuse templates that could only fail at decode time (see the module docstring)."""
        if self.topic is not None:
            _topic_pattern(self.topic)
        if self.device_id is not None:
            _check_device_id(self.device_id, self.topic)

    def topic_variables(self, topic: str | None) -> dict[str, str] | None:
        """Variables of ``topic`` under the template, or None when it does not match."""
        if self.topic is None or topic is None:
            return {} if self.topic is None else None
        match = _topic_pattern(self.topic).fullmatch(topic)
        return match.groupdict() if match else None

    def decode(
        self, payload: bytes | str | Mapping[str, Any], topic: str | None = None
    ) -> DecodeResult:
        raw = raw_bytes(payload)
        try:
            return self._decode(payload, topic, raw)
        except DecodeError as exc:
            return exc

    def _decode(
        self, payload: bytes | str | Mapping[str, Any], topic: str | None, raw: bytes
    ) -> Decoded:
        document = parse_json(payload)
        if not isinstance(document, Mapping):
            raise DecodeError("bad_json", "the payload must be a JSON object", raw=raw)
        variables = self.topic_variables(topic)
        if variables is None:
            raise DecodeError(
                "bad_topic", f"topic {topic!r} does not match template {self.topic!r}", raw=raw
            )
        device_id: str | None = None
        if self.device_id is not None:
            if self.device_id.startswith("$."):
                value = get_path(document, self.device_id[2:])
                device_id = None if value is None else safe_id(str(value))
            else:
                try:
                    device_id = safe_id(self.device_id.format(**variables))
                except (KeyError, IndexError, ValueError):
                    raise DecodeError(
                        "bad_topic",
                        f"device_id template {self.device_id!r} needs variables the topic lacks",
                        raw=raw,
                    ) from None
            if not device_id:
                raise DecodeError("missing_field", f"no device id from {self.device_id!r}", raw=raw)
        when = None
        if self.time_path is not None and get_path(document, self.time_path) is not None:
            when = parse_time(get_path(document, self.time_path), self.time_path, raw)
        seq = None
        if self.seq_path is not None:
            value = get_path(document, self.seq_path)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise DecodeError(
                        "bad_field",
                        f"{self.seq_path} must be an unsigned integer, got {value!r}",
                        raw=raw,
                    )
                seq = value
        meta: dict[str, MetaValue] = {k: v for k, v in variables.items() if k != "device_id"}
        out: list[Measurement] = []
        for fmap in self.fields:
            value = get_path(document, fmap.path)
            if value is None:
                continue
            try:
                out.append(
                    measurement(
                        fmap.quantity,
                        number(value, fmap.path, raw),
                        fmap.unit,
                        device_id=device_id,
                        seq=seq,
                        time=when,
                        channel=fmap.channel,
                        metadata=meta,
                        field=fmap.path,
                    )
                )
            except UnitError as exc:
                raise DecodeError("bad_unit", str(exc), raw=raw) from None
            except DecodeError as exc:
                raise exc.with_raw(raw) from None
        used = {f.path.split(".")[0] for f in self.fields}
        for path in (
            self.time_path,
            self.seq_path,
            self.device_id[2:] if self.device_id and self.device_id.startswith("$.") else None,
        ):
            if path:
                used.add(path.split(".")[0])
        unmapped = tuple(sorted(k for k in document if k not in used))
        return Decoded(tuple(out), raw=raw, unmapped=unmapped)


def mapping_from_dict(config: object, source: str = "mapping") -> JsonMapping:
    """Validate a mapping config; raise :class:`MappingError` naming the bad key."""
    if not isinstance(config, Mapping):
        raise MappingError(f"{source}: must be a mapping with 'fields'")
    unknown = set(config) - {"topic", "device_id", "time", "seq", "fields"}
    if unknown:
        raise MappingError(f"{source}: unknown keys {sorted(unknown)}")
    for key in ("topic", "device_id", "time", "seq"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise MappingError(f"{source}.{key}: must be a string")
    fields = config.get("fields")
    if not isinstance(fields, Mapping) or not fields:
        raise MappingError(
            f"{source}.fields: must be a non-empty mapping of path -> {{quantity, unit}}"
        )
    maps = []
    for path, spec in fields.items():
        where = f"{source}.fields.{path}"
        if not isinstance(spec, Mapping) or "quantity" not in spec:
            raise MappingError(f"{where}: needs 'quantity' (and 'unit')")
        extra = set(spec) - {"quantity", "unit", "channel"}
        if extra:
            raise MappingError(f"{where}: unknown keys {sorted(extra)}")
        try:
            quantity = Quantity(spec["quantity"])
        except ValueError:
            raise MappingError(
                f"{where}.quantity: {spec['quantity']!r} is not a known quantity"
            ) from None
        unit = spec.get("unit")
        if unit is None:
            raise MappingError(f"{where}.unit: missing; units must be explicit")
        try:
            to_canonical(quantity, 1.0, str(unit))
        except UnitError as exc:
            raise MappingError(f"{where}.unit: {exc}") from None
        maps.append(FieldMap(str(path), quantity, str(unit), spec.get("channel")))
    try:
        return JsonMapping(
            topic=config.get("topic"),
            device_id=config.get("device_id"),
            time_path=config.get("time"),
            seq_path=config.get("seq"),
            fields=tuple(maps),
        )
    except MappingError as exc:  # "topic: ..." / "device_id: ..." under this source
        raise MappingError(f"{source}.{exc}") from None
