"""``climastream topics create``: every contract topic, with the contract's partition count.

A Kafka broker creates a topic the first time a client names it, with its own default
partition count (``num.partitions``), not the contract's (``climastream.contract.Topics``).
The stream workers rely on the contract's counts: Faust refuses to write checkpoints to a
topic whose partition count differs from its source's, and the zone stage waits for one
partial per ``readings`` partition. Run this once before any other climastream service
(compose's ``topics-init``, an init container on Kubernetes). It is idempotent:

- a missing topic is created with its contract partition count, the given replication
  factor and, for a compacted topic, ``cleanup.policy=compact``;
- an existing topic with the contract's partition count is left alone;
- an existing topic with another count is an error naming it (exit status 1): a partition
  count cannot be lowered, so delete that topic (its records are lost) and run this again.

Exit status: 0 every topic is right; 1 a topic has the wrong count or could not be
created; 2 Kafka could not be reached (or aiokafka is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from climastream.contract import TOPICS, TopicSpec

BOOTSTRAP_ENV = "CLIMASTREAM_KAFKA_BOOTSTRAP"
REPLICATION_ENV = "CLIMASTREAM_TOPICS_REPLICATION_FACTOR"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
#: Kafka's TOPIC_ALREADY_EXISTS: another process created it between our look and our create
TOPIC_ALREADY_EXISTS = 36


class TopicsError(RuntimeError):
    """Kafka could not be reached or asked; the message says where and what to set."""


@dataclass(frozen=True, slots=True)
class TopicResult:
    """What became of one contract topic."""

    spec: TopicSpec
    #: "created", "exists", "wrong-partitions" or "failed"
    outcome: str
    #: the topic's partition count on the broker, when known
    partitions: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("created", "exists")

    def describe(self, replication_factor: int) -> str:
        name, wanted = self.spec.name, _partitions(self.spec.partitions)
        if self.outcome == "created":
            policy = ", compacted" if self.spec.compacted else ""
            return (
                f"{name}: created with {wanted} (replication factor {replication_factor}{policy})"
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


async def partition_counts(admin: Any) -> dict[str, int]:
    """Topic name -> partition count of every topic on the cluster.

    Asks for *all* topics: a metadata request that names a missing topic would make a
    broker with auto-creation on create it, with its default count.
    """
    topics = await admin.describe_topics()
    return {str(t["topic"]): len(t["partitions"]) for t in topics if t.get("error_code", 0) == 0}


def _checked(spec: TopicSpec, counts: dict[str, int]) -> TopicResult | None:
    """The result for a topic that exists (right count or not); None if it is missing."""
    if spec.name not in counts:
        return None
    found = counts[spec.name]
    outcome = "exists" if found == spec.partitions else "wrong-partitions"
    return TopicResult(spec, outcome, found)


async def ensure_topics(
    admin: Any,
    specs: Sequence[TopicSpec] = TOPICS,
    *,
    replication_factor: int = 1,
    timeout_ms: int = 30_000,
) -> list[TopicResult]:
    """Create each missing topic of ``specs``; check the partition count of the others.

    ``admin`` is a started ``aiokafka.admin.AIOKafkaAdminClient`` (or anything with its
    ``describe_topics()`` and ``create_topics(new_topics, timeout_ms=...)``).
    """
    from aiokafka.admin import NewTopic

    counts = await partition_counts(admin)
    results: dict[str, TopicResult] = {}
    missing = []
    for spec in specs:
        checked = _checked(spec, counts)
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
                    replication_factor=replication_factor,
                    topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
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
        counts = await partition_counts(admin)
        for spec in raced:
            results[spec.name] = _checked(spec, counts) or TopicResult(
                spec, "failed", error="the broker says it exists but does not list it"
            )
    return [results[spec.name] for spec in specs]


async def open_admin(bootstrap_servers: str, timeout_s: float) -> Any:
    """A started aiokafka admin client, or :class:`TopicsError` (no traceback)."""
    try:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError
    except ImportError:
        raise TopicsError(
            "aiokafka is not installed; install one of the extras that brings it, e.g. "
            "pip install 'climastream[stream]' (the production image has it)"
        ) from None
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await admin.start()
    except (KafkaError, OSError) as exc:
        await admin.close()
        raise TopicsError(
            f"cannot reach Kafka at {bootstrap_servers} ({exc.__class__.__name__}); is it "
            f"running? (set --kafka or {BOOTSTRAP_ENV})"
        ) from None
    return admin


async def create_topics(
    bootstrap_servers: str, replication_factor: int, timeout_s: float
) -> list[TopicResult]:
    admin = await open_admin(bootstrap_servers, timeout_s)
    from aiokafka.errors import KafkaError  # present: open_admin needed it

    try:
        return await ensure_topics(
            admin, replication_factor=replication_factor, timeout_ms=int(timeout_s * 1000)
        )
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
    create.add_argument(
        "--replication-factor",
        type=_positive_int,
        metavar="N",
        help=f"replicas of each new topic (env {REPLICATION_ENV}, default 1; 3 on a "
        "production cluster of three or more brokers). Existing topics keep theirs.",
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
    replication = args.replication_factor
    if replication is None:
        try:
            replication = _positive_int(os.environ.get(REPLICATION_ENV) or "1")
        except argparse.ArgumentTypeError as exc:
            print(f"topics: {REPLICATION_ENV}: {exc}", file=sys.stderr)
            return 2
    try:
        results = asyncio.run(create_topics(bootstrap, replication, args.timeout))
    except TopicsError as exc:
        print(f"topics: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(
            result.describe(replication),
            file=sys.stdout if result.ok else sys.stderr,
        )
    return 0 if all(result.ok for result in results) else 1
