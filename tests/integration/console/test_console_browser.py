"""The console in real headless Chromium against the live demo pipeline.

The demo gateway agent (simulated sensors) and the Faust worker run as processes on the
real broker; the console runs as ``climastream console``; Chromium is Debian's.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from climastream.contract import Alert, AlertAction, AlertState, Quantity, Topics, encode
from climastream.stack import Stack
from tests.integration.console.conftest import (
    ARTIFACTS,
    COALESCE_S,
    OPERATOR_NAME,
    OPERATOR_PASSWORD,
    OPERATOR_TOKEN,
    ROOT,
    VIEWER_TOKEN,
)
from tests.integration.console.helpers import (
    batch,
    end_offsets,
    firing_alert,
    produce,
    wait_for_record,
)

pytestmark = pytest.mark.integration

PANELS = ("map", "streams", "kpi", "alerts", "gateways", "stats")


async def login_with_token(browser: Any, url: str, token: str) -> Any:
    page = await browser.new_page(viewport={"width": 1400, "height": 1500})
    await page.goto(f"{url}/login")
    await page.fill("#token", token)
    await page.click("#token-login")
    await page.wait_for_url(f"{url}/")
    await page.wait_for_function("() => window.__climastream && window.__climastream.me")
    return page


async def login_with_password(browser: Any, url: str, *, fake_clock: bool = False) -> Any:
    """``fake_clock``: the page's clock is Playwright's (time flows, and a test can jump)."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1500})
    if fake_clock:
        await page.clock.install()
    await page.goto(f"{url}/")  # unauthenticated: redirected to the login form
    assert page.url.endswith("/login")
    await page.fill("#username", OPERATOR_NAME)
    await page.fill("#password", OPERATOR_PASSWORD)
    await page.click("#password-login")
    await page.wait_for_url(f"{url}/")
    await page.wait_for_function("() => window.__climastream && window.__climastream.me")
    return page


async def live_value(page: Any, series: str) -> str | None:
    return await page.evaluate(
        """(series) => {
            const row = document.querySelector(`tr[data-series="${series}"] .live-value`);
            return row ? row.textContent : null;
        }""",
        series,
    )


async def test_page_loads_and_live_values_change(
    browser: Any, console_url: str, demo_pipeline: Path
) -> None:
    page = await login_with_token(browser, console_url, VIEWER_TOKEN)
    assert await page.text_content("#who") == "viewer (viewer)"
    # every configured device of the demo gateway is drawn on the map
    await page.wait_for_function(
        "() => document.querySelectorAll('#map circle.device').length >= 12"
    )
    series = "device:th-centre-1:temperature"
    await page.wait_for_selector(f'tr[data-series="{series}"]', timeout=60_000)
    first = await live_value(page, series)
    seen = {first}
    for _ in range(100):  # the simulated sensor reports every second
        await asyncio.sleep(0.3)
        seen.add(await live_value(page, series))
        if len(seen) > 1:
            break
    assert len(seen) > 1, f"{series} stayed at {first}"
    # the map colours zones: the demo's PM/NO2 sensors give every zone an EAQI band
    await page.wait_for_function(
        "() => ['centre','north','park'].every(z => "
        "document.querySelector(`#map polygon.zone[data-zone='${z}'], "
        "#map polyline.zone[data-zone='${z}']`)?.getAttribute('fill') !== '#9aa5b1')",
        timeout=30_000,
    )
    # the stream worker's KPIs (each carries completeness) reach the tiles
    await page.wait_for_selector(
        '.tile[data-kpi="completeness"][data-zone="centre"]:not(.empty)', timeout=60_000
    )
    # the gateway's health report arrives on gateway-status: this agent's, not the last
    # one an earlier test's agent sent as it stopped (every source "disabled")
    await page.wait_for_function(
        """() => [...document.querySelectorAll('tr[data-gateway="gw-demo-1"] td')]
                 .some(td => td.textContent.includes('street-sensors: up'))""",
        timeout=60_000,
    )
    cells = await page.eval_on_selector_all(
        'tr[data-gateway="gw-demo-1"] td', "tds => tds.map(td => td.textContent)"
    )
    assert cells[1].endswith("ago")  # last seen
    assert cells[2].isdigit()  # buffer depth
    # serial sources wait for devices that this test does not plug in: "connecting"
    assert "street-sensors: up" in cells[8]
    assert "sds011-centre: connecting" in cells[8]
    # decode errors by reason: none from simulated sensors
    assert cells[6] == "0"
    # outage hours: shown when the gateway reports them ("–" from a gateway that does not)
    assert cells[7] == "–" or cells[7].endswith(" h")
    await page.close()


