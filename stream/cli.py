"""``climastream stream``: run the Faust KPI worker."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace

from climastream import kafkasec
from climastream.cli import add_metrics_host


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "stream",
        help="the Faust KPI engine: window readings into KPIs and alerts",
        description="Run the KPI stream worker (install with: pip install 'climastream[stream]'). "
        "Several workers with the same --app-id share the partitions.",
    )
    actions = parser.add_subparsers(dest="stream_action", metavar="ACTION", required=True)
    worker = actions.add_parser("worker", help="run one Faust worker until SIGTERM")
    worker.add_argument(
        "--kafka", metavar="HOST:PORT", help="bootstrap servers (env CLIMASTREAM_KAFKA_BOOTSTRAP)"
    )
    kafkasec.add_arguments(worker)
    worker.add_argument(
        "--app-id", help="Faust app id / consumer group (env CLIMASTREAM_STREAM_APP_ID)"
    )
    worker.add_argument("--data-dir", default=".faust", help="Faust table data directory")
    worker.add_argument(
        "--config",
        help="stream config YAML: windows, zones, devices (env CLIMASTREAM_STREAM_CONFIG)",
    )
    worker.add_argument(
        "--store",
        choices=["auto", "memory", "rocksdb"],
        default="auto",
        help="table store: auto = RocksDB via rocksdict when installed, else memory",
    )
    worker.add_argument(
        "--checkpoint-part-bytes",
        type=int,
        metavar="BYTES",
        help="store a partition's checkpoint in parts of at most BYTES under a manifest once "
        "it is bigger (default 262144; keep it well under the broker's max.message.bytes)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on PORT (climastream_stream_*: readings, "
        "late readings, duplicates, counter resets, dead letters, KPIs, open windows, "
        "each partition's watermark lag and the zone windows held for it)",
    )
    add_metrics_host(worker)
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(func=_worker)


def _worker(args: argparse.Namespace) -> int:
    from climastream.topics import DurabilityError
    from stream.app import (
        KafkaUnreachable,
        SessionTimeoutError,
        StreamSettings,
        TopicMismatch,
        create_app,
        create_worker,
        ensure_topics,
    )
    from stream.config import StreamConfigError

    try:  # --config, or else CLIMASTREAM_STREAM_CONFIG: one error line either way
        settings = StreamSettings.from_env(args.config, kafkasec.from_args(args))
    except (
        StreamConfigError,
        DurabilityError,
        SessionTimeoutError,
        kafkasec.KafkaSecurityError,
    ) as exc:
        print(f"stream worker: {exc}", file=sys.stderr)
        return 2
    if args.kafka:
        settings = replace(settings, bootstrap_servers=args.kafka)
    if args.app_id:
        settings = replace(settings, app_id=args.app_id)
    settings = replace(settings, data_dir=args.data_dir, store=args.store)
    if args.checkpoint_part_bytes is not None:
        if args.checkpoint_part_bytes < 1:
            print("stream worker: --checkpoint-part-bytes must be at least 1", file=sys.stderr)
            return 2
        settings = replace(settings, checkpoint_part_bytes=args.checkpoint_part_bytes)
    try:
        asyncio.run(ensure_topics(settings))
    except KafkaUnreachable as exc:
        print(f"stream worker: {exc}", file=sys.stderr)
        return 1
    except TopicMismatch as exc:
        print(f"stream worker: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    if args.metrics_port:
        from stream.app import serve_metrics

        serve_metrics(app, args.metrics_port, args.metrics_host)
    create_worker(app, args.loglevel).execute_from_commandline()
    return 0
