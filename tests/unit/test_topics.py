"""``climastream topics create`` against a fake admin client (no broker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from climastream import topics
from climastream.cli import main
from climastream.contract import TOPICS, Topics, TopicSpec

ROOT = Path(__file__).resolve().parents[2]


class FakeAdmin:
    """The part of aiokafka's AIOKafkaAdminClient that the command uses."""

    def __init__(
        self,
        existing: dict[str, int] | None = None,
        *,
        replicas: dict[str, int] | None = None,
        racers: dict[str, int] | None = None,
        refuse: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        self.topics = dict(existing or {})
        #: replicas of each partition of an existing topic (1 unless given)
        self.replicas = dict(replicas or {})
        #: created by another process between our look and our create (count it gave them)
        self.racers = racers or {}
        #: topic -> (error code, message) the broker answers to its creation
        self.refuse = refuse or {}
        self.created: list[Any] = []
        self.closed = False

    async def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        # naming a missing topic in a metadata request may auto-create it
        assert topics is None, "ask for every topic, never name one"
        return [
            {
                "error_code": 0,
                "topic": name,
                "is_internal": False,
                "partitions": [
                    {
                        "error_code": 0,
                        "partition": i,
                        "replicas": list(range(self.replicas.get(name, 1))),
                    }
                    for i in range(count)
                ],
            }
            for name, count in self.topics.items()
        ]

    async def create_topics(
        self, new_topics: list[Any], timeout_ms: int | None = None, validate_only: bool = False
    ) -> Any:
        errors: list[tuple[str, int, str | None]] = []
        for topic in new_topics:
            if topic.name in self.racers:
                self.topics[topic.name] = self.racers[topic.name]
                errors.append((topic.name, 36, "Topic with this name already exists."))
            elif topic.name in self.refuse:
                errors.append((topic.name, *self.refuse[topic.name]))
            else:
                self.topics[topic.name] = topic.num_partitions
                self.replicas[topic.name] = topic.replication_factor
                self.created.append(topic)
                errors.append((topic.name, 0, None))
        return SimpleNamespace(topic_errors=errors)

    async def close(self) -> None:
        self.closed = True


async def test_an_empty_cluster_gets_every_contract_topic_with_its_partitions() -> None:
    admin = FakeAdmin()
    results = await topics.ensure_topics(admin, durability=topics.Durability(3, 2))
    assert [r.outcome for r in results] == ["created"] * len(TOPICS)
    assert {t.name: t.num_partitions for t in admin.created} == {
        spec.name: spec.partitions for spec in TOPICS
    }
    assert {t.replication_factor for t in admin.created} == {3}
    # acks=all then means "on two brokers": one broker down loses nothing, stops nothing
    assert {t.topic_configs["min.insync.replicas"] for t in admin.created} == {"2"}
    assert admin.topics[Topics.READINGS.name] == 4


async def test_a_compacted_topic_is_created_compacted() -> None:
    specs = [TopicSpec("table", 2, None, "d", compacted=True), TopicSpec("log", 1, None, "d")]
    admin = FakeAdmin()
    await topics.ensure_topics(admin, specs)
    configs = {t.name: t.topic_configs for t in admin.created}
    assert configs == {
        "table": {"cleanup.policy": "compact", "min.insync.replicas": "1"},
        "log": {"min.insync.replicas": "1"},
    }


async def test_gateway_status_records_carry_the_brokers_time() -> None:
    """A gateway's clock can be hours behind after a power cut, and so is the create time
    its producer stamps: the sink writes such a status at the broker's append time."""
    admin = FakeAdmin()
    await topics.ensure_topics(admin, TOPICS)
    configs = {t.name: t.topic_configs for t in admin.created}
    stamped = {name for name, c in configs.items() if "message.timestamp.type" in c}
    assert stamped == {Topics.GATEWAY_STATUS.name}
    assert configs[Topics.GATEWAY_STATUS.name]["message.timestamp.type"] == "LogAppendTime"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (1, 1)),  # the local stack and the tests: one broker
        ({topics.REPLICATION_ENV: "3"}, (3, 2)),  # production: one broker may be down
        ({topics.REPLICATION_ENV: "2"}, (2, 1)),  # 2 in sync would stop writes on one down
        ({topics.REPLICATION_ENV: "5"}, (5, 2)),
        ({topics.REPLICATION_ENV: "3", topics.MIN_INSYNC_ENV: "3"}, (3, 3)),
        ({topics.REPLICATION_ENV: " ", topics.MIN_INSYNC_ENV: ""}, (1, 1)),
    ],
)
def test_durability_from_the_environment(env: dict[str, str], expected: tuple[int, int]) -> None:
    durability = topics.Durability.from_env(env)
    assert (durability.replication_factor, durability.min_insync_replicas) == expected


