"""``climastream alerts ack/silence/unsilence`` act on an alert that exists, or say so.

The engine ignores an action for a fingerprint it does not know; the CLI must not report
"sent" for a typo, or for the 12-digit short form ``tail --alerts`` prints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from climastream.cli import main
from climastream.contract import Alert, AlertAction, AlertActionKind, AlertSeverity, AlertState
from stream.alerts import cli

FINGERPRINT = "022a0c220ed845e7"
OTHER = "022a0c22ffffffff"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[AlertAction]:
    now = datetime.now(UTC)
    alerts = {
        fp: Alert(
            fingerprint=fp,
            rule_id="demo-no2-high",
            state=AlertState.FIRING,
            severity=AlertSeverity.WARNING,
            summary=f"NO2 high ({fp})",
            started_at=now,
            updated_at=now,
        )
        for fp in (FINGERPRINT, OTHER)
    }
    actions: list[AlertAction] = []

    async def read_alerts(bootstrap: str, **_: Any) -> dict[str, Alert]:
        return dict(alerts)

    async def send_action(bootstrap: str, action: AlertAction, security: Any = None) -> None:
        actions.append(action)

    monkeypatch.setattr(cli, "read_alerts", read_alerts)
    monkeypatch.setattr(cli, "send_action", send_action)
    return actions


@pytest.mark.parametrize("given", [FINGERPRINT, FINGERPRINT[:12], FINGERPRINT.upper()])
def test_an_action_goes_to_the_alert_its_fingerprint_names(
    sent: list[AlertAction], given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alerts", "silence", given, "--for", "2h"]) == 0
    assert [(a.fingerprint, a.action) for a in sent] == [(FINGERPRINT, AlertActionKind.SILENCE)]
    assert f"sent silence for {FINGERPRINT}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("deadbeefdeadbeef", "no alert deadbeefdeadbeef on the alerts topic"),
        ("022a0c22", "022a0c22 is the start of several alerts"),
        ("nonsense", "'nonsense' is not an alert fingerprint"),
    ],
)
def test_an_action_for_no_single_known_alert_is_refused_and_not_sent(
    sent: list[AlertAction], given: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alerts", "ack", given]) == 2
    assert sent == []
    err = capsys.readouterr().err
    assert says in err
    assert "validation error" not in err  # not pydantic's dump


@pytest.mark.parametrize("given", [FINGERPRINT, FINGERPRINT[:12], FINGERPRINT.upper()])
def test_history_takes_the_fingerprint_forms_an_action_takes(
    monkeypatch: pytest.MonkeyPatch, given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator acks an alert by the 12 digits 'tail --alerts' shows, then asks for its
    history with the same 12 digits: 'no state changes' was wrong, the alert has them."""
    now = datetime.now(UTC)
    changes = [
        Alert(
            fingerprint=fp, rule_id="demo-no2-high", state=state, severity=AlertSeverity.WARNING,
            summary=f"NO2 high ({fp})", started_at=now, updated_at=now,
        )
        for fp, state in (
            (FINGERPRINT, AlertState.PENDING), (OTHER, AlertState.FIRING),
            (FINGERPRINT, AlertState.FIRING),
        )
    ]  # fmt: skip

    async def read_alerts(bootstrap: str, **kwargs: Any) -> dict[str, Alert]:
        kwargs["history"].extend(changes)
        return {a.fingerprint: a for a in changes}

    monkeypatch.setattr(cli, "read_alerts", read_alerts)
    assert main(["alerts", "history", given]) == 0
    out = capsys.readouterr().out
    assert [line.split()[2] for line in out.splitlines()] == ["pending", "firing"]
    assert f"({FINGERPRINT})" in out
    assert f"({OTHER})" not in out


def test_history_of_a_prefix_of_several_alerts_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    changes = [
        Alert(
            fingerprint=fp, rule_id="r", state=AlertState.FIRING, severity=AlertSeverity.WARNING,
            summary="s", started_at=now, updated_at=now,
        )
        for fp in (FINGERPRINT, OTHER)
    ]  # fmt: skip

    async def read_alerts(bootstrap: str, **kwargs: Any) -> dict[str, Alert]:
        kwargs["history"].extend(changes)
        return {a.fingerprint: a for a in changes}

    monkeypatch.setattr(cli, "read_alerts", read_alerts)
    assert main(["alerts", "history", "022a0c22"]) == 2
    assert "022a0c22 is the start of several alerts" in capsys.readouterr().err
