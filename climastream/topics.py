"""``climastream topics create``: every contract topic, with the contract's partition count.

A Kafka broker creates a topic the first time a client names it, with its own default
partition count (``num.partitions``), not the contract's (``climastream.contract.Topics``).
The stream workers rely on the contract's counts: Faust refuses to write checkpoints to a
topic whose partition count differs from its source's, and the zone stage waits for one
partial per ``readings`` partition. Run this once before any other climastream service
(compose's ``topics-init``, an init container on Kubernetes). It is idempotent:

- a missing topic is created with its contract partition count, the replication factor
  and ``min.insync.replicas`` of :class:`Durability` and, for a compacted topic,
  ``cleanup.policy=compact``; ``gateway-status`` with
  ``message.timestamp.type=LogAppendTime`` (its records' timestamps are the broker's, not
  a gateway clock hours wrong after a power cut; the sink writes an unsynchronized status
  at it). An existing ``gateway-status`` keeps its setting: ``kafka-configs.sh --alter
  --entity-type topics --entity-name gateway-status --add-config
  message.timestamp.type=LogAppendTime`` changes it;
- an existing topic with the contract's partition count is left alone (one with fewer
  replicas than asked is named in a warning: Kafka does not add replicas by itself);
- an existing topic with another count is an error naming it (exit status 1): a partition
  count cannot be lowered, so delete that topic (its records are lost) and run this again.

Durability: every climastream producer that must not lose a record (the gateways' uplink,
the stream workers, the sink's dead letters, the console) sends with ``acks=all``, which
means "stored on ``min.insync.replicas`` brokers". With replication factor 1 that is one
broker, and losing its disk loses the topic, the stream state in the changelogs included.
A cluster of three or more brokers wants replication factor 3 and ``min.insync.replicas``
2 (a write still succeeds with one broker down); the production image sets those through
``CLIMASTREAM_TOPICS_REPLICATION_FACTOR`` and ``CLIMASTREAM_TOPICS_MIN_INSYNC_REPLICAS``.
The code's default stays 1 for the single-broker local stack and the tests. The stream
workers and the alert engine read the same variables for the internal topics they create.

Exit status: 0 every topic is right; 1 a topic has the wrong count or could not be
created; 2 Kafka could not be reached (or aiokafka is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from climastream import kafkasec
from climastream.contract import TOPICS, TopicSpec
from climastream.kafkasec import KafkaSecurity

BOOTSTRAP_ENV = "CLIMASTREAM_KAFKA_BOOTSTRAP"
REPLICATION_ENV = "CLIMASTREAM_TOPICS_REPLICATION_FACTOR"
MIN_INSYNC_ENV = "CLIMASTREAM_TOPICS_MIN_INSYNC_REPLICAS"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
#: Kafka's TOPIC_ALREADY_EXISTS: another process created it between our look and our create
TOPIC_ALREADY_EXISTS = 36


def unreachable(bootstrap_servers: str, security: KafkaSecurity | None = None) -> str:
    """What a command says when no bootstrap server answered: where it looked, what to set.

    The default address is a production broker's; the local stack (``stack up``, ``demo``)
    listens elsewhere, and an operator trying the CLI beside the demo has not set it yet.
    With TLS or SASL it names them (never a secret): a broker that refuses the handshake
    (a TLS listener spoken to in plain text, a CA that does not match) looks the same.
    """
    text = (
        f"cannot reach Kafka at {bootstrap_servers}; is it running? "
        f"(set --kafka or {BOOTSTRAP_ENV})"
    )
    if security is not None and security.security_protocol != "PLAINTEXT":
        text = (
            f"cannot reach Kafka at {bootstrap_servers} over {security.describe()}; is it "
            "running, and does its listener take these settings? (set --kafka or "
            f"{BOOTSTRAP_ENV}, and CLIMASTREAM_KAFKA_SECURITY_PROTOCOL ...)"
        )
    if bootstrap_servers == DEFAULT_BOOTSTRAP:
        text += (
            "; for the local stack of 'climastream stack up' or 'climastream demo', "
            'run: eval "$(climastream stack env)"'
        )
    return text


class KafkaUnreachable(RuntimeError):
    """No bootstrap server answered: the message says where it looked and what to set."""


async def start_client(
    client: Any, bootstrap_servers: str, security: KafkaSecurity | None = None
) -> None:
    """Start an aiokafka producer or consumer, or raise :class:`KafkaUnreachable` with
    the client stopped: a command prints that one line, not aiokafka's traceback."""
    from aiokafka.errors import KafkaConnectionError

    try:
        await client.start()
    except KafkaConnectionError:
        with contextlib.suppress(Exception):
            await client.stop()
        raise KafkaUnreachable(unreachable(bootstrap_servers, security)) from None


