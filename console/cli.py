"""``climastream console`` and ``climastream tail``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from datetime import timedelta
from pathlib import Path

from climastream import kafkasec
from climastream.shutdown import stop_on_signals

_KAFKA_HELP = "Kafka bootstrap HOST:PORT (env CLIMASTREAM_KAFKA_BOOTSTRAP, default 127.0.0.1:9092)"


def _bootstrap(value: str | None) -> str:
    return value or os.environ.get("CLIMASTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = subparsers.add_parser(
        "console",
        help="serve the operator console (live map, KPIs, alert inbox) in the browser",
        description=(
            "Serve the operator console over HTTP, fed live from Kafka (readings, kpi, "
            "alerts, gateway-status). Log in with a token or a name and password; viewers "
            "see everything, operators may also acknowledge and silence alerts. Credentials "
            "come from CLIMASTREAM_CONSOLE_OPERATOR_TOKEN / CLIMASTREAM_CONSOLE_VIEWER_TOKEN "
            "(or *_FILE) and/or an auth file (--auth-file or CLIMASTREAM_CONSOLE_AUTH_FILE). "
            "Scripts use the JSON API (OpenAPI at /api/openapi.json); digital twins and "
            "context brokers read the sensor nodes as NGSI-LD Smart Data Models entities at "
            "/ngsi-ld/v1/entities (see console/README.md). "
            "Install with: pip install 'climastream[console]'."
        ),
    )
    console.add_argument("--kafka", metavar="HOST:PORT", help=_KAFKA_HELP)
    kafkasec.add_arguments(console)
    console.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    console.add_argument("--port", type=int, default=8450, help="listen port (default 8450)")
    console.add_argument(
        "--gateway-config",
        type=Path,
        action="append",
        default=[],
        metavar="YAML",
        help="gateway config whose devices (positions, zones) draw the map; repeatable",
    )
    console.add_argument("--auth-file", type=Path, help="YAML with users and tokens")
    console.add_argument(
        "--coalesce",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="minimum interval between two updates of one panel (default 0.5)",
    )
    console.add_argument("--reference-zone", help="zone used as UHI reference (default: coolest)")
    console.add_argument(
        "--secure-cookies", action="store_true", help="mark the session cookie Secure (HTTPS)"
    )
    console.add_argument(
        "--behind-proxy",
        action="store_true",
        help="the console is only reachable through a reverse proxy that appends the "
        "client's address to X-Forwarded-For: failed logins are then counted per client "
        "(the last address in that header), not for the proxy's address, which all users "
        "share",
    )
    console.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password from stdin, print its hash for the auth file, and exit",
    )
    console.set_defaults(func=_run_console)

    tail = subparsers.add_parser(
        "tail",
        help="follow readings, KPIs or alerts live in the terminal, filtered",
        description=(
            "Print live records from Kafka, filtered. Filters combine with AND and may be "
            "repeated (OR within one filter). By default readings are shown; --kpi, "
            "--alerts and --status switch to KPIs, alerts and/or gateway status (add "
            "--readings to keep readings too)."
        ),
    )
    tail.add_argument("--kafka", metavar="HOST:PORT", help=_KAFKA_HELP)
    kafkasec.add_arguments(tail)
    tail.add_argument("--device", action="append", default=[], help="device id")
    tail.add_argument("--zone", action="append", default=[], help="zone")
    tail.add_argument("--quantity", action="append", default=[], help="quantity, e.g. pm2_5")
    tail.add_argument(
        "--kpi",
        action="append",
        nargs="?",
        const="*",
        metavar="KPI_ID",
        help="show KPI values (of KPI_ID, e.g. eaqi; without a value: every KPI)",
    )
    tail.add_argument("--alerts", action="store_true", help="show alert state changes")
    tail.add_argument(
        "--status",
        action="store_true",
        help="show the gateways' status reports (sources, buffer, sent, drops)",
    )
    tail.add_argument(
        "--gateway", action="append", default=[], help="gateway id (readings, alerts, status)"
    )
    tail.add_argument("--readings", action="store_true", help="show readings with --kpi/--alerts")
    tail.add_argument(
        "--backfill", type=int, default=0, metavar="N", help="start N records back per partition"
    )
    tail.add_argument("--max-lines", type=int, default=0, help="exit after N lines (0: never)")
    tail.add_argument(
        "--json",
        action="store_true",
        help="one record per line as JSON (readings: one Reading per line, the input of "
        "'climastream kpi eval')",
    )
    tail.set_defaults(func=_run_tail)


def _run_console(args: argparse.Namespace) -> int:
    from console.auth import AuthConfigError, Credentials, hash_password

    if args.hash_password:
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline()
        password = password.rstrip("\n")
        if len(password) < 10:
            print("console: use a password of at least 10 characters", file=sys.stderr)
            return 2
        print(hash_password(password))
        return 0
    try:
        credentials = Credentials.load(os.environ, args.auth_file)
        security = kafkasec.from_args(args)
    except (AuthConfigError, kafkasec.KafkaSecurityError) as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    if not credentials:
        print(
            "console: no credentials configured; set CLIMASTREAM_CONSOLE_OPERATOR_TOKEN / "
            "CLIMASTREAM_CONSOLE_VIEWER_TOKEN or pass --auth-file",
            file=sys.stderr,
        )
        return 2
    if args.coalesce < 0.05:
        print("console: --coalesce must be at least 0.05 s", file=sys.stderr)
        return 2
    from console.server import ConsoleSettings, serve

    settings = ConsoleSettings(
        bootstrap_servers=_bootstrap(args.kafka),
        kafka_security=security,
        host=args.host,
        port=args.port,
        gateway_configs=tuple(args.gateway_config),
        coalesce_interval_s=args.coalesce,
        reference_zone=args.reference_zone,
        secure_cookies=args.secure_cookies,
        behind_proxy=args.behind_proxy,
        stale_after=timedelta(seconds=60),
    )

    async def main() -> int:
        stop = stop_on_signals()
        await serve(settings, credentials, stop)
        return 0

    try:
        return asyncio.run(main())
    except Exception as exc:  # config files, ports in use: one clear line
        from edge.config import ConfigError

        if isinstance(exc, ConfigError | OSError):
            print(f"console: {exc}", file=sys.stderr)
            return 2
        raise


def _run_tail(args: argparse.Namespace) -> int:
    from climastream.topics import quiet_client_logs

    quiet_client_logs()
    from console.tail import KafkaUnreachable, TailFilter, tail

    kpis = None
    if args.kpi:
        kpis = frozenset() if "*" in args.kpi else frozenset(args.kpi)
    flt = TailFilter(
        devices=frozenset(args.device),
        zones=frozenset(args.zone),
        quantities=frozenset(args.quantity),
        kpis=kpis,
        alerts=args.alerts,
        readings=args.readings or (kpis is None and not args.alerts and not args.status),
        status=args.status,
        gateways=frozenset(args.gateway),
    )

    try:
        security = kafkasec.from_args(args)
    except kafkasec.KafkaSecurityError as exc:
        print(f"tail: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        stop = stop_on_signals()
        await tail(
            _bootstrap(args.kafka),
            flt,
            security=security,
            stop=stop,
            backfill=args.backfill,
            max_lines=args.max_lines,
            as_json=args.json,
        )
        return 0

    try:
        return asyncio.run(main())
    except KafkaUnreachable as exc:
        print(f"tail: {exc}", file=sys.stderr)
        return 2
