"""The alert engine's Faust app: the topics it creates and the cluster settings it runs with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from climastream import topics
from climastream.topics import Durability
from stream.alerts.app import AlertsSettings, ensure_changelog_topics

ROOT = Path(__file__).resolve().parents[3]


class _FakeAdmin:
    def __init__(self) -> None:
        self.new_topics: list[Any] = []

    async def list_topics(self) -> list[str]:
        return []

    async def create_topics(self, new_topics: list[Any]) -> None:
        self.new_topics += new_topics

    async def close(self) -> None:
        pass


async def test_changelog_topics_are_compacted_and_replicated_as_the_settings_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Alert state (phases, acknowledgements, silences) lives in these changelogs."""
    from stream import app as stream_app

    admin = _FakeAdmin()

    async def start_admin(_bootstrap: str, _security: object = None) -> _FakeAdmin:
        return admin

    monkeypatch.setattr(stream_app, "start_admin", start_admin)
    settings = AlertsSettings(app_id="a", durability=Durability(3, 2))
    created = await ensure_changelog_topics(settings)
    assert created == ["a-alerts-state-changelog", "a-alerts-signals-changelog"]
    for topic in admin.new_topics:
        assert (topic.num_partitions, topic.replication_factor) == (1, 3)
        assert topic.topic_configs == {"cleanup.policy": "compact", "min.insync.replicas": "2"}


def test_settings_take_the_replication_of_topics_create_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(topics.MIN_INSYNC_ENV, raising=False)
    monkeypatch.setenv(topics.REPLICATION_ENV, "3")
    assert AlertsSettings.from_env().durability == Durability(3, 2)
    monkeypatch.delenv(topics.REPLICATION_ENV)
    assert AlertsSettings.from_env().durability == Durability(1, 1)  # the local stack's


def _app_conf(env: dict[str, str], *names: str) -> list[str]:
    """Settings of the engine's Faust app, built in a fresh process (its Prometheus
    counters register once per process)."""
    code = (
        "from stream.alerts.app import AlertsSettings, create_app\n"
        "conf = create_app(AlertsSettings.from_env()).conf\n"
        f"for name in {list(names)!r}: print(getattr(conf, name))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _base_env() -> dict[str, str]:
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLIMASTREAM_TOPICS_", "CLIMASTREAM_KAFKA_"))
    }


def test_the_app_declares_with_the_settings_replication() -> None:
    (factor,) = _app_conf({topics.REPLICATION_ENV: "3"}, "topic_replication_factor")
    assert factor == "3"


def test_a_bad_replication_variable_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from climastream.cli import main

    monkeypatch.setenv(topics.REPLICATION_ENV, "three")
    assert main(["alerts", "engine", "--kafka", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"alerts engine: {topics.REPLICATION_ENV}: 'three' is not a whole number"
    ]


def test_the_engine_subscribes_only_to_topics_created_before_it_starts() -> None:
    """The production broker does not auto-create topics: each one must be made by
    'climastream topics create' (the contract) or ensure_changelog_topics."""
    from climastream.contract import TOPICS

    code = (
        "from stream.alerts.app import AlertsSettings, create_app\n"
        "app = create_app(AlertsSettings(app_id='a'))\n"
        "names = {t for agent in app.agents.values() for t in agent.channel.topics}\n"
        "names |= {t.changelog_topic.get_topic_name() for t in app.tables.values()}\n"
        "if not app.conf.topic_disable_leader:\n"
        "    names.add(app._leader_assignor._leader_topic_name)\n"
        "print(' '.join(sorted(names)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_base_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    created = {spec.name for spec in TOPICS} | set(AlertsSettings(app_id="a").changelog_topics())
    subscribed = set(out.stdout.split())
    assert subscribed <= created, subscribed - created


def test_the_engine_takes_the_session_timeout_from_the_environment() -> None:
    timeout, heartbeat = _app_conf(
        {"CLIMASTREAM_KAFKA_SESSION_TIMEOUT": "10s"},
        "broker_session_timeout",
        "broker_heartbeat_interval",
    )
    assert (float(timeout), float(heartbeat)) == (10.0, 1.0)