def quiet_client_logs() -> None:
    """For a one-shot command a person types (alerts list, ack, tail): aiokafka's own log
    lines ('Updating subscribed topics to: ...', 'Unable connect to ...') only repeat what
    the command prints itself. ``climastream --log-level DEBUG`` keeps them."""
    import logging

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


class TopicsError(RuntimeError):
    """Kafka could not be reached or asked; the message says where and what to set."""


class DurabilityError(ValueError):
    """A replication setting is not a whole number, or asks for more in-sync replicas than
    replicas; the message names the flag or variable."""


def default_min_insync(replication_factor: int) -> int:
    """2 from three replicas on (a write survives one broker down), else 1: with two
    replicas, 2 in sync would stop every write while either broker is down."""
    return 2 if replication_factor >= 3 else 1


@dataclass(frozen=True, slots=True)
class Durability:
    """How every topic climastream creates is replicated (contract and internal topics)."""

    replication_factor: int = 1
    #: brokers that must hold a record before an ``acks=all`` send succeeds
    min_insync_replicas: int = 1

    def __post_init__(self) -> None:
        if self.replication_factor < 1 or self.min_insync_replicas < 1:
            raise DurabilityError("replication factor and min.insync.replicas must be >= 1")
        if self.min_insync_replicas > self.replication_factor:
            raise DurabilityError(
                f"min.insync.replicas {self.min_insync_replicas} is more than the replication "
                f"factor {self.replication_factor}: no write could ever succeed"
            )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        replication_factor: int | None = None,
        min_insync_replicas: int | None = None,
    ) -> Durability:
        """Flags first (``replication_factor``, ``min_insync_replicas``), then
        ``CLIMASTREAM_TOPICS_REPLICATION_FACTOR`` / ``..._MIN_INSYNC_REPLICAS``, then 1 and
        :func:`default_min_insync`. Raises :class:`DurabilityError` naming the variable."""
        env = os.environ if environ is None else environ
        if replication_factor is None:
            replication_factor = _from_env(env, REPLICATION_ENV) or 1
        if min_insync_replicas is None:
            min_insync_replicas = _from_env(env, MIN_INSYNC_ENV) or default_min_insync(
                replication_factor
            )
        return cls(replication_factor, min_insync_replicas)

    def topic_configs(
        self, *, compacted: bool = False, log_append_time: bool = False
    ) -> dict[str, str]:
        """The configs of a new topic: ``min.insync.replicas`` always (a broker default of 2
        would refuse every write to a topic of one replica), compaction and the broker's
        append time as the records' timestamps if asked."""
        configs = {"min.insync.replicas": str(self.min_insync_replicas)}
        if compacted:
            configs["cleanup.policy"] = "compact"
        if log_append_time:
            configs["message.timestamp.type"] = "LogAppendTime"
        return configs

    def describe(self) -> str:
        return (
            f"replication factor {self.replication_factor}, "
            f"min.insync.replicas {self.min_insync_replicas}"
        )


def _from_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return _positive_int(value)
    except argparse.ArgumentTypeError as exc:
        raise DurabilityError(f"{name}: {exc}") from None


