"""``climastream sink``: write the result topics to InfluxDB (``run``) and prepare it (``init``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from climastream import kafkasec
from climastream.shutdown import stop_on_signals

log = logging.getLogger(__name__)

RUN_HELP = """\
Consume readings, kpi, alerts and gateway-status with a consumer group and write them to an
InfluxDB v2 write API (InfluxDB 2.x/3, or VictoriaMetrics locally). Offsets are committed
only after the database acknowledged the write; SIGTERM flushes and commits. Run several
processes with the same kafka.group_id to share the partitions.

The token comes from CLIMASTREAM_INFLUX_TOKEN or influx.token_file, never from the file.
Environment overrides: CLIMASTREAM_KAFKA_BOOTSTRAP, CLIMASTREAM_INFLUX_URL,
CLIMASTREAM_INFLUX_ORG. Kafka TLS and SASL come from CLIMASTREAM_KAFKA_SECURITY_PROTOCOL,
_SASL_MECHANISM, _SASL_USERNAME, _SASL_PASSWORD[_FILE], _SSL_CAFILE, _SSL_CERTFILE and
_SSL_KEYFILE (or the --kafka-* options), never from the file. Exit status: 0 clean stop,
1 Kafka unreachable at start, 2 bad config, 3 fatal database error (e.g. 401/403), 4
shutdown could not flush (nothing lost: the records are re-read).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sink",
        help="write readings, KPIs, alerts and gateway status to InfluxDB",
        description="Write the result topics to InfluxDB (install with: pip install "
        "'climastream[sinks]'). See sinks/README.md.",
    )
    actions = parser.add_subparsers(dest="sink_action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="run the sink until SIGTERM",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(run)
    run.add_argument("--group", help="consumer group shared by sink processes (kafka.group_id)")
    run.add_argument("--metrics-port", type=int, help="Prometheus port, 0 disables (metrics.port)")
    kafkasec.add_arguments(run)
    run.set_defaults(func=_run)
    init = actions.add_parser(
        "init",
        help="create the org, buckets with retention and downsampling tasks",
        description=_init_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(init)
    init.set_defaults(func=_init)


def _init_doc() -> str:
    from sinks import bootstrap

    return bootstrap.__doc__ or ""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="sink YAML (see deploy/local/sink.yaml)")
    parser.add_argument("--kafka", metavar="HOST:PORT", help="kafka.bootstrap_servers")
    parser.add_argument("--influx-url", help="influx.url")
    parser.add_argument("--org", help="influx.org")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    kafka: dict[str, Any] = {}
    influx: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    if args.kafka:
        kafka["bootstrap_servers"] = args.kafka
    if getattr(args, "group", None):
        kafka["group_id"] = args.group
    if args.influx_url:
        influx["url"] = args.influx_url
    if args.org:
        influx["org"] = args.org
    if getattr(args, "metrics_port", None) is not None:
        metrics["port"] = args.metrics_port
    return {"kafka": kafka, "influx": influx, "metrics": metrics}


def _load(args: argparse.Namespace, *, kafka: bool = True) -> Any:
    """The config; ``kafka=False`` (``sink init``, which never connects to Kafka) leaves
    the TLS/SASL settings alone, so their files need not be mounted there."""
    from climastream.kafkasec import KafkaSecurity
    from sinks.config import load_config
    from sinks.errors import ConfigError

    try:
        security = kafkasec.from_args(args) if kafka else KafkaSecurity()
    except kafkasec.KafkaSecurityError as exc:
        raise ConfigError(str(exc)) from None
    return load_config(args.config, _overrides(args), security)


def _run(args: argparse.Namespace) -> int:
    from climastream.topics import KafkaUnreachable
    from sinks.errors import ConfigError, FatalWriteError
    from sinks.influx import SinkRunner

    try:
        config = _load(args)
        runner = SinkRunner(config)
    except ConfigError as exc:
        print(f"sink: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        stop = stop_on_signals()
        server = None
        if config.metrics.port:
            server = runner.metrics.serve(config.metrics.host, config.metrics.port)
        try:
            counters = await runner.run(stop)
        finally:
            if server is not None:
                server.shutdown()
        print(json.dumps(asdict(counters)), flush=True)
        return 4 if runner.abort.is_set() else 0

    try:
        return asyncio.run(main())
    except FatalWriteError as exc:
        print(f"sink: fatal: {exc}", file=sys.stderr)
        return 3
    except KafkaUnreachable as exc:
        print(f"sink: {exc}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    from sinks.bootstrap import init_database
    from sinks.errors import ConfigError, SinkError

    try:
        config = _load(args, kafka=False)
        steps = asyncio.run(init_database(config))
    except ConfigError as exc:
        print(f"sink init: {exc}", file=sys.stderr)
        return 2
    except SinkError as exc:
        print(f"sink init: {exc}", file=sys.stderr)
        return 3
    print(f"sink init: {config.influx.url}")
    for step in steps:
        print(f"  {step}")
    return 0