def test_durability_flags_win_over_the_environment() -> None:
    env = {topics.REPLICATION_ENV: "3"}
    # a flag for a small cluster also lowers the derived min.insync.replicas
    assert topics.Durability.from_env(env, replication_factor=1) == topics.Durability(1, 1)
    env[topics.MIN_INSYNC_ENV] = "2"
    assert topics.Durability.from_env(env, min_insync_replicas=3) == topics.Durability(3, 3)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({topics.REPLICATION_ENV: "three"}, topics.REPLICATION_ENV),
        ({topics.MIN_INSYNC_ENV: "0"}, topics.MIN_INSYNC_ENV),
        ({topics.REPLICATION_ENV: "1", topics.MIN_INSYNC_ENV: "2"}, "more than the replication"),
    ],
)
def test_a_bad_durability_names_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(topics.DurabilityError, match=named):
        topics.Durability.from_env(env)


async def test_an_existing_topic_with_fewer_replicas_is_named_in_a_warning() -> None:
    """An upgrade from replication factor 1 keeps the old topics' single replica."""
    admin = FakeAdmin(
        {spec.name: spec.partitions for spec in TOPICS}, replicas={Topics.READINGS.name: 1}
    )
    for spec in TOPICS:
        admin.replicas.setdefault(spec.name, 3)
    durability = topics.Durability(3, 2)
    results = {r.spec.name: r for r in await topics.ensure_topics(admin, durability=durability)}
    assert all(r.ok for r in results.values())  # still usable: not a failure
    readings = results[Topics.READINGS.name]
    assert readings.under_replicated(durability)
    message = readings.describe(durability)
    assert "replication factor 1, below the 3 asked" in message
    assert not results[Topics.KPI.name].under_replicated(durability)
    assert admin.created == []


async def test_existing_topics_with_the_contract_count_are_left_alone() -> None:
    admin = FakeAdmin({spec.name: spec.partitions for spec in TOPICS})
    results = await topics.ensure_topics(admin)
    assert [r.outcome for r in results] == ["exists"] * len(TOPICS)
    assert admin.created == []


async def test_a_topic_with_another_count_is_an_error_naming_it() -> None:
    admin = FakeAdmin({"readings": 6})  # the broker's default num.partitions
    results = {r.spec.name: r for r in await topics.ensure_topics(admin)}
    wrong = results["readings"]
    assert not wrong.ok
    assert (wrong.outcome, wrong.partitions) == ("wrong-partitions", 6)
    message = wrong.describe(topics.Durability())
    assert "readings" in message
    assert "6 partitions" in message
    assert "4 partitions" in message
    assert admin.topics["readings"] == 6  # never touched
    # the other topics are still created
    assert all(r.ok for name, r in results.items() if name != "readings")


@pytest.mark.parametrize(("count", "outcome"), [(4, "exists"), (6, "wrong-partitions")])
async def test_a_topic_created_concurrently_is_checked(count: int, outcome: str) -> None:
    admin = FakeAdmin(racers={"kpi": count})
    results = {r.spec.name: r for r in await topics.ensure_topics(admin)}
    assert results["kpi"].outcome == outcome
    assert results["kpi"].partitions == count


async def test_a_refused_creation_names_the_topic_and_the_reason() -> None:
    admin = FakeAdmin(refuse={"alerts": (38, "Replication factor: 3 larger than brokers: 1.")})
    durability = topics.Durability(3, 2)
    results = {r.spec.name: r for r in await topics.ensure_topics(admin, durability=durability)}
    failed = results["alerts"]
    assert failed.outcome == "failed"
    message = failed.describe(durability)
    assert message.startswith("alerts: could not be created")
    assert "InvalidReplicationFactorError" in message
    assert "larger than brokers" in message


