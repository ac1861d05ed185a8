"""``climastream sink init``: prepare the database the sink writes to.

Against InfluxDB 2.x (HTTP API v2, a token allowed to create orgs, buckets and tasks):

1. the org (created if missing);
2. one bucket per entry of ``influx.buckets`` with its retention (raw readings short, KPIs,
   alerts and gateway status long); an existing bucket's retention is updated to match;
3. downsampling tasks (Flux) that roll raw readings up into hourly and daily
   mean/min/max/count points (measurements ``reading_1h`` and ``reading_1d``) in the
   long-lived bucket, so dashboards keep history after the raw data expired. An existing
   task whose script differs is updated.

Every step is idempotent: running init twice changes nothing the second time.

Against VictoriaMetrics (detected by ``/health`` answering plain ``OK`` and the v2
management API being absent) there is no org, bucket or task to create: retention is the
single ``-retentionPeriod`` flag of the instance and downsampling is an Enterprise feature
(``-downsampling.period``) or a vmalert recording rule. Those steps are reported as skipped,
with that reason, and init succeeds: the write API is all the sink needs there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from climastream.extras import require
from sinks.config import SinkConfig
from sinks.errors import AuthError, FatalWriteError, SinkError


@dataclass(frozen=True)
class InitStep:
    """One bootstrap step: what, and whether it was created/updated/exists/skipped."""

    what: str
    outcome: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.outcome:8} {self.what}" + (f"  ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class DownsamplingTask:
    name: str
    every: timedelta
    offset: timedelta
    source_bucket: str
    target_bucket: str
    target_measurement: str


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def flux_script(task: DownsamplingTask, org: str) -> str:
    """The Flux of one downsampling task: mean, min, max and count of ``reading.value``
    per series and window, written as fields of ``target_measurement``."""
    parts = [
        f'option task = {{name: "{task.name}", every: {_duration(task.every)}, '
        f"offset: {_duration(task.offset)}}}",
        "",
        f'data = from(bucket: "{task.source_bucket}")',
        "    |> range(start: -task.every)",
        '    |> filter(fn: (r) => r._measurement == "reading" and r._field == "value")',
    ]
    for fn in ("mean", "min", "max", "count"):
        parts += [
            "",
            "data",
            f"    |> aggregateWindow(every: task.every, fn: {fn}, createEmpty: false)",
            f'    |> set(key: "_measurement", value: "{task.target_measurement}")',
            f'    |> set(key: "_field", value: "{fn}")',
            f'    |> to(bucket: "{task.target_bucket}", org: "{org}")',
        ]
    return "\n".join(parts) + "\n"


def downsampling_tasks(config: SinkConfig) -> list[DownsamplingTask]:
    influx = config.influx
    raw = influx.bucket_for("readings") if "readings" in influx.topic_buckets else None
    long_lived = influx.bucket_for("kpi") if "kpi" in influx.topic_buckets else None
    if raw is None or long_lived is None or raw == long_lived:
        return []
    return [
        DownsamplingTask(
            "climastream-readings-1h",
            timedelta(hours=1),
            timedelta(minutes=5),
            raw,
            long_lived,
            "reading_1h",
        ),
        DownsamplingTask(
            "climastream-readings-1d",
            timedelta(days=1),
            timedelta(minutes=30),
            raw,
            long_lived,
            "reading_1d",
        ),
    ]


class Bootstrap:
    """Runs the init steps over an aiohttp session (injectable for tests)."""

    def __init__(self, config: SinkConfig, session: Any) -> None:
        self.config = config
        self.session = session
        self.url = config.influx.url.rstrip("/")
        token = config.influx.resolved_token().get_secret_value()
        self.headers = {"Authorization": f"Token {token}"} if token else {}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        ok: tuple[int, ...] = (200, 201, 204),
    ) -> tuple[int, Any]:
        aiohttp = require("aiohttp", "sinks")
        try:
            async with self.session.request(
                method, f"{self.url}{path}", params=params, json=json, headers=self.headers
            ) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientError as exc:
            raise SinkError(f"{method} {self.url}{path}: {exc}") from exc
        if status in (401, 403):
            raise AuthError(
                f"HTTP {status} on {method} {path}: the token (CLIMASTREAM_INFLUX_TOKEN or "
                f"influx.token_file) may not manage org {self.config.influx.org!r}; init needs "
                f"an operator or all-access token. Server said: {text[:500]}",
                status=status,
                body=text,
            )
        if status not in ok:
            raise FatalWriteError(
                f"HTTP {status} on {method} {path}: {text[:500]}", status=status, body=text
            )
        body: Any = None
        if text:
            try:
                import orjson

                body = orjson.loads(text)
            except ValueError:
                body = text
        return status, body

    async def detect(self) -> str:
        """'influxdb', 'victoriametrics', or raise naming what answered."""
        status, body = await self._request("GET", "/health", ok=(200, 503))
        if isinstance(body, dict) and body.get("name") == "influxdb":
            return "influxdb"
        status, _ = await self._request("GET", "/api/v2/orgs", ok=(200, 400, 404))
        if isinstance(body, str) and body.strip() == "OK" and status in (400, 404):
            return "victoriametrics"
        if status == 200:
            return "influxdb"
        raise FatalWriteError(
            f"{self.url} is neither InfluxDB 2.x nor VictoriaMetrics (/health said {body!r})"
        )

    async def run(self) -> list[InitStep]:
        kind = await self.detect()
        if kind == "victoriametrics":
            return self._victoriametrics_steps()
        steps: list[InitStep] = []
        org_id, step = await self._ensure_org()
        steps.append(step)
        for spec in self.config.influx.buckets.values():
            steps.append(await self._ensure_bucket(org_id, spec.name, spec.retention))
        for task in downsampling_tasks(self.config):
            steps.append(await self._ensure_task(org_id, task))
        return steps

    def _victoriametrics_steps(self) -> list[InitStep]:
        why_bucket = (
            "VictoriaMetrics has no buckets; retention is the instance's -retentionPeriod "
            "flag (run a separate instance per retention, or use -retentionFilter in Enterprise)"
        )
        steps = [
            InitStep(f"org {self.config.influx.org!r}", "skipped", "VictoriaMetrics has no orgs")
        ]
        steps += [
            InitStep(
                f"bucket {spec.name!r} retention {_duration(spec.retention)}", "skipped", why_bucket
            )
            for spec in self.config.influx.buckets.values()
        ]
        steps += [
            InitStep(
                f"task {task.name!r}",
                "skipped",
                "VictoriaMetrics runs no Flux tasks; downsample with -downsampling.period "
                "(Enterprise) or a vmalert recording rule",
            )
            for task in downsampling_tasks(self.config)
        ]
        return steps

    async def _ensure_org(self) -> tuple[str, InitStep]:
        org = self.config.influx.org
        _, body = await self._request("GET", "/api/v2/orgs", params={"org": org}, ok=(200, 404))
        for item in (body or {}).get("orgs", []) if isinstance(body, dict) else []:
            if item.get("name") == org:
                return str(item["id"]), InitStep(f"org {org!r}", "exists")
        _, created = await self._request("POST", "/api/v2/orgs", json={"name": org})
        return str(created["id"]), InitStep(f"org {org!r}", "created")

    async def _ensure_bucket(self, org_id: str, name: str, retention: timedelta) -> InitStep:
        seconds = int(retention.total_seconds())
        rules = [{"type": "expire", "everySeconds": seconds}] if seconds else []
        what = f"bucket {name!r} retention {_duration(retention) if seconds else 'infinite'}"
        _, body = await self._request(
            "GET", "/api/v2/buckets", params={"orgID": org_id, "name": name}, ok=(200, 404)
        )
        for bucket in (body or {}).get("buckets", []) if isinstance(body, dict) else []:
            if bucket.get("name") != name:
                continue
            current = [r.get("everySeconds", 0) for r in bucket.get("retentionRules") or []]
            if (current[0] if current else 0) == seconds:
                return InitStep(what, "exists")
            await self._request(
                "PATCH", f"/api/v2/buckets/{bucket['id']}", json={"retentionRules": rules}
            )
            return InitStep(what, "updated", f"retention was {current[0] if current else 0}s")
        await self._request(
            "POST",
            "/api/v2/buckets",
            json={"orgID": org_id, "name": name, "retentionRules": rules},
        )
        return InitStep(what, "created")

    async def _ensure_task(self, org_id: str, task: DownsamplingTask) -> InitStep:
        flux = flux_script(task, self.config.influx.org)
        what = f"task {task.name!r} ({task.source_bucket} -> {task.target_bucket}."
        what += f"{task.target_measurement})"
        _, body = await self._request(
            "GET", "/api/v2/tasks", params={"orgID": org_id, "name": task.name}, ok=(200, 404)
        )
        for existing in (body or {}).get("tasks", []) if isinstance(body, dict) else []:
            if existing.get("name") != task.name:
                continue
            if existing.get("flux") == flux and existing.get("status") == "active":
                return InitStep(what, "exists")
            await self._request(
                "PATCH", f"/api/v2/tasks/{existing['id']}", json={"flux": flux, "status": "active"}
            )
            return InitStep(what, "updated")
        await self._request(
            "POST",
            "/api/v2/tasks",
            json={
                "orgID": org_id,
                "flux": flux,
                "status": "active",
                "description": "climastream: downsample raw readings (sink init)",
            },
        )
        return InitStep(what, "created")


async def init_database(config: SinkConfig, session: Any | None = None) -> list[InitStep]:
    """Run ``sink init``; returns the steps in order. Raises SinkError subclasses."""
    if session is not None:
        return await Bootstrap(config, session).run()
    aiohttp = require("aiohttp", "sinks")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as own:
        return await Bootstrap(config, own).run()
