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
