"""deploy/pi/install.sh, run in a scratch directory with the system commands stubbed.

What a root shell on a Pi would do (apt-get, useradd, systemctl, a real venv and pip from
PyPI) is replaced by stubs that log their arguments; the script's own logic runs for
real: where the config and the unit come from, what is kept on a re-run, what it
installs with pip and which systemctl calls an upgrade makes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "deploy" / "pi" / "install.sh"

STUBS = {
    "apt-get": 'echo "apt-get $*" >> "$LOG"',
    "useradd": 'echo "useradd $*" >> "$LOG"',
    "id": 'if [ "${1:-}" = -u ]; then echo 0; else exit 1; fi',
    "systemctl": 'echo "systemctl $*" >> "$LOG"',
    # a venv whose pip only says what it was asked to install
    "python3": 'mkdir -p "$3/bin"\n'
    'printf \'#!/bin/sh\\necho "pip $*" >> "$LOG"\\n\' > "$3/bin/pip"\n'
    'chmod +x "$3/bin/pip"',
    # no climastream user or group here: install without -o/-g
    "install": 'args=""\nwhile [ $# -gt 0 ]; do\n'
    '  case "$1" in -o|-g) shift 2;; *) args="$args \'$1\'"; shift;; esac\ndone\n'
    'eval "/usr/bin/install $args"',
}


def _run(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    stubs = tmp / "stubs"
    stubs.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/bin/sh\n" + body + "\n")
        (stubs / name).chmod(0o755)
    log = tmp / "log"
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "LOG": str(log),
        "CLIMASTREAM_PREFIX": str(tmp / "opt"),
        "CLIMASTREAM_CONF": str(tmp / "etc"),
        "CLIMASTREAM_STATE": str(tmp / "state"),
        "CLIMASTREAM_UNITS": str(tmp / "units"),
    }
    (tmp / "units").mkdir(exist_ok=True)
    done = subprocess.run(
        ["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False
    )
    return done, log.read_text().splitlines() if log.exists() else []


def test_a_wheel_installs_the_edge_extra_with_the_config_and_unit_from_the_script(
    tmp_path: Path,
) -> None:
    wheel = tmp_path / "climastream-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")
    done, log = _run(tmp_path, str(wheel))
    assert done.returncode == 0, done.stderr
    assert f"pip install -q {wheel}[edge]" in log
    assert (tmp_path / "etc" / "gateway.yaml").read_text() == (
        SCRIPT.parent / "gateway.example.yaml"
    ).read_text()
    assert (tmp_path / "units" / "climastream-edge.service").read_text() == (
        SCRIPT.parent / "climastream-edge.service"
    ).read_text()
    secrets = tmp_path / "etc" / "secrets.env"
    assert secrets.read_text() == ""
    assert secrets.stat().st_mode & 0o777 == 0o600
    # the check it suggests runs as the service does: its user, and secrets.env loaded
    assert "--property=EnvironmentFile=" + str(secrets) in done.stdout
    assert "--property=User=climastream" in done.stdout


def test_a_rerun_upgrades_keeps_config_and_secrets_and_restarts_a_running_agent(
    tmp_path: Path,
) -> None:
    assert _run(tmp_path)[0].returncode == 0
    (tmp_path / "etc" / "gateway.yaml").write_text("gateway_id: gw-7\n")
    (tmp_path / "etc" / "secrets.env").write_text("KAFKA_PASSWORD=s3cret\n")
    done, log = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"pip install -q {ROOT}[edge]" in log  # no path given: this checkout
    assert (tmp_path / "etc" / "gateway.yaml").read_text() == "gateway_id: gw-7\n"
    assert (tmp_path / "etc" / "secrets.env").read_text() == "KAFKA_PASSWORD=s3cret\n"
    assert [line for line in log if line.startswith("systemctl")] == [
        "systemctl daemon-reload",
        "systemctl enable climastream-edge.service",
        "systemctl try-restart climastream-edge.service",
    ]
    assert "edge check" not in done.stdout  # the config exists: nothing to edit first