# ------------------------------------------------------------------------- the command


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replaces the connection with a FakeAdmin; records how the command opened it."""
    seen: dict[str, Any] = {"admin": FakeAdmin()}

    async def open_admin(
        bootstrap_servers: str, timeout_s: float, security: Any = None
    ) -> FakeAdmin:
        seen["bootstrap"] = bootstrap_servers
        seen["timeout"] = timeout_s
        seen["security"] = security
        admin: FakeAdmin = seen["admin"]
        return admin

    monkeypatch.setattr(topics, "open_admin", open_admin)
    monkeypatch.delenv(topics.BOOTSTRAP_ENV, raising=False)
    monkeypatch.delenv(topics.REPLICATION_ENV, raising=False)
    monkeypatch.delenv(topics.MIN_INSYNC_ENV, raising=False)
    return seen


def test_command_creates_the_topics_and_exits_0(
    opened: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["topics", "create", "--kafka", "kafka:9092", "--replication-factor", "3"])
    assert code == 0
    assert opened["bootstrap"] == "kafka:9092"
    assert opened["admin"].closed
    assert {t.replication_factor for t in opened["admin"].created} == {3}
    out = capsys.readouterr().out
    assert (
        "readings: created with 4 partitions (replication factor 3, min.insync.replicas 2)" in out
    )
    assert {t.topic_configs["min.insync.replicas"] for t in opened["admin"].created} == {"2"}


def test_command_takes_min_insync_replicas_from_the_flag(opened: dict[str, Any]) -> None:
    argv = ["topics", "create", "--replication-factor", "3", "--min-insync-replicas", "1"]
    assert main(argv) == 0
    assert {t.topic_configs["min.insync.replicas"] for t in opened["admin"].created} == {"1"}


def test_command_refuses_more_in_sync_replicas_than_replicas(
    opened: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["topics", "create", "--min-insync-replicas", "2"]) == 2
    assert "min.insync.replicas 2 is more than the replication factor 1" in capsys.readouterr().err
    assert opened["admin"].created == []


def test_command_warns_on_stderr_of_an_under_replicated_topic(
    opened: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    opened["admin"] = FakeAdmin({spec.name: spec.partitions for spec in TOPICS})
    assert main(["topics", "create", "--replication-factor", "3"]) == 0
    err = capsys.readouterr().err
    assert "readings: exists with 4 partitions but replication factor 1" in err


def test_command_reads_kafka_and_replication_from_the_environment(
    opened: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(topics.BOOTSTRAP_ENV, "broker-1:9092,broker-2:9092")
    monkeypatch.setenv(topics.REPLICATION_ENV, "3")
    assert main(["topics", "create"]) == 0
    assert opened["bootstrap"] == "broker-1:9092,broker-2:9092"
    assert {t.replication_factor for t in opened["admin"].created} == {3}
    assert {t.topic_configs["min.insync.replicas"] for t in opened["admin"].created} == {"2"}


def test_command_defaults_to_replication_factor_1(opened: dict[str, Any]) -> None:
    assert main(["topics", "create"]) == 0
    assert opened["bootstrap"] == topics.DEFAULT_BOOTSTRAP
    assert {t.replication_factor for t in opened["admin"].created} == {1}


def test_command_is_idempotent(opened: dict[str, Any]) -> None:
    assert main(["topics", "create"]) == 0
    created = list(opened["admin"].created)
    assert main(["topics", "create"]) == 0
    assert opened["admin"].created == created


def test_command_fails_naming_a_topic_with_the_wrong_count(
    opened: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    opened["admin"] = FakeAdmin({"readings": 6})
    assert main(["topics", "create"]) == 1
    err = capsys.readouterr().err
    assert "readings: has 6 partitions but the contract says 4 partitions" in err


def test_command_exits_2_when_kafka_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def unreachable(bootstrap_servers: str, timeout_s: float, security: Any = None) -> Any:
        raise topics.TopicsError(f"cannot reach Kafka at {bootstrap_servers}")

    monkeypatch.setattr(topics, "open_admin", unreachable)
    assert main(["topics", "create", "--kafka", "nowhere:9092"]) == 2
    assert "cannot reach Kafka at nowhere:9092" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "three"])
def test_command_refuses_a_bad_replication_factor(
    opened: dict[str, Any], value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["topics", "create", "--replication-factor", value])
    assert exited.value.code == 2
    monkeypatch.setenv(topics.REPLICATION_ENV, value)
    assert main(["topics", "create"]) == 2
    assert opened["admin"].created == []


def test_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["topics", "create", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--kafka",
        "--replication-factor",
        "--min-insync-replicas",
        "CLIMASTREAM_KAFKA_BOOTSTRAP",
        "CLIMASTREAM_TOPICS_MIN_INSYNC_REPLICAS",
    ):
        assert option in out
    assert "readings (4)" in out


def test_the_command_registers_without_aiokafka() -> None:
    """The base install (no extra) lists the command; aiokafka is imported only to run it."""
    code = (
        "import sys, argparse, climastream.topics as t\n"
        "parser = argparse.ArgumentParser()\n"
        "t.register(parser.add_subparsers())\n"
        "assert 'aiokafka' not in sys.modules, 'imported at registration'\n"
        "import climastream.cli\n"
        "assert 'climastream.topics' in climastream.cli.COMMAND_MODULES\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
