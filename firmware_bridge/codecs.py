"""The codec registry: every decoder by the name the CLI and gateway config use.

:func:`decode_payload` is the one-shot entry point: a whole payload in, a list of results
out (one per frame for serial codecs, exactly one for the others). It never raises for bad
input. Serial codecs report bytes left over at the end as a ``truncated`` error, because a
one-shot payload has no "next read" to complete them.

A serial codec's error offset counts bytes of the whole payload as given, and its ``raw``
is the frame as given: for ``framed`` that is the COBS-encoded block (without its 0x00),
not the decoded frame the stream decoder reports, whose offsets count decoded bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from firmware_bridge.checksums import cobs_encoded_offset
from firmware_bridge.lorawan.cayenne import decode_cayenne
from firmware_bridge.lorawan.envelopes import (
    PayloadDecoder,
    Uplink,
    decode_uplink,
    parse_chirpstack_up,
    parse_tts_up,
)
from firmware_bridge.lorawan.layout import BinaryLayout
from firmware_bridge.model import Decoded, DecodeError, DecodeResult
from firmware_bridge.mqtt.annex_b import decode_annex_b
from firmware_bridge.mqtt.generic_json import JsonMapping
from firmware_bridge.mqtt.senml import decode_senml
from firmware_bridge.serial_codecs import (
    FramedDecoder,
    Pms5003Decoder,
    Sds011Decoder,
    StreamDecoder,
    TextLineDecoder,
)


@dataclass(frozen=True, slots=True)
class CodecOptions:
    """Per-source settings a codec may need; each codec reads only its own."""

    device_id: str | None = None
    topic: str | None = None
    layout: BinaryLayout | None = None
    mapping: JsonMapping | None = None
    #: application payload codec inside a LoRaWAN envelope: "cayenne" or "layout"
    inner: str = "cayenne"
    radio_readings: bool = True
    cf1_channel: bool = False
    units: Mapping[str, str] = field(default_factory=dict)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    description: str
    #: "binary" payloads arrive as hex/base64; "json" payloads as JSON text
    kind: str
    decode: Callable[[bytes, CodecOptions], list[DecodeResult]]


def stream_decoder(name: str, options: CodecOptions | None = None) -> StreamDecoder:
    """A fresh stream decoder for a serial codec name."""
    options = options or CodecOptions()
    if name == "sds011":
        return Sds011Decoder(device_id=options.device_id)
    if name in ("pms5003", "pms7003"):
        return Pms5003Decoder(device_id=options.device_id, cf1_channel=options.cf1_channel)
    if name == "textline":
        return TextLineDecoder(device_id=options.device_id)
    if name == "framed":
        return FramedDecoder(device_id=options.device_id)
    raise KeyError(f"{name!r} is not a serial codec")


def _located(payload: bytes, decoder: StreamDecoder) -> list[DecodeResult]:
    """Feed the whole payload; shift error offsets to the frame's place in the payload."""
    results: list[DecodeResult] = []
    cursor = 0
    for result in decoder.feed(payload):
        # Report error offsets against the whole input when the frame can be located.
        where = payload.find(result.raw, cursor) if result.raw else -1
        if isinstance(result, DecodeError) and where > 0:
            result = result.with_raw(result.raw, where)
        if where >= 0:
            cursor = where + 1
        results.append(result)
    return results


def _located_framed(payload: bytes, decoder: StreamDecoder) -> list[DecodeResult]:
    """Feed one 0x00-delimited block at a time, so each result's block is known.

    The stream decoder reports a bad frame with the COBS-*decoded* bytes and offsets into
    them; here they become the encoded block and offsets into the payload.
    """
    results: list[DecodeResult] = []
    start = 0
    while start < len(payload):
        end = payload.find(0, start)
        stop = len(payload) if end < 0 else end + 1
        block = payload[start : stop if end < 0 else end]
        for result in decoder.feed(payload[start:stop]):
            if isinstance(result, DecodeError):
                if result.reason in ("bad_cobs", "oversize"):  # already about the block
                    offset = result.offset
                elif result.offset is not None:  # about the decoded frame
                    offset = cobs_encoded_offset(block, result.offset)
                else:
                    offset = None
                result = DecodeError(
                    result.reason,
                    result.message,
                    raw=result.raw if result.reason == "oversize" else block,
                    offset=None if offset is None else start + offset,
                )
            results.append(result)
        start = stop
    return results


