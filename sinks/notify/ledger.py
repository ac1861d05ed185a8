"""The notifier's durable memory: incidents and deliveries in one SQLite file (WAL).

De-duplication is by *ledger*, not by Kafka offsets: every planned delivery is a row with
the unique key ``(fingerprint, incident, kind, channel, recipient)``, inserted before the
consumer commits the offset of the alert record that caused it. A restarted notifier
(or an alert record replayed after an engine restart) inserts nothing new, and resumes the
rows that were still pending. ``incident`` is the alert's ``started_at``; a firing record
for a fingerprint whose incident is still open never opens a second one.

The ``deliveries`` rows are the alert's delivery history: attempts, last error, when sent,
and ``failing_since``: when the first failed attempt was (the notifier gives up retrying
``retry.give_up_after`` later). A cancelled delivery that is planned again (``plan`` with
``revive``) is a fresh delivery: its ``attempts`` and ``failing_since`` start over (so its
backoff and retry budget do too), and ``last_error`` stays until its next attempt.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Delivery", "Incident", "Ledger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    fingerprint TEXT PRIMARY KEY,
    incident TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    severity TEXT NOT NULL,
    alert_json BLOB NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    silenced INTEGER NOT NULL DEFAULT 0,
    closed_at TEXT,
    escalate_at TEXT,
    escalated_at TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    incident TEXT NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    status TEXT NOT NULL,
    due_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    failing_since TEXT,
    UNIQUE (fingerprint, incident, kind, channel, recipient)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, due_at);
"""

#: columns added since the first release: (table, column, declaration); a ledger file
#: written before gets them on open (as NULL in existing rows)
_ADDED_COLUMNS = (("deliveries", "failing_since", "TEXT"),)

PENDING, DEFERRED, SENT, FAILED, CANCELLED = "pending", "deferred", "sent", "failed", "cancelled"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class Incident:
    fingerprint: str
    incident: str
    opened_at: datetime
    severity: str
    alert_json: bytes
    acked: bool
    silenced: bool
    closed_at: datetime | None
    escalate_at: datetime | None
    escalated_at: datetime | None