@dataclass(frozen=True, slots=True)
class TopicResult:
    """What became of one contract topic."""

    spec: TopicSpec
    #: "created", "exists", "wrong-partitions" or "failed"
    outcome: str
    #: the topic's partition count on the broker, when known
    partitions: int | None = None
    error: str = ""
    #: the fewest replicas of any of its partitions, for a topic that exists
    replicas: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("created", "exists")

    def under_replicated(self, durability: Durability) -> bool:
        """An existing topic with fewer replicas than ``durability`` asks for."""
        return (
            self.outcome == "exists"
            and self.replicas is not None
            and self.replicas < durability.replication_factor
        )

    def describe(self, durability: Durability) -> str:
        name, wanted = self.spec.name, _partitions(self.spec.partitions)
        if self.outcome == "created":
            policy = ", compacted" if self.spec.compacted else ""
            return f"{name}: created with {wanted} ({durability.describe()}{policy})"
        if self.under_replicated(durability):
            return (
                f"{name}: exists with {wanted} but replication factor {self.replicas}, "
                f"below the {durability.replication_factor} asked: losing one broker can lose "
                "it. Kafka keeps an existing topic's replicas; add them with "
                "kafka-reassign-partitions.sh (deploy/production/README.md)"
            )
        if self.outcome == "exists":
            return f"{name}: exists with {wanted}"
        if self.outcome == "wrong-partitions":
            return (
                f"{name}: has {_partitions(self.partitions or 0)} but the contract says "
                f"{wanted}, which the climastream services count on. Delete topic {name!r} "
                "(its records are lost) and run 'climastream topics create' again: a "
                "partition count cannot be lowered, and raising it moves keys"
            )
        return f"{name}: could not be created: {self.error}"


def _partitions(count: int) -> str:
    return f"{count} partition{'' if count == 1 else 's'}"


def _error_name(code: int) -> str:
    from aiokafka.errors import for_code  # UnknownError for a code it does not know

    return f"{for_code(code).__name__} (Kafka error {code})"


@dataclass(frozen=True, slots=True)
class TopicShape:
    """What the cluster says of an existing topic."""

    partitions: int
    #: the fewest replicas of any partition (None if the broker did not list them)
    replicas: int | None


async def topic_shapes(admin: Any) -> dict[str, TopicShape]:
    """Topic name -> partition count and replicas of every topic on the cluster.

    Asks for *all* topics: a metadata request that names a missing topic would make a
    broker with auto-creation on create it, with its default count.
    """
    shapes = {}
    for topic in await admin.describe_topics():
        if topic.get("error_code", 0) != 0:
            continue
        partitions = topic["partitions"]
        replicas = [len(p["replicas"]) for p in partitions if "replicas" in p]
        shapes[str(topic["topic"])] = TopicShape(len(partitions), min(replicas, default=None))
    return shapes


def _checked(spec: TopicSpec, shapes: dict[str, TopicShape]) -> TopicResult | None:
    """The result for a topic that exists (right count or not); None if it is missing."""
    if spec.name not in shapes:
        return None
    found = shapes[spec.name]
    outcome = "exists" if found.partitions == spec.partitions else "wrong-partitions"
    return TopicResult(spec, outcome, found.partitions, replicas=found.replicas)


async def ensure_topics(
    admin: Any,
    specs: Sequence[TopicSpec] = TOPICS,
    *,
    durability: Durability | None = None,
    timeout_ms: int = 30_000,
) -> list[TopicResult]:
    """Create each missing topic of ``specs``; check the partition count of the others.

    New topics get ``durability`` (default: one replica, the local stack's).

    ``admin`` is a started ``aiokafka.admin.AIOKafkaAdminClient`` (or anything with its
    ``describe_topics()`` and ``create_topics(new_topics, timeout_ms=...)``).
    """
    from aiokafka.admin import NewTopic

    durability = durability or Durability()
    shapes = await topic_shapes(admin)
    results: dict[str, TopicResult] = {}
    missing = []
    for spec in specs:
        checked = _checked(spec, shapes)
        if checked is None:
            missing.append(spec)
        else:
            results[spec.name] = checked
    raced = []
    if missing:
        response = await admin.create_topics(
            [
                NewTopic(
                    name=spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=durability.replication_factor,
                    topic_configs=durability.topic_configs(
                        compacted=spec.compacted, log_append_time=spec.log_append_time
                    ),
                )
                for spec in missing
            ],
            timeout_ms=timeout_ms,
        )
        errors = {
            str(e[0]): (int(e[1]), e[2] if len(e) > 2 else None) for e in response.topic_errors
        }
        for spec in missing:
            if spec.name not in errors:
                results[spec.name] = TopicResult(spec, "failed", error="the broker did not answer")
                continue
            code, message = errors[spec.name]
            if code == 0:
                results[spec.name] = TopicResult(spec, "created", spec.partitions)
            elif code == TOPIC_ALREADY_EXISTS:
                raced.append(spec)  # someone else created it just now: check its count
            else:
                detail = _error_name(code) + (f": {message}" if message else "")
                results[spec.name] = TopicResult(spec, "failed", error=detail)
    if raced:
        shapes = await topic_shapes(admin)
        for spec in raced:
            results[spec.name] = _checked(spec, shapes) or TopicResult(
                spec, "failed", error="the broker says it exists but does not list it"
            )
    return [results[spec.name] for spec in specs]