def _stream(name: str) -> Callable[[bytes, CodecOptions], list[DecodeResult]]:
    def run(payload: bytes, options: CodecOptions) -> list[DecodeResult]:
        decoder = stream_decoder(name, options)
        locate = _located_framed if name == "framed" else _located
        results = locate(payload, decoder)
        if decoder.buffered:
            start = len(payload) - decoder.buffered
            results.append(
                DecodeError(
                    "truncated",
                    f"the last {decoder.buffered} bytes do not complete a {name} frame",
                    raw=payload[start:],
                    offset=start,
                )
            )
        elif not results:
            results.append(
                DecodeError(
                    "no_frame",
                    f"no {name} frame start found in {len(payload)} bytes",
                    raw=payload,
                    offset=0,
                )
            )
        return results

    return run


def _inner(options: CodecOptions) -> PayloadDecoder:
    if options.inner == "layout":
        layout = options.layout
        if layout is None:
            raise ValueError("inner codec 'layout' needs a layout (--layout FILE)")
        return layout.decode
    if options.inner == "cayenne":
        return decode_cayenne
    raise ValueError(f"unknown inner codec {options.inner!r}; use 'cayenne' or 'layout'")


def _envelope(
    parse: Callable[[bytes], Uplink],
) -> Callable[[bytes, CodecOptions], list[DecodeResult]]:
    def run(payload: bytes, options: CodecOptions) -> list[DecodeResult]:
        try:
            uplink = parse(payload)
        except DecodeError as exc:
            return [exc]
        if options.device_id:  # --device-id overrides the DevEUI, as for the other codecs
            uplink = replace(uplink, device_id=options.device_id)
        return [decode_uplink(uplink, _inner(options), radio_readings=options.radio_readings)]

    return run


def _cayenne(payload: bytes, options: CodecOptions) -> list[DecodeResult]:
    return [decode_cayenne(payload, options.device_id)]


def _layout(payload: bytes, options: CodecOptions) -> list[DecodeResult]:
    if options.layout is None:
        raise ValueError("codec 'layout' needs a layout (--layout FILE or a built-in name)")
    return [options.layout.decode(payload, options.device_id)]


def _json(payload: bytes, options: CodecOptions) -> list[DecodeResult]:
    if options.mapping is None:
        raise ValueError("codec 'json' needs a field mapping (--mapping FILE)")
    result = options.mapping.decode(payload, options.topic)
    if options.device_id and isinstance(result, Decoded):
        result = Decoded(
            tuple(m._replace(device_id=options.device_id) for m in result.measurements),
            raw=result.raw,
            unmapped=result.unmapped,
        )
    return [result]


def _senml(payload: bytes, options: CodecOptions) -> list[DecodeResult]:
    return [decode_senml(payload, now=options.now, device_id=options.device_id)]


def _annex_b(payload: bytes, options: CodecOptions) -> list[DecodeResult]:
    return [decode_annex_b(payload, device_id=options.device_id, units=options.units)]


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec(
            "sds011", "Nova SDS011 PM sensor, 10-byte serial frames", "binary", _stream("sds011")
        ),
        Codec(
            "pms5003",
            "Plantower PMS5003/PMS7003, 32-byte serial frames",
            "binary",
            _stream("pms5003"),
        ),
        Codec("pms7003", "alias of pms5003 (same frame)", "binary", _stream("pms5003")),
        Codec(
            "textline",
            "$key=value,...*hh text lines (NMEA-style XOR checksum)",
            "binary",
            _stream("textline"),
        ),
        Codec(
            "framed",
            "climastream framed protocol: COBS + CRC-16/CCITT-FALSE",
            "binary",
            _stream("framed"),
        ),
        Codec("cayenne", "Cayenne LPP LoRaWAN payload, all standard types", "binary", _cayenne),
        Codec(
            "layout", "fixed binary struct described by a YAML layout (--layout)", "binary", _layout
        ),
        Codec(
            "chirpstack",
            "ChirpStack v4 'up' event JSON (inner payload: --inner)",
            "json",
            _envelope(parse_chirpstack_up),
        ),
        Codec(
            "tts",
            "The Things Stack v3 uplink JSON (inner payload: --inner)",
            "json",
            _envelope(parse_tts_up),
        ),
        Codec(
            "json",
            "generic device JSON with a topic template and field mapping (--mapping)",
            "json",
            _json,
        ),
        Codec("senml", "SenML JSON pack (RFC 8428)", "json", _senml),
        Codec("annexb", "CLIMABOROUGH Annex B flat air-quality/weather JSON", "json", _annex_b),
    )
}


def decode_payload(
    codec: str, payload: bytes, options: CodecOptions | None = None
) -> list[DecodeResult]:
    """Decode one whole payload with the named codec.

    Raises KeyError for an unknown codec and ValueError for missing configuration (a
    ``layout`` codec without a layout); bad *input* is always returned as DecodeError.
    """
    spec = CODECS.get(codec)
    if spec is None:
        raise KeyError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    return spec.decode(bytes(payload), options or CodecOptions())
