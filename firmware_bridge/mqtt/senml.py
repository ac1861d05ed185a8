"""SenML JSON packs (RFC 8428).

Resolution follows §4.6: base name ``bn`` is prefixed to each ``n``; base time ``bt`` is
added to each ``t``; ``bu`` is the unit when a record has no ``u``; ``bv`` is added to ``v``
and ``bs`` to ``s``. A resolved time below 2**28 is relative to "now" (the injected
clock), and a missing time means "now" too. Base fields carry over to later records until
redefined. Only numeric values (``v``/``s``) become measurements; ``vs``/``vb``/``vd``
records are reported in ``unmapped``.

Mapping: the device id is the base name with its trailing separator stripped
(``urn:dev:ow:10e2073a01080063:`` -> ``urn:dev:ow:10e2073a01080063``); the record's own
``n`` names the quantity, either a quantity wire name or a SenML-style alias
(``temp``, ``humidity``, ``pm25`` ...). When the name is neither and the unit names one
quantity (``Cel``, ``%RH``, ``lx``) the record is that quantity and its full resolved name
is the device id, as in RFC 8428 §5.1.1. A record without a unit is taken to be in the
quantity's canonical unit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from climastream.quantities import CANONICAL_UNITS, Quantity, UnitError
from firmware_bridge.jsonutil import number, parse_json, raw_bytes, safe_id
from firmware_bridge.model import Decoded, DecodeError, DecodeResult, Measurement, measurement

RELATIVE_TIME_LIMIT = 2**28

NAME_ALIASES: dict[str, Quantity] = {
    **{q.value: q for q in Quantity},
    "temp": Quantity.TEMPERATURE,
    "humidity": Quantity.RELATIVE_HUMIDITY,
    "rh": Quantity.RELATIVE_HUMIDITY,
    "pm25": Quantity.PM2_5,
    "pm2.5": Quantity.PM2_5,
    "battery": Quantity.BATTERY_VOLTAGE,
    "lux": Quantity.ILLUMINANCE,
}

#: SenML units that name exactly one quantity, used when a record's name is not a quantity
UNIT_QUANTITIES: dict[str, Quantity] = {
    "Cel": Quantity.TEMPERATURE,
    "%RH": Quantity.RELATIVE_HUMIDITY,
    "lx": Quantity.ILLUMINANCE,
}


def decode_senml(
    payload: bytes | str | list[Any],
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    device_id: str | None = None,
    names: Mapping[str, Quantity] = NAME_ALIASES,
) -> DecodeResult:
    """Decode a SenML JSON pack; see the module docstring for resolution and mapping."""
    raw = raw_bytes(payload)
    try:
        pack = parse_json(payload)
        if not isinstance(pack, list) or not pack:
            raise DecodeError("bad_senml", "a SenML pack is a non-empty JSON array", raw=raw)
        base_name, base_time, base_unit, base_value, base_sum = "", 0.0, None, 0.0, 0.0
        out: list[Measurement] = []
        unmapped: list[str] = []
        reference = now()
        for index, record in enumerate(pack):
            where = f"record {index}"
            if not isinstance(record, Mapping):
                raise DecodeError("bad_senml", f"{where} is not an object", raw=raw)
            if "bver" in record and (not isinstance(record["bver"], int) or record["bver"] > 10):
                raise DecodeError(
                    "bad_senml", f"{where}: unsupported bver {record['bver']!r}", raw=raw
                )
            if "bn" in record:
                if not isinstance(record["bn"], str):
                    raise DecodeError("bad_senml", f"{where}.bn must be a string", raw=raw)
                base_name = record["bn"]
            if "bt" in record:
                base_time = number(record["bt"], f"{where}.bt", raw)
            if "bu" in record:
                if not isinstance(record["bu"], str):
                    raise DecodeError("bad_senml", f"{where}.bu must be a string", raw=raw)
                base_unit = record["bu"]
            if "bv" in record:
                base_value = number(record["bv"], f"{where}.bv", raw)
            if "bs" in record:
                base_sum = number(record["bs"], f"{where}.bs", raw)
            name = record.get("n", "")
            if not isinstance(name, str):
                raise DecodeError("bad_senml", f"{where}.n must be a string", raw=raw)
            has_value = "v" in record or "s" in record
            if not has_value:
                if any(k in record for k in ("vs", "vb", "vd")):
                    unmapped.append(base_name + name)
                elif not name and any(k.startswith("b") for k in record):
                    continue  # a record that only sets base fields
                else:
                    raise DecodeError(
                        "bad_senml", f"{where} ({base_name + name!r}) has no value", raw=raw
                    )
                continue
            field = f"{where}.v" if "v" in record else f"{where}.s"
            value = (
                number(record["v"], field, raw) + base_value
                if "v" in record
                else number(record["s"], field, raw) + base_sum
            )
            offset_time = base_time + (
                number(record["t"], f"{where}.t", raw) if "t" in record else 0.0
            )
            relative = abs(offset_time) < RELATIVE_TIME_LIMIT
            if relative:
                when = reference + timedelta(seconds=offset_time)
            else:
                try:
                    when = datetime.fromtimestamp(offset_time, UTC)
                except (OverflowError, OSError, ValueError):
                    raise DecodeError(
                        "bad_time", f"{where}: time {offset_time} is out of range", raw=raw
                    ) from None
            unit = record.get("u", base_unit)
            if unit is not None and not isinstance(unit, str):
                raise DecodeError("bad_senml", f"{where}.u must be a string", raw=raw)
            quantity = names.get(name) or names.get(name.lower())
            owner = base_name
            if quantity is None and unit in UNIT_QUANTITIES:
                # A record named after the sensor itself (RFC 8428 §5.1.1): the unit says what.
                quantity, owner = UNIT_QUANTITIES[unit], base_name + name
            if quantity is None:
                unmapped.append(base_name + name)
                continue
            dev = device_id or (safe_id(owner.rstrip(":/.-_")) or None)
            try:
                decoded = measurement(
                    quantity,
                    value,
                    unit or CANONICAL_UNITS[quantity],
                    device_id=dev,
                    time=when,
                    field=field,  # with the base value, or once converted, may be inf
                )
                out.append(decoded._replace(gateway_time=True) if relative else decoded)
            except UnitError as exc:
                raise DecodeError("bad_unit", f"{where}: {exc}", raw=raw) from None
            except DecodeError as exc:
                raise exc.with_raw(raw) from None
        return Decoded(tuple(out), raw=raw, unmapped=tuple(unmapped))
    except DecodeError as exc:
        return exc
