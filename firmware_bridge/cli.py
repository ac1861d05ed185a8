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

_HEX = re.compile(r"^(0x)?[0-9A-Fa-f\s:,-]+$")


def register(subparsers: Any) -> None:
    """Add the ``decode`` subcommand (imports the codecs only when it runs)."""
    from firmware_bridge.codecs import CODECS

    listing = "\n".join(f"  {c.name:<11} {c.description}" for c in CODECS.values())
    parser = subparsers.add_parser(
        "decode",
        help="decode a device payload (serial, LoRaWAN, MQTT) and print measurements as JSON",
        description="Decode one device payload and print the measurements as JSON with units.\n\n"
        f"codecs:\n{listing}",
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
    """Turn PAYLOAD text into bytes; raise ValueError saying which format failed and why."""
    stripped = text.strip()
    if kind == "json" or fmt == "json" or (fmt == "auto" and stripped[:1] in ("{", "[")):
        return stripped.encode("utf-8")
    if fmt == "hex" or (
        fmt == "auto"
        and _HEX.match(stripped)
        and len(re.sub(r"[\s:,-]|^0x", "", stripped)) % 2 == 0
    ):
        digits = re.sub(r"[\s:,-]", "", stripped)
        digits = digits[2:] if digits[:2].lower() == "0x" else digits
        try:
            return bytes.fromhex(digits)
        except ValueError as exc:
            raise ValueError(f"PAYLOAD is not valid hex: {exc}") from None
    try:
        return base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"PAYLOAD is neither hex nor valid base64: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.codecs import CODECS, CodecOptions, decode_payload
    from firmware_bridge.lorawan.layout import LayoutError, builtin_layout, load_layout
    from firmware_bridge.model import DecodeError
    from firmware_bridge.mqtt.generic_json import MappingError, mapping_from_dict

    text = args.payload
    try:
        if text == "-":
            text = sys.stdin.read()
        elif text.startswith("@"):
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        payload = read_payload(text, args.format, CODECS[args.codec].kind)
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
