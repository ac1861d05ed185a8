"""Declarative binary layouts: YAML that says where each value sits in a fixed payload.

Vendor sensors often send a fixed struct. Instead of writing a decoder, an installer writes::

    name: dragino-lht65
    min_length: 11
    fields:
      - name: battery
        offset: 0
        type: uint16          # int8/uint8/int16/uint16/int24/uint24/int32/uint32/float32/float64
        endianness: big       # or little; default from the layout's 'endianness', else big
        mask: 0x3FFF          # optional: keep these bits of the raw integer
        scale: 1              # value = raw * scale + add
        add: 0
        unit: mV              # the unit after scaling; converted to the canonical unit
        quantity: battery_voltage
        channel: 0            # optional
        missing: 0x7FFF       # optional: this raw value means "no reading" (skipped, listed
                              #   in Decoded.unmapped as "<name>:missing")

A layout is validated when it is loaded; :class:`LayoutError` names the offending key.
Payloads shorter than ``min_length`` (default: the end of the last field) are ``truncated``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from climastream.quantities import Quantity, UnitError, to_canonical
from climastream.yamlfile import YamlFileError, load_yaml
from firmware_bridge.model import (
    Decoded,
    DecodeError,
    DecodeResult,
    Measurement,
    measurement,
    unit_error,
)

_INT_TYPES = {
    "int8": (1, True),
    "uint8": (1, False),
    "int16": (2, True),
    "uint16": (2, False),
    "int24": (3, True),
    "uint24": (3, False),
    "int32": (4, True),
    "uint32": (4, False),
}
_FLOAT_TYPES = {"float32": ("f", 4), "float64": ("d", 8)}
_FIELD_KEYS = {
    "name",
    "offset",
    "type",
    "endianness",
    "mask",
    "scale",
    "add",
    "unit",
    "quantity",
    "channel",
    "missing",
}


class LayoutError(ValueError):
    """A layout file that cannot be used; the message names the source and the key."""


@dataclass(frozen=True, slots=True)
class LayoutField:
    name: str
    offset: int
    type: str
    little_endian: bool
    scale: float
    add: float
    unit: str
    quantity: Quantity
    channel: int | str | None
    mask: int | None
    missing: int | None

    @property
    def size(self) -> int:
        if self.type in _INT_TYPES:
            return _INT_TYPES[self.type][0]
        return _FLOAT_TYPES[self.type][1]


@dataclass(frozen=True, slots=True)
class BinaryLayout:
    """A validated layout; :meth:`decode` turns one payload into measurements."""

    name: str
    fields: tuple[LayoutField, ...]
    min_length: int

    def decode(
        self, payload: bytes, device_id: str | None = None, seq: int | None = None
    ) -> DecodeResult:
        """Decode ``payload``; extra trailing bytes are allowed (vendors append fields)."""
        raw = bytes(payload)
        if len(raw) < self.min_length:
            return DecodeError(
                "truncated",
                f"layout {self.name} needs {self.min_length} bytes, got {len(raw)}",
                raw=raw,
                offset=len(raw),
            )
        out: list[Measurement] = []
        skipped: list[str] = []
        for fld in self.fields:
            if fld.offset + fld.size > len(raw):
                return DecodeError(
                    "truncated", f"field {fld.name} is cut off", raw=raw, offset=fld.offset
                )
            chunk = raw[fld.offset : fld.offset + fld.size]
            order: Literal["little", "big"] = "little" if fld.little_endian else "big"
            if fld.type in _FLOAT_TYPES:
                code = ("<" if fld.little_endian else ">") + _FLOAT_TYPES[fld.type][0]
                (number,) = struct.unpack(code, chunk)
                if not math.isfinite(number):
                    skipped.append(f"{fld.name}:missing")
                    continue
            else:
                signed = _INT_TYPES[fld.type][1]
                integer = int.from_bytes(chunk, order, signed=signed and fld.mask is None)
                if fld.mask is not None:
                    integer &= fld.mask
                if fld.missing is not None and integer == fld.missing:
                    skipped.append(f"{fld.name}:missing")
                    continue
                number = float(integer)
            # Divide by an integer step count when there is one: 886 / 10 is 88.6 exactly.
            steps = round(1 / fld.scale) if 0 < fld.scale < 1 else 0
            if steps and math.isclose(1 / steps, fld.scale, rel_tol=1e-12):
                value = number / steps + fld.add
            else:
                value = number * fld.scale + fld.add
            try:
                out.append(
                    measurement(
                        fld.quantity,
                        value,
                        fld.unit,
                        device_id=device_id,
                        seq=seq,
                        channel=fld.channel,
                        field=fld.name,
                    )
                )
            except UnitError as exc:
                return unit_error(exc, raw, fld.offset)
            except DecodeError as exc:  # a float64 scaled out of float range
                return DecodeError(exc.reason, exc.message, raw=raw, offset=fld.offset)
        return Decoded(tuple(out), raw=raw, unmapped=tuple(skipped))


def _field(entry: object, where: str, default_little: bool) -> LayoutField:
    if not isinstance(entry, Mapping):
        raise LayoutError(f"{where}: must be a mapping")
    unknown = set(entry) - _FIELD_KEYS
    if unknown:
        raise LayoutError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("name", "offset", "type", "quantity", "unit"):
        if key not in entry:
            raise LayoutError(f"{where}.{key}: missing")
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise LayoutError(f"{where}.name: must be a non-empty string")
    offset = entry["offset"]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise LayoutError(f"{where}.offset: must be a non-negative integer, got {offset!r}")
    kind = entry["type"]
    if kind not in _INT_TYPES and kind not in _FLOAT_TYPES:
        raise LayoutError(
            f"{where}.type: {kind!r} is not one of {sorted([*_INT_TYPES, *_FLOAT_TYPES])}"
        )
    endianness = entry.get("endianness", "little" if default_little else "big")
    if endianness not in ("big", "little"):
        raise LayoutError(f"{where}.endianness: must be 'big' or 'little', got {endianness!r}")
    try:
        quantity = Quantity(entry["quantity"])
    except ValueError:
        raise LayoutError(
            f"{where}.quantity: {entry['quantity']!r} is not a known quantity"
        ) from None
    unit = entry["unit"]
    if not isinstance(unit, str):
        raise LayoutError(f"{where}.unit: must be a string")
    try:
        to_canonical(quantity, 1.0, unit)
    except UnitError as exc:
        raise LayoutError(f"{where}.unit: {exc}") from None
    numbers: dict[str, float] = {}
    for key, default in (("scale", 1.0), ("add", 0.0)):
        value = entry.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise LayoutError(f"{where}.{key}: must be a finite number, got {value!r}")
        numbers[key] = float(value)
    ints: dict[str, int | None] = {}
    for key in ("mask", "missing"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise LayoutError(f"{where}.{key}: must be an integer, got {value!r}")
        if value is not None and kind in _FLOAT_TYPES:
            raise LayoutError(f"{where}.{key}: only integer types have a {key}")
        ints[key] = value
    channel = entry.get("channel")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int | str)):
        raise LayoutError(f"{where}.channel: must be an integer or a string")
    return LayoutField(
        name=name,
        offset=offset,
        type=kind,
        little_endian=endianness == "little",
        scale=numbers["scale"],
        add=numbers["add"],
        unit=unit,
        quantity=quantity,
        channel=channel,
        mask=ints["mask"],
        missing=ints["missing"],
    )


def layout_from_mapping(document: object, source: str = "layout") -> BinaryLayout:
    """Validate a parsed YAML/JSON layout; raise :class:`LayoutError` naming the bad key."""
    if not isinstance(document, Mapping):
        raise LayoutError(f"{source}: a layout is a mapping with 'name' and 'fields'")
    unknown = set(document) - {"name", "fields", "endianness", "min_length", "description"}
    if unknown:
        raise LayoutError(f"{source}: unknown keys {sorted(unknown)}")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise LayoutError(f"{source}.name: missing or not a string")
    default = document.get("endianness", "big")
    if default not in ("big", "little"):
        raise LayoutError(f"{source}.endianness: must be 'big' or 'little'")
    entries = document.get("fields")
    if not isinstance(entries, list) or not entries:
        raise LayoutError(f"{source}.fields: must be a non-empty list")
    fields = tuple(
        _field(entry, f"{source}.fields[{index}]", default == "little")
        for index, entry in enumerate(entries)
    )
    end = max(f.offset + f.size for f in fields)
    min_length = document.get("min_length", end)
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 0:
        raise LayoutError(f"{source}.min_length: must be a non-negative integer")
    return BinaryLayout(name=name, fields=fields, min_length=min_length)


def load_layout(path: str | Path) -> BinaryLayout:
    """Read and validate a layout YAML file."""
    path = Path(path)
    try:
        document, _lines = load_yaml(path)
    except YamlFileError as exc:
        raise LayoutError(f"cannot read layout: {exc}") from None
    return layout_from_mapping(document, str(path))


BUILTIN_LAYOUTS = Path(__file__).resolve().parent.parent / "layouts"


def builtin_layout(name: str) -> BinaryLayout:
    """A layout shipped in ``firmware_bridge/layouts/<name>.yaml``."""
    path = BUILTIN_LAYOUTS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in BUILTIN_LAYOUTS.glob("*.yaml"))
        raise LayoutError(f"no built-in layout {name!r}; known: {known}")
    return load_layout(path)
