"""``sink init`` against a fake InfluxDB 2.x and a fake VictoriaMetrics; config loading.

Not run against a real InfluxDB 2.x here (none is available); the fake implements the
v2 endpoints init uses, as documented in the InfluxDB 2.x API reference.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sinks.bootstrap import flux_script, init_database
from sinks.config import TOKEN_ENV, load_config
from sinks.errors import AuthError, ConfigError


class FakeInfluxV2:
    def __init__(self, token: str = "op-token") -> None:
        self.token = token
        self.ids = (f"id{i}" for i in itertools.count())
        self.orgs: dict[str, str] = {}
        self.buckets: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def app(self) -> web.Application:
        @web.middleware
        async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
            self.calls.append(f"{request.method} {request.path}")
            if request.path != "/health" and (
                request.headers.get("Authorization") != f"Token {self.token}"
            ):
                return web.json_response({"code": "unauthorized"}, status=401)
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[auth])
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/v2/orgs", self.get_orgs)
        app.router.add_post("/api/v2/orgs", self.post_org)
        app.router.add_get("/api/v2/buckets", self.get_buckets)
        app.router.add_post("/api/v2/buckets", self.post_bucket)
        app.router.add_patch("/api/v2/buckets/{id}", self.patch_bucket)
        app.router.add_get("/api/v2/tasks", self.get_tasks)
        app.router.add_post("/api/v2/tasks", self.post_task)
        app.router.add_patch("/api/v2/tasks/{id}", self.patch_task)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "influxdb", "status": "pass", "version": "v2.7.10"})

    async def get_orgs(self, request: web.Request) -> web.Response:
        name = request.query["org"]
        if name not in self.orgs:
            return web.json_response({"code": "not found"}, status=404)
        return web.json_response({"orgs": [{"id": self.orgs[name], "name": name}]})

    async def post_org(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.orgs[body["name"]] = next(self.ids)
        return web.json_response({"id": self.orgs[body["name"]], "name": body["name"]}, status=201)

    async def get_buckets(self, request: web.Request) -> web.Response:
        found = [
            b
            for b in self.buckets.values()
            if b["name"] == request.query["name"] and b["orgID"] == request.query["orgID"]
        ]
        return web.json_response({"buckets": found})

    async def post_bucket(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["id"] = next(self.ids)
        self.buckets[body["id"]] = body
        return web.json_response(body, status=201)

    async def patch_bucket(self, request: web.Request) -> web.Response:
        self.buckets[request.match_info["id"]].update(await request.json())
        return web.json_response(self.buckets[request.match_info["id"]])

    async def get_tasks(self, request: web.Request) -> web.Response:
        found = [t for t in self.tasks.values() if t["name"] == request.query["name"]]
        return web.json_response({"tasks": found})

    async def post_task(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["flux"].split('name: "')[1].split('"')[0]
        task = {"id": next(self.ids), "name": name, **body}
        self.tasks[task["id"]] = task
        return web.json_response(task, status=201)

    async def patch_task(self, request: web.Request) -> web.Response:
        self.tasks[request.match_info["id"]].update(await request.json())
        return web.json_response(self.tasks[request.match_info["id"]])


async def _serve(app: web.Application) -> AsyncIterator[str]:
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
def fake() -> FakeInfluxV2:
    return FakeInfluxV2()


@pytest.fixture
async def influx_url(fake: FakeInfluxV2) -> AsyncIterator[str]:
    async for url in _serve(fake.app()):
        yield url


async def test_init_creates_org_buckets_with_retention_and_tasks_idempotently(
    fake: FakeInfluxV2, influx_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "op-token")
    config = load_config(None, {"influx": {"url": influx_url, "org": "brussels"}})
    steps = await init_database(config)
    assert [s.outcome for s in steps] == ["created"] * 5
    org_id = fake.orgs["brussels"]
    retention = {b["name"]: b["retentionRules"] for b in fake.buckets.values()}
    assert retention == {
        "climastream-raw": [{"type": "expire", "everySeconds": 30 * 86400}],
        "climastream": [{"type": "expire", "everySeconds": 3650 * 86400}],
    }
    assert all(b["orgID"] == org_id for b in fake.buckets.values())
    names = sorted(t["name"] for t in fake.tasks.values())
    assert names == ["climastream-readings-1d", "climastream-readings-1h"]
    hourly = next(t for t in fake.tasks.values() if t["name"].endswith("1h"))
    assert 'from(bucket: "climastream-raw")' in hourly["flux"]
    assert 'to(bucket: "climastream", org: "brussels")' in hourly["flux"]
    assert "every: 1h" in hourly["flux"]

    again = await init_database(config)
    assert [s.outcome for s in again] == ["exists"] * 5

    changed = load_config(
        None,
        {
            "influx": {
                "url": influx_url,
                "org": "brussels",
                "buckets": {
                    "raw": {"name": "climastream-raw", "retention": 7 * 86400},
                    "kpi": {"name": "climastream", "retention": 3650 * 86400},
                },
            }
        },
    )
    steps = await init_database(changed)
    assert [s.outcome for s in steps] == ["exists", "updated", "exists", "exists", "exists"]
    raw = next(b for b in fake.buckets.values() if b["name"] == "climastream-raw")
    assert raw["retentionRules"] == [{"type": "expire", "everySeconds": 7 * 86400}]


async def test_init_with_a_bad_token_names_the_token_and_org(
    influx_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    config = load_config(None, {"influx": {"url": influx_url, "org": "brussels"}})
    with pytest.raises(AuthError, match=r"token .*org 'brussels'"):
        await init_database(config)


async def test_init_against_victoriametrics_skips_and_says_why() -> None:
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def unsupported(request: web.Request) -> web.Response:
        return web.Response(status=400, text='unsupported path requested: "/api/v2/orgs"')

    app.router.add_get("/health", health)
    app.router.add_get("/api/v2/orgs", unsupported)
    async for url in _serve(app):
        config = load_config(None, {"influx": {"url": url}})
        async with aiohttp.ClientSession() as session:
            steps = await init_database(config, session)
    assert [s.outcome for s in steps] == ["skipped"] * 5
    assert "retentionPeriod" in steps[1].detail
    assert "downsampling" in steps[3].detail


def test_flux_script_is_exact() -> None:
    config = load_config(None)
    from sinks.bootstrap import downsampling_tasks

    script = flux_script(downsampling_tasks(config)[0], "city")
    assert script.startswith(
        'option task = {name: "climastream-readings-1h", every: 1h, offset: 5m}\n\n'
        'data = from(bucket: "climastream-raw")\n'
    )
    assert script.count("aggregateWindow") == 4


# --------------------------------------------------------------------------- config


def test_config_errors_name_the_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "sink.yaml"
    path.write_text("influx:\n  batch_lines: 0\n")
    with pytest.raises(ConfigError, match=r"sink.yaml: influx.batch_lines"):
        load_config(path)
    path.write_text("influx:\n  token: abc\n")
    with pytest.raises(ConfigError, match="must not be in the file"):
        load_config(path)
    path.write_text("kafka:\n  topics: [readings, late-readings]\n")
    with pytest.raises(ConfigError, match="late-readings"):
        load_config(path)


def test_token_from_env_or_file_and_never_in_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    path = tmp_path / "sink.yaml"
    path.write_text(f"influx:\n  token_file: {secret}\n  url: http://db:8086\n")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = load_config(path)
    assert config.influx.resolved_token().get_secret_value() == "from-file"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert config.influx.resolved_token().get_secret_value() == "from-env"
    assert "from-env" not in repr(config)
    assert "from-file" not in repr(config)
    monkeypatch.setenv("CLIMASTREAM_INFLUX_URL", "http://other:8086")
    assert load_config(path).influx.url == "http://other:8086"