async def test_operator_acknowledges_firing_alert(
    browser: Any, console_url: str, stack: Stack
) -> None:
    kafka = stack.config.kafka_bootstrap
    alert = firing_alert()
    await produce(kafka, Topics.ALERTS.name, [(alert.key, encode(alert))])
    page = await login_with_password(browser, console_url)
    card = f'article[data-fingerprint="{alert.fingerprint}"]'
    await page.wait_for_selector(card, timeout=30_000)
    assert await page.get_attribute(card, "data-state") == "firing"
    body = await page.text_content(card) or ""
    assert "PM2.5 poor in centre" in body
    assert "threshold 25.00" in body
    assert "pm-centre-1" in body  # evidence rows
    await page.wait_for_selector("tr[data-series]", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)

    before = await end_offsets(kafka, Topics.ALERT_ACTIONS.name)
    await page.click(f"{card} button.ack")
    action = await wait_for_record(
        kafka,
        Topics.ALERT_ACTIONS.name,
        AlertAction,
        before,
        lambda a: a.fingerprint == alert.fingerprint,
    )
    assert action.action.value == "acknowledge"
    assert action.actor == OPERATOR_NAME
    await page.wait_for_selector("#toast:not([hidden])")
    assert "acknowledge sent" in (await page.text_content("#toast") or "")
    await page.close()


async def test_relative_times_keep_up_on_a_quiet_page(
    browser: Any, console_url: str, stack: Stack
) -> None:
    """An alert that keeps firing sends no new snapshot, so its card is not re-rendered:
    "since 20 s ago" must still become "since 10 min ago" ten minutes later."""
    kafka = stack.config.kafka_bootstrap
    alert = firing_alert(started_at=datetime.now(UTC) - timedelta(seconds=20))
    page = await login_with_password(browser, console_url, fake_clock=True)
    await produce(kafka, Topics.ALERTS.name, [(alert.key, encode(alert))])
    meta = f'article[data-fingerprint="{alert.fingerprint}"] .alert-meta'
    await page.wait_for_selector(meta, timeout=30_000)
    assert (await page.text_content(meta) or "").endswith(" s ago")
    await page.clock.fast_forward("10:00")  # timers due in that span fire, nothing else
    await page.wait_for_function(
        "(sel) => document.querySelector(sel).textContent.endsWith('since 10 min ago')",
        arg=meta,
        timeout=10_000,
    )
    await page.close()


ENGINE_RULES = """\
rules:
  - id: console-test-hot
    kind: threshold
    source: reading
    quantity: temperature
    set: 40.0
    clear: 35.0
    for: 0s
    severity: critical
    team: operators
"""


