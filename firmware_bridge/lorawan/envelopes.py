"""Uplink envelopes of the LoRaWAN network servers, and decoding their application payload.

- **ChirpStack v4** MQTT integration, JSON marshaler: topic
  ``application/<application id>/device/<devEui>/event/up``; the event carries
  ``deviceInfo.devEui``, ``fCnt``, ``fPort``, base64 ``data``, ``rxInfo[]`` (``rssi``,
  ``snr``, ``gatewayId``) and ``time``.
- **The Things Stack v3** MQTT/webhook uplink: ``end_device_ids.dev_eui`` (and
  ``device_id``), ``uplink_message.f_cnt``, ``f_port``, base64 ``frm_payload``,
  ``rx_metadata[]`` (``rssi``, ``snr``, ``gateway_ids.gateway_id``) and ``received_at``.

The device id is the DevEUI in lower-case hex (both servers agree on it; TTS's own
``device_id`` is kept in metadata). ``fCnt`` becomes the sequence number. Of several
receiving gateways the one with the best RSSI is kept as ``rssi``/``snr``/``gateway_id``
metadata on every measurement, and with ``radio_readings`` also as ``rssi``/``snr``
measurements on channel ``"radio"``, so link quality can be watched like any quantity.
An uplink without ``data`` (an empty frame, e.g. a MAC-only uplink) decodes to no
measurements.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from climastream.quantities import Quantity
from firmware_bridge.jsonutil import number, parse_json, parse_time, raw_bytes
from firmware_bridge.model import (
    Decoded,
    DecodeError,
    DecodeResult,
    Measurement,
    MetaValue,
    measurement,
)

_EUI = re.compile(r"[0-9A-Fa-f]{16}")  # fullmatch: "$" would pass a trailing newline

#: decodes an application payload: (payload, device id, seq) -> result
PayloadDecoder = Callable[[bytes, str | None, int | None], DecodeResult]


@dataclass(frozen=True, slots=True)
class Uplink:
    """What a network server tells about one uplink, independent of the server."""

    device_id: str
    f_cnt: int | None
    f_port: int | None
    payload: bytes
    time: datetime | None
    rssi: float | None
    snr: float | None
    gateway_id: str | None
    extra: Mapping[str, MetaValue] = field(default_factory=lambda: MappingProxyType({}))

    def metadata(self) -> dict[str, MetaValue]:
        meta: dict[str, MetaValue] = dict(self.extra)
        for key, value in (
            ("rssi", self.rssi),
            ("snr", self.snr),
            ("gateway_id", self.gateway_id),
            ("f_port", self.f_port),
        ):
            if value is not None:
                meta[key] = value
        return meta


def _b64(text: object, key: str, raw: bytes) -> bytes:
    if text is None:
        return b""
    if not isinstance(text, str):
        raise DecodeError("bad_field", f"{key} must be a base64 string", raw=raw)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(
            "bad_field", f"{key} is not valid base64: {text[:40]!r}", raw=raw
        ) from None


def _counter(value: object, key: str, raw: bytes) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise DecodeError(
            "bad_field", f"{key} must be an unsigned 32-bit integer, got {value!r}", raw=raw
        )
    return value


def _best_gateway(
    entries: object, key: str, raw: bytes, id_of: Callable[[Mapping[str, Any]], object]
) -> tuple[float | None, float | None, str | None]:
    """RSSI, SNR and id of the receiving gateway with the strongest signal."""
    if entries is None:
        return None, None, None
    if not isinstance(entries, list):
        raise DecodeError("bad_field", f"{key} must be a list", raw=raw)
    best: tuple[float | None, float | None, str | None] = (None, None, None)
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise DecodeError("bad_field", f"{key}[{index}] must be an object", raw=raw)
        rssi_value = entry.get("rssi", entry.get("channel_rssi"))
        rssi = None if rssi_value is None else number(rssi_value, f"{key}[{index}].rssi", raw)
        snr_value = entry.get("snr")
        if snr_value is None and rssi is not None and "snr" not in entry:
            # both servers emit protobuf JSON, which leaves out zero values (as for fCnt):
            # a reception with an RSSI and no "snr" key had an SNR of exactly 0 dB
            snr_value = 0.0
        snr = None if snr_value is None else number(snr_value, f"{key}[{index}].snr", raw)
        gw = id_of(entry)
        gateway = gw if isinstance(gw, str) else None
        if best[0] is None or (rssi is not None and rssi > best[0]):
            best = (rssi, snr, gateway)
    return best


def _dev_eui(value: object, key: str, raw: bytes) -> str:
    if not isinstance(value, str) or not _EUI.fullmatch(value):
        raise DecodeError("bad_field", f"{key} must be 16 hex digits, got {value!r}", raw=raw)
    return value.lower()


def parse_chirpstack_up(document: bytes | str | Mapping[str, Any]) -> Uplink:
    """Parse a ChirpStack v4 ``up`` event; raise :class:`DecodeError` naming the bad key."""
    raw = raw_bytes(document)
    event = parse_json(document)
    if not isinstance(event, Mapping):
        raise DecodeError("bad_envelope", "a ChirpStack event is a JSON object", raw=raw)
    info = event.get("deviceInfo")
    if not isinstance(info, Mapping):
        raise DecodeError(
            "bad_envelope", "deviceInfo is missing; is this a ChirpStack v4 'up' event?", raw=raw
        )
    dev_eui = _dev_eui(info.get("devEui"), "deviceInfo.devEui", raw)
    when = parse_time(event["time"], "time", raw) if event.get("time") is not None else None
    rssi, snr, gateway = _best_gateway(
        event.get("rxInfo"), "rxInfo", raw, lambda e: e.get("gatewayId")
    )
    extra: dict[str, MetaValue] = {"network_server": "chirpstack"}
    for key in ("deviceName", "applicationId"):
        if isinstance(info.get(key), str):
            extra[key] = info[key]
    if isinstance(event.get("dr"), int):
        extra["dr"] = event["dr"]
    return Uplink(
        device_id=dev_eui,
        # protobuf JSON leaves out zero values: a missing fCnt is frame counter 0
        f_cnt=_counter(event.get("fCnt", 0), "fCnt", raw),
        f_port=_counter(event.get("fPort"), "fPort", raw),
        payload=_b64(event.get("data"), "data", raw),
        time=when,
        rssi=rssi,
        snr=snr,
        gateway_id=gateway,
        extra=MappingProxyType(extra),
    )


def parse_tts_up(document: bytes | str | Mapping[str, Any]) -> Uplink:
    """Parse a The Things Stack v3 uplink message; raise :class:`DecodeError` naming the key."""
    raw = raw_bytes(document)
    message = parse_json(document)
    if not isinstance(message, Mapping):
        raise DecodeError("bad_envelope", "a TTS uplink is a JSON object", raw=raw)
    ids = message.get("end_device_ids")
    up = message.get("uplink_message")
    if not isinstance(ids, Mapping) or not isinstance(up, Mapping):
        raise DecodeError(
            "bad_envelope",
            "end_device_ids or uplink_message is missing; is this a TTS v3 uplink?",
            raw=raw,
        )
    dev_eui = _dev_eui(ids.get("dev_eui"), "end_device_ids.dev_eui", raw)
    received = message.get("received_at", up.get("received_at"))
    when = parse_time(received, "received_at", raw) if received is not None else None
    rssi, snr, gateway = _best_gateway(
        up.get("rx_metadata"),
        "uplink_message.rx_metadata",
        raw,
        lambda e: (
            e.get("gateway_ids", {}).get("gateway_id")
            if isinstance(e.get("gateway_ids"), Mapping)
            else None
        ),
    )
    extra: dict[str, MetaValue] = {"network_server": "tts"}
    if isinstance(ids.get("device_id"), str):
        extra["tts_device_id"] = ids["device_id"]
    app = ids.get("application_ids")
    if isinstance(app, Mapping) and isinstance(app.get("application_id"), str):
        extra["application_id"] = app["application_id"]
    return Uplink(
        device_id=dev_eui,
        f_cnt=_counter(
            up.get("f_cnt", 0 if "frm_payload" in up else None), "uplink_message.f_cnt", raw
        ),
        f_port=_counter(up.get("f_port"), "uplink_message.f_port", raw),
        payload=_b64(up.get("frm_payload"), "uplink_message.frm_payload", raw),
        time=when,
        rssi=rssi,
        snr=snr,
        gateway_id=gateway,
        extra=MappingProxyType(extra),
    )


def decode_uplink(
    uplink: Uplink,
    payload_decoder: PayloadDecoder,
    *,
    port_decoders: Mapping[int, PayloadDecoder] | None = None,
    radio_readings: bool = True,
) -> DecodeResult:
    """Decode the application payload of ``uplink`` and attach the radio metadata.

    ``port_decoders`` picks a decoder by fPort (vendors put different structs on different
    ports); otherwise ``payload_decoder`` is used. A payload error keeps its offset into the
    application payload and says so.
    """
    meta = uplink.metadata()
    out: list[Measurement] = []
    unmapped: tuple[str, ...] = ()
    if uplink.payload:
        decoder = (port_decoders or {}).get(uplink.f_port or -1, payload_decoder)
        inner = decoder(uplink.payload, uplink.device_id, uplink.f_cnt)
        if isinstance(inner, DecodeError):
            return DecodeError(
                inner.reason,
                f"in the application payload ({uplink.payload.hex()}): {inner.message}",
                raw=uplink.payload,
                offset=inner.offset,
            )
        unmapped = inner.unmapped
        for m in inner.measurements:
            out.append(
                Measurement(
                    device_id=m.device_id or uplink.device_id,
                    quantity=m.quantity,
                    value=m.value,
                    unit=m.unit,
                    seq=uplink.f_cnt,
                    time=m.time or uplink.time,
                    channel=m.channel,
                    metadata=MappingProxyType({**meta, **m.metadata}),
                )
            )
    if radio_readings:
        for quantity, value in ((Quantity.RSSI, uplink.rssi), (Quantity.SNR, uplink.snr)):
            if value is not None:
                out.append(
                    measurement(
                        quantity,
                        value,
                        device_id=uplink.device_id,
                        seq=uplink.f_cnt,
                        time=uplink.time,
                        channel="radio",
                        metadata=meta,
                    )
                )
    return Decoded(tuple(out), raw=uplink.payload, unmapped=unmapped)
