"""The command line and the install boundaries a Raspberry Pi depends on."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from climastream.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("stack", "edge", "stream", "sink", "demo"):
        assert f"    {command} " in out or f"    {command}\n" in out, command


def test_each_subcommand_has_its_own_help() -> None:
    parser = build_parser()
    for argv in (["stack", "--help"], ["edge", "run", "--help"], ["sink", "run", "--help"]):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        assert exited.value.code == 0


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: climastream" in capsys.readouterr().out


def test_python_dash_m_runs_the_same_command_line() -> None:
    """``python -m climastream`` works where the venv's ``bin/`` is not on PATH."""
    out = subprocess.run(
        [sys.executable, "-m", "climastream", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "usage: climastream" in out.stdout


def test_output_piped_into_head_ends_without_a_traceback(tmp_path: Path) -> None:
    """`climastream kpi eval ... | head` printed a BrokenPipeError traceback."""
    readings = tmp_path / "r.jsonl"
    readings.write_text(
        "".join(
            f'{{"device_id": "t{i % 50}", "gateway_id": "gw1", "seq": {i}, '
            f'"quantity": "temperature", "value": 21.5, "unit": "Cel", '
            f'"event_time": "2026-07-01T21:{i // 60 % 60:02d}:{i % 60:02d}Z", '
            f'"ingest_time": "2026-07-01T21:{i // 60 % 60:02d}:{i % 60:02d}Z", '
            f'"zone": "z{i % 7}"}}\n'
            for i in range(3000)
        )
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "climastream", "kpi", "eval", "--input", str(readings)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert run.stdout is not None
    run.stdout.readline()
    run.stdout.close()  # what head does after its lines
    _, err = run.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert b"BrokenPipeError" not in err


def test_edge_extra_excludes_cloud_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    edge = " ".join(project["optional-dependencies"]["edge"]).lower()
    core = " ".join(project["dependencies"]).lower()
    for forbidden in ("faust", "influxdb"):
        assert forbidden not in edge
        assert forbidden not in core


def test_edge_and_contract_import_without_faust_or_influxdb() -> None:
    """A Pi has neither installed: importing the edge must not pull them in."""
    code = (
        "import sys, importlib, pkgutil, edge\n"
        "for m in pkgutil.walk_packages(edge.__path__, 'edge.'):\n"
        "    importlib.import_module(m.name)\n"
        "import climastream.contract, climastream.cli\n"
        "cloud = ('faust', 'influxdb_client', 'mode')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in cloud]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_missing_extra_names_the_pip_command() -> None:
    from climastream.extras import MissingExtraError, require

    with pytest.raises(MissingExtraError, match=r"pip install 'climastream\[edge\]'"):
        require("climastream_no_such_module", "edge")


@pytest.mark.parametrize("given", ["flag", "env", "env-and-good-flag"])
def test_a_bad_stream_config_is_one_error_line_however_it_is_given(
    given: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("window: 1m\nwindwo: 5s\n")
    good = tmp_path / "good.yaml"
    good.write_text("window: 1m\n")
    args = ["stream", "worker", "--kafka", "127.0.0.1:1"]
    if given == "flag":
        args += ["--config", str(bad)]
    else:
        monkeypatch.setenv("CLIMASTREAM_STREAM_CONFIG", str(bad))
    if given == "env-and-good-flag":
        # --config wins over the environment: the good file is used, and the worker goes
        # on to Kafka (unreachable here: exit 1, not the config's 2)
        assert main([*args, "--config", str(good)]) == 1
        assert "cannot reach Kafka" in capsys.readouterr().err
        return
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream worker: ")
    assert "windwo" in err
    assert "Traceback" not in err


def test_every_command_defaults_to_the_same_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from stream.alerts.app import AlertsSettings
    from stream.alerts.cli import _kafka
    from stream.app import StreamSettings

    monkeypatch.delenv("CLIMASTREAM_KAFKA_BOOTSTRAP", raising=False)
    defaults = {
        _kafka(argparse.Namespace(kafka=None)),  # alerts list/ack/silence/history/notify
        AlertsSettings.from_env().bootstrap_servers,  # alerts engine
        StreamSettings.from_env().bootstrap_servers,  # stream worker
    }
    assert defaults == {"127.0.0.1:9092"}
