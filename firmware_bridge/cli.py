"""``climastream decode CODEC PAYLOAD``: decode one payload and print measurements as JSON.

Like ChirpStack's codec test: paste a payload, see the values with units. Exit status 0 when
every frame decoded, 1 when the input is bad (the message names the reason and the byte),
2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
from typing import Any

#: hex digits, optionally grouped by spaces, colons, commas or dashes, each group optionally
#: prefixed 0x as datasheets and C arrays write them ("AA C0 ..", "0xAA, 0xC0, ..").
#: The language of ``^(?:(?:0[xX])?[0-9A-Fa-f]+[\s:,-]*)+$``, written without its nested
#: quantifiers: that one backtracked exponentially on long base64 ("AAAA...==" hung). Each
#: character after the first digit is one alternative of the loop, so matching is linear: an
#: x is a group's 0x prefix when a digit follows and its 0 is not the only digit of a
#: previous 0x group ("0x0xA" is not hex).
_HEX = re.compile(r"^(?:0[xX])?[0-9A-Fa-f](?:[0-9A-Fa-f\s:,-]|(?<=[^xX]0)[xX](?=[0-9A-Fa-f]))*$")
_HEX_NOISE = re.compile(r"(?:^|(?<=[\s:,-]))0[xX]|[\s:,-]")


class PayloadError(ValueError):
    """PAYLOAD text that is not valid hex, base64 or UTF-8 (bad input: exit status 1)."""


def register(subparsers: Any) -> None:
    """Add the ``decode`` subcommand (imports the codecs only when it runs)."""
    from firmware_bridge.codecs import CODECS

    listing = "\n".join(f"  {c.name:<11} {c.description}" for c in CODECS.values())
    parser = subparsers.add_parser(
        "decode",
        help="decode a device payload (serial, LoRaWAN, MQTT) and print measurements as JSON",
        description="Decode one device payload and print the measurements as JSON with units.\n\n"
        f"codecs:\n{listing}",
        epilog="Output: {codec, measurements: [{device_id, quantity, value, unit (canonical),\n"
        "seq, time, channel, metadata}], errors: [{reason, offset, message, raw_hex}]}.\n"
        "Serial codecs take several concatenated frames (and skip garbage between them).\n"
        "Exit status: 0 every frame decoded; 1 bad input (a bad frame, or PAYLOAD that is\n"
        "not hex, base64 or UTF-8); 2 usage or configuration error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "codec", choices=sorted(CODECS), metavar="CODEC", help="one of the codecs above"
    )
    parser.add_argument(
        "payload",
        metavar="PAYLOAD",
        help="hex, base64 or JSON; '-' reads stdin; @FILE reads a file",
    )
    parser.add_argument(
        "--format",
        choices=["auto", "hex", "base64", "json"],
        default="auto",
        help="how PAYLOAD is written (default auto: JSON codecs read JSON; hex wins over base64)",
    )
    parser.add_argument(
        "--device-id", help="device id to use when the payload has none (or to override it)"
    )
    parser.add_argument("--topic", help="MQTT topic the payload arrived on (json codec)")
    parser.add_argument(
        "--layout", help="layout YAML file or built-in layout name (layout codec, --inner layout)"
    )
    parser.add_argument("--mapping", help="field mapping YAML file (json codec)")
    parser.add_argument(
        "--inner",
        choices=["cayenne", "layout"],
        default="cayenne",
        help="application payload codec inside a LoRaWAN envelope (default cayenne)",
    )
    parser.add_argument(
        "--cf1-channel", action="store_true", help="pms5003: also emit CF=1 values on channel 'cf1'"
    )
    parser.set_defaults(func=run)


def read_payload(text: str, fmt: str, kind: str) -> bytes:
    """Turn PAYLOAD text into bytes; raise PayloadError saying which format failed and why."""
    stripped = text.strip()
    if kind == "json" or fmt == "json" or (fmt == "auto" and stripped[:1] in ("{", "[")):
        return stripped.encode("utf-8")
    looks_hex = bool(_HEX.match(stripped))
    digits = _HEX_NOISE.sub("", stripped) if looks_hex else ""
    if fmt == "hex" or (fmt == "auto" and looks_hex and len(digits) % 2 == 0):
        if fmt == "hex" and not looks_hex:
            digits = re.sub(r"[\s:,-]", "", stripped)
        try:
            return bytes.fromhex(digits)
        except ValueError as exc:
            raise PayloadError(f"PAYLOAD is not valid hex: {exc}") from None
    try:
        return base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        if looks_hex:
            raise PayloadError(
                f"PAYLOAD looks like hex but has an odd number of digits ({len(digits)}); "
                f"as base64 it is invalid too ({exc})"
            ) from None
        raise PayloadError(
            f"PAYLOAD is neither hex nor valid base64: {exc} (--format says which it is)"
        ) from None


def _read_text(source: str) -> str:
    """PAYLOAD itself, stdin ('-') or a file ('@FILE'), as text."""
    if source == "-":
        return sys.stdin.read()
    if not source.startswith("@"):
        return source
    with open(source[1:], "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            f"{source[1:]}: not UTF-8 text at byte {exc.start}; write a binary payload as "
            "hex or base64"
        ) from None


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.codecs import CODECS, CodecOptions, decode_payload
    from firmware_bridge.lorawan.layout import LayoutError, builtin_layout, load_layout
    from firmware_bridge.model import DecodeError
    from firmware_bridge.mqtt.generic_json import MappingError, mapping_from_dict

    try:
        payload = read_payload(_read_text(args.payload), args.format, CODECS[args.codec].kind)
    except PayloadError as exc:  # bad input, like a bad frame
        print(f"climastream decode: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"climastream decode: {exc}", file=sys.stderr)
        return 2
    try:
        layout = None
        if args.layout:
            layout = (
                load_layout(args.layout)
                if args.layout.endswith((".yaml", ".yml"))
                else builtin_layout(args.layout)
            )
        mapping = None
        if args.mapping:
            import yaml

            with open(args.mapping, encoding="utf-8") as handle:
                mapping = mapping_from_dict(yaml.safe_load(handle), args.mapping)
        options = CodecOptions(
            device_id=args.device_id,
            topic=args.topic,
            layout=layout,
            mapping=mapping,
            inner=args.inner,
            cf1_channel=args.cf1_channel,
        )
        results = decode_payload(args.codec, payload, options)
    except (OSError, ValueError, LayoutError, MappingError) as exc:
        print(f"climastream decode: {exc}", file=sys.stderr)
        return 2
    measurements: list[dict[str, object]] = []
    errors: list[dict[str, object]] = []
    unmapped: list[str] = []
    for result in results:
        if isinstance(result, DecodeError):
            errors.append(result.to_json())
        else:
            measurements.extend(m.to_json() for m in result.measurements)
            unmapped.extend(result.unmapped)
    report: dict[str, object] = {"codec": args.codec, "measurements": measurements}
    if unmapped:
        report["unmapped"] = unmapped
    if errors:
        report["errors"] = errors
    print(json.dumps(report, indent=2, ensure_ascii=False))
    for error in errors:
        print(f"climastream decode: {error['message']}", file=sys.stderr)
    return 1 if errors else 0
