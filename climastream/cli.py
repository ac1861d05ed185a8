"""The ``climastream`` command line.

Each part registers its own subcommands from a module listed in :data:`COMMAND_MODULES`.
Registration imports nothing heavy; a subcommand imports its part only when it runs, so
``climastream --help`` works on a gateway that installed only the edge extra.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from climastream import __version__

#: modules exposing ``register(subparsers)``, in the order --help lists them
COMMAND_MODULES: tuple[str, ...] = (
    "climastream.stack",
    "climastream.topics",
    "firmware_bridge.cli",
    "firmware_bridge.simulators.runner",
    "edge.cli",
    "stream.cli",
    "stream.kpi_cli",
    "stream.alerts.cli",
    "sinks.cli",
    "console.cli",
    "climastream.demo",
)

DESCRIPTION = """\
climastream: edge-to-cloud streaming for city climate monitoring.

Gateways read sensors (serial, LoRaWAN, MQTT), run small ONNX models and stream readings to
Kafka; Faust jobs window them into KPIs and alerts; sinks write everything to InfluxDB.
Run 'climastream COMMAND --help' for the options of one command.
"""


def add_metrics_host(parser: argparse.ArgumentParser) -> None:
    """``--metrics-host`` for a service's Prometheus endpoint.

    Loopback by default, so a metrics port is never exposed by accident; in a container
    (compose, Kubernetes) the scraper is another host and it must be ``0.0.0.0``.
    """
    parser.add_argument(
        "--metrics-host",
        metavar="ADDR",
        default=os.environ.get("CLIMASTREAM_METRICS_HOST", "127.0.0.1"),
        help="address the metrics endpoint listens on (env CLIMASTREAM_METRICS_HOST, "
        "default 127.0.0.1; 0.0.0.0 in a container)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="climastream",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"climastream {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold (default INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A part that is not installed (or not merged yet) has no commands; anything
            # else missing inside an installed part is a real error.
            if not exc.name or not (name == exc.name or name.startswith(exc.name + ".")):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): stop quietly, as a shell tool does, and keep
        # the interpreter's final flush of stdout from failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
