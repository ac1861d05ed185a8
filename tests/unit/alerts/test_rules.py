"""Rules files: validation names the key; the shipped defaults load; CLI parsing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from climastream.cli import main
from stream.alerts.cli import parse_for
from stream.alerts.rules import (
    GatewayOfflineRule,
    RulesError,
    StaleRule,
    ThresholdRule,
    load_rules,
    rules_from_mapping,
)


def test_shipped_defaults_cover_the_issue_and_load() -> None:
    rules = load_rules()
    by_id = {rule.id: rule for rule in rules.rules}
    kpis = {r.kpi_id for r in rules.rules if isinstance(r, ThresholdRule)}
    assert {"eaqi", "uhi.night", "heatwave.status", "noise.lnight", "waste.fill_level"} <= kpis
    assert "completeness" in kpis
    lnight = by_id["noise-lnight"]
    assert isinstance(lnight, ThresholdRule)
    assert lnight.set == 55.0
    eaqi = by_id["eaqi-poor"]
    assert isinstance(eaqi, ThresholdRule)
    assert (eaqi.set, eaqi.pending_for) == (4, timedelta(hours=1))
    assert isinstance(by_id["gateway-offline"], GatewayOfflineRule)
    stale = by_id["sensor-stale"]
    assert isinstance(stale, StaleRule)
    assert stale.limit_for("noise-12") == timedelta(seconds=5)
    assert stale.limit_for("th-1") == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"kind": "threshold", "kpi_id": "x", "set": 1, "clear": 2}, r"rules.0\(r\).*clear \(2"),
        ({"kind": "threshold", "source": "reading", "set": 1, "clear": 0}, "needs quantity"),
        ({"kind": "threshold", "kpi_id": "x", "set": 1, "clear": 0, "for": "soon"}, "for"),
        ({"kind": "nope"}, "kind"),
        ({"kind": "stale", "summary": "{device.__class__}"}, "unknown fields"),
        ({"kind": "stale", "colour": "red"}, "colour"),
    ],
)
def test_invalid_rules_name_the_key(rule: dict[str, object], message: str) -> None:
    with pytest.raises(RulesError, match=message):
        rules_from_mapping({"rules": [{"id": "r", **rule}]})


def test_duplicate_ids_and_bad_files(tmp_path: Path) -> None:
    rule = {"id": "a", "kind": "stale"}
    with pytest.raises(RulesError, match="appears twice"):
        rules_from_mapping({"rules": [rule, rule]})
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(broken)


def test_defaults_are_merged_and_durations_parse() -> None:
    rules = rules_from_mapping(
        {"defaults": {"renotify": "2h", "for": "PT15M"}, "rules": [{"id": "s", "kind": "stale"}]}
    )
    [rule] = rules.rules
    assert (rule.renotify, rule.pending_for) == (timedelta(hours=2), timedelta(minutes=15))


def test_parse_for_and_cli_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert parse_for("90m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="--for"):
        parse_for("a while")
    assert main(["alerts", "silence", "not-a-fingerprint", "--kafka", "127.0.0.1:1"]) == 2
    assert "fingerprint" in capsys.readouterr().err
    silence = ["alerts", "silence", "0123456789abcdef", "--kafka", "127.0.0.1:1", "--for"]
    assert main([*silence, "8d"]) == 2
    assert "--for '8d': a silence lasts more than 0 s and at most 7 days" in capsys.readouterr().err
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - {id: x, kind: threshold, kpi_id: k, set: 1, clear: 5}\n")
    assert main(["alerts", "rules", "--check", str(bad)]) == 2
    assert "rules.0(x): Value error, clear (5.0) must be <= set (1.0)" in capsys.readouterr().err


def test_which_shipped_rules_are_about_missing_data() -> None:
    """These are held after a gateway outage until their data post-dates it."""
    missing = {rule.id for rule in load_rules().rules if rule.about_missing_data}
    assert missing == {"sensor-stale", "data-completeness"}


def test_a_misspelt_rule_key_names_the_key_that_was_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - id: eaqi-poor\n"
        "    kind: threshold\n"
        "    source: kpi\n"
        "    kpi_id: eaqi\n"
        "    set: 4\n"
        "    clear: 3\n"
        "    fr: 1h\n"
    )
    assert main(["alerts", "rules", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "rules.0(eaqi-poor).fr: unknown key; did you mean 'for'? (line 8)" in err
