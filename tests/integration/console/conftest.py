"""Fixtures for the console's integration tests: the live demo pipeline, the console
server and real headless Chromium (Debian ``chromium`` driven by Playwright)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from climastream.stack import Stack
from console.auth import hash_password

ROOT = Path(__file__).resolve().parents[3]
DEMO_GATEWAY = ROOT / "deploy" / "local" / "demo-gateway.yaml"
# the demo's 10 s windows: with the production default of 1 min, the first KPI of a
# just-started worker can take up to 66 s (window end + grace), longer than the tests wait
DEMO_STREAM = ROOT / "deploy" / "local" / "demo-stream.yaml"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CLIMASTREAM_CHROMIUM", "/usr/bin/chromium")
CONSOLE_PORT = int(os.environ.get("CLIMASTREAM_TEST_CONSOLE_PORT", "36510"))
COALESCE_S = 0.5
OPERATOR_TOKEN = "operator-token-for-tests-0123456789"
VIEWER_TOKEN = "viewer-token-for-tests-0123456789"
OPERATOR_NAME, OPERATOR_PASSWORD = "alice", "correct horse battery staple"
if not Path(CHROMIUM).exists():
    pytest.fail(
        f"{CHROMIUM} not found: install the Debian package 'chromium' (make apt)",
        pytrace=False,
    )
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _spawn(
    name: str, args: list[str], logdir: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = (logdir / f"{name}.log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "climastream.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
    finally:
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _env(stack: Stack) -> dict[str, str]:
    return {**os.environ, **stack.env(), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def console_url(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``climastream console`` as a subprocess on the test broker, demo gateway map."""
    workdir = tmp_path_factory.mktemp("console")
    auth_file = workdir / "auth.yaml"
    auth_file.write_text(
        "users:\n"
        f"  - {{name: {OPERATOR_NAME}, role: operator, "
        f'password_hash: "{hash_password(OPERATOR_PASSWORD)}"}}\n'
    )
    env = {
        **_env(stack),
        "CLIMASTREAM_CONSOLE_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "CLIMASTREAM_CONSOLE_VIEWER_TOKEN": VIEWER_TOKEN,
    }
    proc = _spawn(
        "console",
        [
            "console",
            "--kafka",
            stack.config.kafka_bootstrap,
            "--port",
            str(CONSOLE_PORT),
            "--gateway-config",
            str(DEMO_GATEWAY),
            "--auth-file",
            str(auth_file),
            "--coalesce",
            str(COALESCE_S),
        ],
        workdir,
        env,
    )
    url = f"http://127.0.0.1:{CONSOLE_PORT}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"console exited: {(workdir / 'console.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                resp.read()
            break
        except OSError:
            if time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError("console did not listen within 30 s") from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def demo_pipeline(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The demo's gateway agent (simulated sensors) and the Faust KPI worker, live."""
    workdir = tmp_path_factory.mktemp("pipeline")
    kafka = stack.config.kafka_bootstrap
    env = _env(stack)
    procs = [
        _spawn(
            "stream",
            [
                "stream",
                "worker",
                "--kafka",
                kafka,
                "--app-id",
                f"console-test-{os.getpid()}",
                "--data-dir",
                str(workdir / "faust"),
                "--config",
                str(DEMO_STREAM),
            ],
            workdir,
            env,
        ),
        _spawn(
            "edge",
            [
                "edge",
                "run",
                "--config",
                str(DEMO_GATEWAY),
                "--kafka",
                kafka,
                "--buffer",
                str(workdir / "buffer.db"),
            ],
            workdir,
            env,
        ),
    ]
    try:
        yield workdir
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Debian Chromium through Playwright (never `playwright install`)."""
    from playwright.async_api import async_playwright

    # launch() gives every browser a fresh temporary --user-data-dir (Playwright refuses
    # the flag in args and deletes the profile on close).
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