async def open_admin(
    bootstrap_servers: str, timeout_s: float, security: KafkaSecurity | None = None
) -> Any:
    """A started aiokafka admin client, or :class:`TopicsError` (no traceback)."""
    try:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError
    except ImportError:
        raise TopicsError(
            "aiokafka is not installed; install one of the extras that brings it, e.g. "
            "pip install 'climastream[stream]' (the production image has it)"
        ) from None
    security = security or KafkaSecurity()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        **security.aiokafka_kwargs(),
    )
    try:
        await admin.start()
    except (KafkaError, OSError) as exc:
        await admin.close()
        where = unreachable(bootstrap_servers, security)
        raise TopicsError(f"{where} ({exc.__class__.__name__})") from None
    return admin


async def create_topics(
    bootstrap_servers: str,
    durability: Durability,
    timeout_s: float,
    security: KafkaSecurity | None = None,
) -> list[TopicResult]:
    admin = await open_admin(bootstrap_servers, timeout_s, security)
    from aiokafka.errors import KafkaError  # present: open_admin needed it

    try:
        return await ensure_topics(admin, durability=durability, timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:  # the broker went away or refused mid-way: say so, briefly
        raise TopicsError(f"Kafka at {bootstrap_servers}: {exc!r}") from None
    finally:
        await admin.close()


# --------------------------------------------------------------------------- CLI


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return number


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "topics",
        help="create the contract's Kafka topics with their partition counts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="topics_action", metavar="ACTION", required=True)
    topics = ", ".join(f"{spec.name} ({spec.partitions})" for spec in TOPICS)
    create = actions.add_parser(
        "create",
        help="create every missing contract topic; check the partitions of the others",
        description=f"Create every contract topic with its partition count: {topics}. "
        "Existing topics with the right count are left alone; one with another count is an "
        "error naming it (exit 1). Needs aiokafka (the stream, sinks, console or edge extra).",
    )
    create.add_argument(
        "--kafka",
        metavar="HOST:PORT",
        help=f"bootstrap servers (env {BOOTSTRAP_ENV}, default {DEFAULT_BOOTSTRAP})",
    )
    kafkasec.add_arguments(create)
    create.add_argument(
        "--replication-factor",
        type=_positive_int,
        metavar="N",
        help=f"replicas of each new topic (env {REPLICATION_ENV}, default 1; the "
        "production image sets 3, for a cluster of three or more brokers). Existing topics "
        "keep theirs (a warning names those with fewer).",
    )
    create.add_argument(
        "--min-insync-replicas",
        type=_positive_int,
        metavar="N",
        help=f"min.insync.replicas of each new topic: brokers that must hold a record before "
        f"an acks=all send succeeds (env {MIN_INSYNC_ENV}, default 2 from replication "
        "factor 3 on, else 1)",
    )
    create.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long each request to Kafka may take (default 30)",
    )
    create.set_defaults(func=_create)


def _create(args: argparse.Namespace) -> int:
    bootstrap = args.kafka or os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP
    try:
        durability = Durability.from_env(
            replication_factor=args.replication_factor,
            min_insync_replicas=args.min_insync_replicas,
        )
        security = kafkasec.from_args(args)
    except (DurabilityError, kafkasec.KafkaSecurityError) as exc:
        print(f"topics: {exc}", file=sys.stderr)
        return 2
    quiet_client_logs()  # a one-shot command: its own line says what aiokafka's would
    try:
        results = asyncio.run(create_topics(bootstrap, durability, args.timeout, security))
    except TopicsError as exc:
        print(f"topics: {exc}", file=sys.stderr)
        return 2
    for result in results:
        fine = result.ok and not result.under_replicated(durability)
        print(result.describe(durability), file=sys.stdout if fine else sys.stderr)
    return 0 if all(result.ok for result in results) else 1