@dataclass(frozen=True)
class Delivery:
    id: int
    fingerprint: str
    incident: str
    kind: str
    channel: str
    recipient: str
    status: str
    due_at: datetime
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    #: when the first failed attempt was (None: none failed since it was planned)
    failing_since: datetime | None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class Ledger:
    """Synchronous SQLite access (each call is short; the notifier is the only writer)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ incidents

    def incident(self, fingerprint: str) -> Incident | None:
        row = self._db.execute(
            "SELECT fingerprint, incident, opened_at, severity, alert_json, acked, silenced, "
            "closed_at, escalate_at, escalated_at FROM incidents WHERE fingerprint = ?",
            (fingerprint,),
        ).fetchone()
        if row is None:
            return None
        return Incident(
            row[0],
            row[1],
            datetime.fromisoformat(row[2]),
            row[3],
            row[4],
            bool(row[5]),
            bool(row[6]),
            _time(row[7]),
            _time(row[8]),
            _time(row[9]),
        )

    def open_incident(
        self,
        fingerprint: str,
        incident: str,
        *,
        now: datetime,
        severity: str,
        alert_json: bytes,
        acked: bool,
        silenced: bool,
        escalate_at: datetime | None,
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO incidents (fingerprint, incident, opened_at, severity, "
            "alert_json, acked, silenced, closed_at, escalate_at, escalated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL)",
            (
                fingerprint,
                incident,
                _iso(now),
                severity,
                alert_json,
                int(acked),
                int(silenced),
                _iso(escalate_at) if escalate_at else None,
            ),
        )

    def update_incident(
        self,
        fingerprint: str,
        *,
        alert_json: bytes | None = None,
        acked: bool | None = None,
        silenced: bool | None = None,
        closed_at: datetime | None = None,
        escalate_at: datetime | None = None,
        escalated_at: datetime | None = None,
    ) -> None:
        sets, values = [], []
        for column, value in (
            ("alert_json", alert_json),
            ("acked", None if acked is None else int(acked)),
            ("silenced", None if silenced is None else int(silenced)),
            ("closed_at", _iso(closed_at) if closed_at else None),
            ("escalate_at", _iso(escalate_at) if escalate_at else None),
            ("escalated_at", _iso(escalated_at) if escalated_at else None),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        if sets:
            self._db.execute(
                f"UPDATE incidents SET {', '.join(sets)} WHERE fingerprint = ?",
                (*values, fingerprint),
            )

    def due_escalations(self, now: datetime) -> list[Incident]:
        rows = self._db.execute(
            "SELECT fingerprint FROM incidents WHERE closed_at IS NULL AND acked = 0 AND "
            "silenced = 0 AND escalated_at IS NULL AND escalate_at IS NOT NULL AND "
            "escalate_at <= ?",
            (_iso(now),),
        ).fetchall()
        return [i for (fp,) in rows if (i := self.incident(fp)) is not None]

    # ------------------------------------------------------------------ deliveries

    def plan(
        self,
        fingerprint: str,
        incident: str,
        kind: str,
        channel: str,
        recipient: str,
        *,
        now: datetime,
        due_at: datetime,
        revive: bool = False,
    ) -> bool:
        """Insert a delivery unless that exact one exists; True if it is new.

        ``revive``: a delivery that exists but was cancelled before it was sent (its alert
        was silenced, then unsilenced while still firing) is planned again instead, and
        counts as new; its ``attempts`` and ``failing_since`` start over.
        """
        status = PENDING if due_at <= now else DEFERRED
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO deliveries (fingerprint, incident, kind, channel, recipient, "
            "status, due_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (fingerprint, incident, kind, channel, recipient, status, _iso(due_at), _iso(now)),
        )
        if cursor.rowcount == 1 or not revive:
            return cursor.rowcount == 1
        # a fresh delivery: its retries (backoff, give-up deadline) start over
        cursor = self._db.execute(
            "UPDATE deliveries SET status = ?, due_at = ?, attempts = 0, failing_since = NULL "
            "WHERE fingerprint = ? AND incident = ? AND kind = ? AND channel = ? AND "
            "recipient = ? AND status = ?",
            (status, _iso(due_at), fingerprint, incident, kind, channel, recipient, CANCELLED),
        )
        return cursor.rowcount > 0

    def due(self, now: datetime, limit: int = 100) -> list[Delivery]:
        rows = self._db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE status IN (?, ?) AND due_at <= ? "
            "ORDER BY due_at, id LIMIT ?",
            (PENDING, DEFERRED, _iso(now), limit),
        ).fetchall()
        return [_delivery(row) for row in rows]

    def mark_sent(self, delivery_id: int, now: datetime) -> None:
        self._db.execute(
            "UPDATE deliveries SET status = ?, attempts = attempts + 1, sent_at = ? WHERE id = ?",
            (SENT, _iso(now), delivery_id),
        )

    def mark_failed(
        self,
        delivery_id: int,
        error: str,
        *,
        now: datetime,
        retry_at: datetime | None,
        cancel: bool = False,
    ) -> None:
        """Record an attempt that failed at ``now`` (the first one sets ``failing_since``);
        ``retry_at`` None means give up (status failed, or cancelled with ``cancel``: the
        message is no longer wanted, e.g. its incident resolved while it was being sent)."""
        if retry_at is None:
            self._db.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_error = ?, "
                "failing_since = COALESCE(failing_since, ?) WHERE id = ?",
                (CANCELLED if cancel else FAILED, error[:500], _iso(now), delivery_id),
            )
        else:
            self._db.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_error = ?, "
                "failing_since = COALESCE(failing_since, ?), due_at = ? WHERE id = ?",
                (PENDING, error[:500], _iso(now), _iso(retry_at), delivery_id),
            )

    def cancel(self, delivery_id: int) -> None:
        """Cancel a delivery that was not sent yet (its alert resolved or was silenced)."""
        self._db.execute(
            "UPDATE deliveries SET status = ? WHERE id = ? AND status IN (?, ?)",
            (CANCELLED, delivery_id, PENDING, DEFERRED),
        )

    def since(self, now: datetime) -> datetime:
        """When this ledger was first used; alert records older than that are history."""
        self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('since', ?)", (_iso(now),)
        )
        row = self._db.execute("SELECT value FROM meta WHERE key = 'since'").fetchone()
        return datetime.fromisoformat(row[0])

    def deliveries(self, fingerprint: str | None = None) -> list[Delivery]:
        if fingerprint is None:
            rows = self._db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries ORDER BY id"
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE fingerprint = ? ORDER BY id",
                (fingerprint,),
            ).fetchall()
        return [_delivery(row) for row in rows]


_DELIVERY_COLUMNS = (
    "id, fingerprint, incident, kind, channel, recipient, status, due_at, attempts, "
    "last_error, created_at, sent_at, failing_since"
)


def _delivery(row: tuple[object, ...]) -> Delivery:
    return Delivery(
        id=int(str(row[0])),
        fingerprint=str(row[1]),
        incident=str(row[2]),
        kind=str(row[3]),
        channel=str(row[4]),
        recipient=str(row[5]),
        status=str(row[6]),
        due_at=datetime.fromisoformat(str(row[7])),
        attempts=int(str(row[8])),
        last_error=str(row[9]) if row[9] is not None else None,
        created_at=datetime.fromisoformat(str(row[10])),
        sent_at=_time(str(row[11])) if row[11] is not None else None,
        failing_since=_time(str(row[12])) if row[12] is not None else None,
    )