@pytest.fixture
def alert_engine(stack: Stack, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The real alert engine (issue 7) as a process, evaluating one test rule."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(ENGINE_RULES)
    ready = tmp_path / "engine.ready"
    with (tmp_path / "engine.log").open("wb") as log:  # the child keeps its own descriptor
        engine = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "climastream.cli",
                "alerts",
                "engine",
                "--kafka",
                stack.config.kafka_bootstrap,
                "--rules",
                str(rules),
                "--app-id",
                f"console-test-{uuid.uuid4().hex[:8]}",
                "--data-dir",
                str(tmp_path / "engine"),
                "--ready-file",
                str(ready),
            ],
            cwd=ROOT,
            env={**os.environ, **stack.env(), "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert engine.poll() is None, (tmp_path / "engine.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the alert engine did not become ready"
            time.sleep(0.2)
        yield engine
    finally:
        engine.terminate()
        try:
            engine.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # still an error, but the engine must not outlive the test: an unreaped Popen
            # is a ResourceWarning in whichever later test the GC collects it
            engine.kill()
            engine.wait()
            raise


async def test_acknowledgement_changes_state_in_alert_engine(
    browser: Any, console_url: str, stack: Stack, alert_engine: subprocess.Popen[bytes]
) -> None:
    """A real rule fires in the real engine; the operator's click acknowledges it there."""
    kafka = stack.config.kafka_bootstrap
    since = await end_offsets(kafka, Topics.ALERTS.name)
    device = f"hot-{uuid.uuid4().hex[:6]}"
    hot = batch("gw-console-engine", [(device, "centre", 0, Quantity.TEMPERATURE, 45.0)])
    await produce(kafka, Topics.READINGS.name, [(hot.key, encode(hot))])
    firing = await wait_for_record(
        kafka,
        Topics.ALERTS.name,
        Alert,
        since,
        lambda a: a.device_id == device and a.state is AlertState.FIRING,
        timeout_s=60,
    )
    assert firing.rule_id == "console-test-hot"
    page = await login_with_password(browser, console_url)
    card = f'article[data-fingerprint="{firing.fingerprint}"]'
    await page.wait_for_selector(card, timeout=30_000)
    await page.click(f"{card} button.ack")

    async def engine_says(state: AlertState) -> Alert:
        """The engine's next state change of this alert to ``state``."""
        return await wait_for_record(
            kafka,
            Topics.ALERTS.name,
            Alert,
            since,
            lambda a: a.fingerprint == firing.fingerprint and a.state is state,
            timeout_s=60,
        )

    acknowledged = await engine_says(AlertState.ACKNOWLEDGED)
    assert acknowledged.rule_id == "console-test-hot"
    await page.wait_for_selector(f'{card}[data-state="acknowledged"]', timeout=30_000)
    await page.close()
    # a two-day silence, through the API as a script sends it: the engine applies it (any
    # silence over an hour was refused by the contract, as a clock "ahead of now")
    request = urllib.request.Request(
        f"{console_url}/api/alerts/{firing.fingerprint}/actions",
        data=orjson.dumps({"action": "silence", "minutes": 2 * 24 * 60, "comment": "works"}),
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    response = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    assert response.status == 202
    response.close()
    silenced = await engine_says(AlertState.SILENCED)
    until = datetime.fromisoformat(silenced.labels["silenced_until"])
    assert timedelta(days=2) - timedelta(minutes=5) < until - silenced.updated_at
    assert until - silenced.updated_at <= timedelta(days=2)


async def test_viewer_cannot_acknowledge(browser: Any, console_url: str, stack: Stack) -> None:
    alert = firing_alert()
    await produce(stack.config.kafka_bootstrap, Topics.ALERTS.name, [(alert.key, encode(alert))])
    page = await login_with_token(browser, console_url, VIEWER_TOKEN)
    card = f'article[data-fingerprint="{alert.fingerprint}"]'
    await page.wait_for_selector(card, timeout=30_000)
    assert await page.query_selector(f"{card} button") is None
    assert await page.is_visible("#alert-readonly")
    # the server refuses the action even when the page is bypassed (with a valid CSRF token)
    status = await page.evaluate(
        "(fp) => window.__climastreamAct(fp, 'acknowledge')", alert.fingerprint
    )
    assert status == 403
    # ... and for a viewer's bearer token
    request = urllib.request.Request(
        f"{console_url}/api/alerts/{alert.fingerprint}/actions",
        data=orjson.dumps({"action": "acknowledge"}),
        headers={"Authorization": f"Bearer {VIEWER_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    # The HTTPError holds the response's socket; pytest keeps the exception alive, so close
    # it here rather than leave a ResourceWarning to whichever test the GC runs in.
    refused.value.close()
    assert refused.value.code == 403
    await page.close()


async def test_a_zone_or_device_id_reaches_series_beyond_the_row_limit(
    browser: Any, console_url: str, stack: Stack
) -> None:
    """300 sensors whose ids sort first fill the table; a zone chosen in the page, or part
    of an id typed in it, still shows the sensors of a zone that sorts after them."""
    run = uuid.uuid4().hex[:6]
    near, far = f"aa-{run}", f"zz-{run}"
    rows = [(f"{near}-{i:03d}", near, 1, Quantity.TEMPERATURE, 20.0) for i in range(300)]
    rows += [(f"{far}-{i:03d}", far, 1, Quantity.TEMPERATURE, 25.0) for i in range(150)]
    records = [batch(f"gw-{run}", rows[i : i + 150]) for i in range(0, len(rows), 150)]
    page = await login_with_token(browser, console_url, VIEWER_TOKEN)
    await produce(
        stack.config.kafka_bootstrap,
        Topics.READINGS.name,
        [(r.key, encode(r)) for r in records],
    )
    # the zone list has every zone, also one whose rows the limit leaves out
    await page.wait_for_selector(f'#stream-zone option[value="{far}"]', state="attached")
    shown = "() => [...document.querySelectorAll('#streams tbody tr')].map(r => r.dataset.series)"
    assert not any(s.startswith(f"device:{far}") for s in await page.evaluate(shown))
    assert "more series" in (await page.text_content("#stream-note") or "")

    await page.select_option("#stream-zone", far)
    await page.wait_for_function(
        f"() => document.querySelectorAll('#streams tbody tr').length === 151"
        f" && document.querySelector('tr[data-series=\"device:{far}-149:temperature\"]')"
    )
    assert set(await page.evaluate(shown)) == {f"zone:{far}:temperature"} | {
        f"device:{far}-{i:03d}:temperature" for i in range(150)
    }
    await page.fill("#stream-device", f"{far}-14")
    await page.wait_for_function(
        "() => document.querySelectorAll('#streams tbody tr').length === 10"
    )
    assert sorted(await page.evaluate(shown)) == [
        f"device:{far}-{i}:temperature" for i in range(140, 150)
    ]
    assert await page.input_value("#stream-zone") == far
    await page.close()


async def test_load_keeps_update_rates_bounded(
    browser: Any, console_url: str, stack: Stack
) -> None:
    """2,000 readings/s for 10 s: every panel still gets at most one frame per interval."""
    page = await login_with_token(browser, console_url, VIEWER_TOKEN)
    await page.wait_for_function("() => (window.__climastream.total.stats || 0) > 0")
    readings_before = await page.evaluate("() => window.__climastream.last.stats.counts.readings")
    totals_before = await page.evaluate("() => ({...window.__climastream.total})")
    kafka = stack.config.kafka_bootstrap
    rate, seconds, per_batch = 2000, 10, 100
    loop = asyncio.get_running_loop()
    started = loop.time()
    seq = 0
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    try:
        for second in range(seconds):
            futures = []
            for b in range(rate // per_batch):
                rows = []
                for _ in range(per_batch):
                    device = f"load-{seq % 200:03d}"
                    rows.append(
                        (device, f"load-{seq % 4}", seq, Quantity.TEMPERATURE, 20 + seq % 7)
                    )
                    seq += 1
                record = batch(f"gw-load-{b % 4}", rows)
                futures.append(
                    await producer.send(Topics.READINGS.name, value=encode(record), key=record.key)
                )
            await asyncio.gather(*futures)
            # pace the producer to the wall clock (this paces the load; nothing is asserted on time)
            await asyncio.sleep(max(0.0, started + second + 1 - loop.time()))
    finally:
        await producer.stop()
    # the page stays responsive: it answers and has received the whole load
    await page.wait_for_function(
        f"() => window.__climastream.last.stats.counts.readings >= {readings_before + seq}",
        timeout=60_000,
    )
    elapsed = loop.time() - started
    stats = await page.evaluate(
        "() => ({counts: window.__climastream.counts, total: window.__climastream.total,"
        " rows: document.querySelectorAll('#streams tbody tr').length,"
        " errors: window.__climastream.renderErrors})"
    )
    per_second_bound = math.ceil(1 / COALESCE_S) + 1  # one frame per tick, +1 for tick jitter
    for panel in PANELS:
        per_second = stats["counts"].get(panel, {})
        assert per_second, f"{panel}: no updates at all"
        assert max(per_second.values()) <= per_second_bound, (panel, per_second)
        received = stats["total"][panel] - totals_before.get(panel, 0)
        assert received <= elapsed / COALESCE_S + 2, (panel, received, elapsed)
    assert stats["errors"] == 0
    assert stats["rows"] <= 300  # the streams table is bounded, however many series exist
    # counters in the page keep only the last 120 s: bounded however long the page is open
    assert all(len(v) <= 122 for v in stats["counts"].values())
    await page.close()
