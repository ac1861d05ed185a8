"""What a notification says: plain-language subject, evidence, links to act.

One :class:`Notification` is rendered per delivery; every channel uses the same text so an
e-mail, a chat message and an Alertmanager annotation never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from climastream.contract import Alert, AlertSeverity
from climastream.quantities import CANONICAL_UNITS

__all__ = ["Kind", "Notification", "render"]

_UNIT_TEXT = {"Cel": " °C", "dB(A)": " dB(A)", "%": " %", "ug/m3": " µg/m³", "1": "", "s": " s"}
_SEVERITY_WORD = {
    AlertSeverity.CRITICAL: "Urgent",
    AlertSeverity.WARNING: "Warning",
    AlertSeverity.INFO: "Notice",
}


class Kind(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"
    ESCALATION = "escalation"


@dataclass(frozen=True)
class Notification:
    kind: Kind
    alert: Alert
    subject: str
    text: str
    links: dict[str, str]

    def payload(self, recipient: str) -> dict[str, Any]:
        """The JSON body of webhooks (schema 1): the text plus the full Alert record."""
        return {
            "schema_version": 1,
            "kind": self.kind.value,
            "recipient": recipient,
            "subject": self.subject,
            "text": self.text,
            "links": self.links,
            "alert": self.alert.model_dump(mode="json", exclude_none=True),
        }


def _number(value: float | None, unit: str | None) -> str:
    if value is None:
        return "?"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    suffix = _UNIT_TEXT.get(unit or "", f" {unit}" if unit else "")
    return f"{text}{suffix}"


def _local(when: datetime, zone: ZoneInfo) -> str:
    local = when.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({when:%H:%M} UTC)"


def links_for(alert: Alert, console_url: str) -> dict[str, str]:
    base = console_url.rstrip("/") + "/alerts/" + quote(alert.fingerprint)
    return {
        "view": base,
        "acknowledge": f"{base}?action=acknowledge",
        "silence": f"{base}?action=silence",
    }


def render(
    alert: Alert,
    kind: Kind,
    *,
    console_url: str,
    zone: ZoneInfo,
    escalated_after: str | None = None,
) -> Notification:
    """Render one notification of ``alert`` (see the README for the message format)."""
    links = links_for(alert, console_url)
    if kind is Kind.RESOLVED:
        subject = f"[Resolved] {alert.summary}"
    elif kind is Kind.ESCALATION:
        subject = f"[Escalated: not acknowledged after {escalated_after}] {alert.summary}"
    else:
        subject = f"[{_SEVERITY_WORD[alert.severity]}] {alert.summary}"
    where = [f"zone {alert.zone}" if alert.zone else None]
    where += [f"device {alert.device_id}" if alert.device_id else None]
    where += [f"gateway {alert.gateway_id}" if alert.gateway_id else None]
    lines = [alert.summary, ""]
    if kind is Kind.RESOLVED:
        lines += [f"This alert is resolved as of {_local(alert.updated_at, zone)}.", ""]
    elif kind is Kind.ESCALATION:
        lines += [
            f"Nobody has acknowledged this alert within {escalated_after}; "
            "you are the next contact.",
            "",
        ]
    lines.append("Where:      " + (", ".join(w for w in where if w) or "city-wide"))
    if alert.location:
        loc = alert.location
        lines.append(
            f"Location:   {loc.lat:.5f}, {loc.lon:.5f}  "
            f"https://www.openstreetmap.org/?mlat={loc.lat:.5f}&mlon={loc.lon:.5f}#map=17/"
            f"{loc.lat:.5f}/{loc.lon:.5f}"
        )
    lines.append(f"How bad:    {alert.severity.value}")
    if alert.value is not None:
        against = (
            f" (alert level {_number(alert.threshold, alert.unit)})"
            if alert.threshold is not None
            else ""
        )
        lines.append(f"Value:      {_number(alert.value, alert.unit)}{against}")
    if alert.labels.get("band"):
        lines.append(f"Band:       {alert.labels['band'].replace('_', ' ')}")
    lines.append(f"Since:      {_local(alert.started_at, zone)}")
    if alert.completeness is not None:
        lines.append(f"Data:       {alert.completeness:.0%} of expected readings arrived")
    if alert.score is not None:
        lines.append(f"Model:      anomaly score {alert.score:.2f}")
    if alert.evidence:
        lines += ["", "Latest values:"]
        for point in alert.evidence:
            source = f"  {point.device_id}" if point.device_id else ""
            # a point of a known quantity is in its canonical unit (an anomaly alert's own
            # unit is the model score's, not the readings')
            unit = CANONICAL_UNITS[point.quantity] if point.quantity else alert.unit
            lines.append(
                f"  {point.time.astimezone(zone):%H:%M:%S}  {_number(point.value, unit)}{source}"
            )
    if alert.description:
        lines += ["", alert.description]
    lines += [
        "",
        f"Rule: {alert.rule_id}   Team: {alert.team or '-'}   Alert id: {alert.fingerprint}",
    ]
    if kind is not Kind.RESOLVED:
        lines += [
            f"Acknowledge: {links['acknowledge']}",
            f"Silence:     {links['silence']}",
            f"(or: climastream alerts ack {alert.fingerprint})",
        ]
    else:
        lines.append(f"Details: {links['view']}")
    return Notification(
        kind=kind, alert=alert, subject=subject[:250], text="\n".join(lines), links=links
    )
