"""``climastream edge``: run the gateway agent, or check a config like ``telegraf --test``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from climastream.shutdown import stop_on_signals

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "edge",
        help="the gateway agent: read sensors, buffer durably, stream readings to Kafka",
        description="Run the gateway agent (install with: pip install 'climastream[edge]').",
    )
    actions = parser.add_subparsers(dest="edge_action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="run the agent until SIGTERM/SIGINT, then drain the buffer and exit",
        description="Run the agent. On SIGTERM it stops its sources, makes everything read "
        "durable, sends what Kafka accepts within the drain timeout and exits; the rest is "
        "sent on the next start. Under systemd (Type=notify) it reports READY and feeds the "
        "watchdog.",
    )
    run.add_argument("--config", type=Path, required=True, help="gateway YAML file")
    run.add_argument(
        "--kafka", metavar="HOST:PORT", help="override kafka.bootstrap_servers from the config"
    )
    run.add_argument("--buffer", type=Path, help="override buffer.path from the config")
    run.add_argument(
        "--status-file", type=Path, help="write the latest GatewayStatus JSON here as well"
    )
    run.add_argument(
        "--metrics", metavar="HOST:PORT", help="override metrics.listen ('off' disables it)"
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=15.0,
        help="seconds to drain on shutdown (default %(default)s)",
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text or as JSON objects (default %(default)s)",
    )
    run.set_defaults(func=_run)

    check = actions.add_parser(
        "check",
        help="validate a config, open each source once, print a few decoded readings, exit",
        description="Like 'telegraf --test': validates the config (errors name the key), "
        "loads every model, opens each source once and prints up to --count decoded "
        "readings per source as JSON lines, with model outputs applied. Sends nothing to "
        "Kafka and writes no buffer. An MQTT source connects as a client of its own "
        "(client id + '-check-<pid>', clean session): it shows messages published while it "
        "waits and leaves the service's queued messages alone. Exit status 0 when every "
        "model loaded and every source produced readings; 1 otherwise; 2 for a config error.",
    )
    check.add_argument("--config", type=Path, required=True, help="gateway YAML file")
    check.add_argument(
        "--count", type=int, default=3, help="readings to print per source (default %(default)s)"
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait per source (default %(default)s)",
    )
    check.set_defaults(func=_check)

    reference = actions.add_parser(
        "config-reference",
        help="print the gateway config reference: every key, its type, default and meaning",
        description="Print the gateway config reference as Markdown (edge/CONFIG.md is this "
        "output): every key of the gateway YAML with its type and bounds, its default and "
        "what it does, generated from the validating models, so it matches what "
        "'edge check' accepts.",
    )
    reference.set_defaults(func=_config_reference)


def _config_reference(args: argparse.Namespace) -> int:
    from edge.reference import render

    sys.stdout.write(render())
    return 0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]  # the level stays what 'climastream --log-level' set
    logging.getLogger("aiokafka").setLevel(logging.ERROR)


def _load(args: argparse.Namespace, overrides: dict[str, object]) -> Any:
    from edge.config import ConfigError, load_config

    try:
        return load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    _setup_logging(args.log_format)
    overrides: dict[str, object] = {}
    if args.kafka:
        overrides["kafka.bootstrap_servers"] = args.kafka
    if args.buffer:
        overrides["buffer.path"] = str(args.buffer)
    if args.metrics:
        overrides["metrics.listen"] = None if args.metrics == "off" else args.metrics
    config = _load(args, overrides)
    if config is None:
        return 2
    from edge.agent import Agent
    from edge.metrics import AgentCollector, serve

    async def main() -> int:
        stop = stop_on_signals()
        try:
            agent = Agent(
                config,
                status_file=args.status_file,
                drain_timeout_s=args.drain_timeout,
                tune_gc=True,
            )
        except (ValueError, OSError) as exc:
            print(f"edge: {exc}", file=sys.stderr)
            return 2
        server = None
        if config.metrics.listen:

            def snapshot() -> Any:
                if agent.last_status is None:
                    raise RuntimeError("no status yet")
                return agent.last_status

            try:
                server = serve(config.metrics.listen, AgentCollector(snapshot, agent))
            except OSError as exc:
                print(f"edge: metrics.listen {config.metrics.listen}: {exc}", file=sys.stderr)
                return 2
        try:
            counters = await agent.run(stop)
        finally:
            if server is not None:
                server.shutdown()
        print(
            json.dumps(
                {"accepted": counters.accepted, "sent": counters.sent, "dropped": counters.dropped}
            )
        )
        return 0

    return asyncio.run(main())


def _check(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    # the file as `edge run` reads it first: the overrides below would hide a bad
    # buffer.backend or metrics.listen, and check would pass a config that run refuses
    if _load(args, {}) is None:
        return 2
    config = _load(args, {"buffer.backend": "memory", "metrics.listen": None})
    if config is None:
        return 2
    redacted = config.model_dump(mode="json")
    print(f"config {args.config}: ok (gateway {config.gateway_id})", file=sys.stderr)
    log.debug("config %s", redacted)  # SecretStr dumps as '**********'
    return asyncio.run(_check_sources(config, args.count, args.timeout))


async def _check_sources(config: Any, count: int, wait_s: float) -> int:
    from edge.agent import AckingSource, Agent, build_sources
    from edge.buffer import Kind

    class NoUplink:
        async def send(self, topic: str, key: bytes, value: bytes) -> Any:
            raise RuntimeError("check mode sends nothing")

        async def stop(self) -> None:
            return None

    try:
        # MQTT: a client of its own on a clean session, never the service's persistent
        # one: acking its messages would discard uplinks queued for the service
        agent = Agent(config, sources=build_sources(config, check=True), uplink=NoUplink())
    except (ValueError, OSError) as exc:  # a source the config describes cannot be built
        print(f"edge: {exc}", file=sys.stderr)
        return 2
    await agent.start()
    failed = 0
    for model in agent.models:
        state = f"failed: {model.error}" if model.error else "loaded"
        print(f"model {model.id} ({model.ref}): {state}", file=sys.stderr)
        failed += model.error is not None
    assert agent.buffer is not None
    for source in agent.sources:
        got = 0
        try:
            async with asyncio.timeout(wait_s):
                while got < count:
                    if isinstance(source, AckingSource):
                        samples, ack = await source.read_acked()
                    else:
                        samples, ack = await source.read(), None
                    got += agent.ingest(samples)
                    if ack is not None:
                        ack()  # the check's own copies (its own clean session)
        except TimeoutError:
            pass
        shown = 0
        for pending in agent.buffer.take(Kind.READING, 10_000):
            for payload in pending.payloads():
                if shown < count:  # a read can decode several; show what was asked for
                    print(payload.decode())
                    shown += 1
        agent.buffer.ack(Kind.READING, 2**62)
        retained = getattr(source, "retained", 0)
        errors = {k: v for k, v in source.decode_errors.items() if k != "retained_replay"}
        why = getattr(source, "last_error", None)
        if not why and not got and source.state.value == "up":
            topics = getattr(source, "topics", None)
            why = (
                f"connected, but no new message on {', '.join(topics)} within {wait_s:g} s: "
                "check the topic filters; a LoRaWAN device may send less often (--timeout)"
                if topics
                else f"open, but nothing decoded within {wait_s:g} s: check codec and baudrate"
            )
        print(
            f"source {source.name}: {source.state.value}, {got} readings"
            + (f", decode errors {errors}" if errors else "")
            + (
                f", {retained} retained messages skipped (the broker's stored last value of "
                "a topic, replayed at subscribe: not a new uplink; the service skips them too)"
                if retained
                else ""
            )
            + (f" ({why})" if why and not got else ""),
            file=sys.stderr,
        )
        failed += got == 0
        await source.stop()
    dropped = agent.counters.dropped
    if dropped:
        print(f"dropped: {dropped}", file=sys.stderr)
    agent.buffer.close()
    return 1 if failed else 0
