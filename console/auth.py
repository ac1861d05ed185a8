"""Who may use the console, and as what.

Two roles: a **viewer** sees everything; an **operator** may also acknowledge and silence
alerts. People log in with a name and password (stored as scrypt hashes) or with a token
(stored as its SHA-256); API clients send the token as ``Authorization: Bearer``.

Secrets never live in code or command lines. They come from the environment
(``CLIMASTREAM_CONSOLE_OPERATOR_TOKEN``, ``CLIMASTREAM_CONSOLE_VIEWER_TOKEN``, or the same
names with ``_FILE`` holding a path to a file with the token) or from a
YAML file named by ``CLIMASTREAM_CONSOLE_AUTH_FILE`` / ``--auth-file``::

    users:
      - {name: alice, role: operator, password_hash: "scrypt$16384$8$1$<salt>$<hash>"}
    tokens:
      - {name: wallboard, role: viewer, token_sha256: "<hex>"}
      - {name: twin, role: viewer, token_sha256: "<hex>", expires_at: 2027-03-31T00:00:00Z}

``climastream console --hash-password`` prints a hash for a password read from stdin.

A token with ``expires_at`` is refused from that moment on (logged once, by name), and a
browser session opened with it ends then too, whatever the session's own lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from climastream.contract import SafeId
from climastream.validation import error_lines
from climastream.yamlfile import YamlFileError, load_yaml

log = logging.getLogger(__name__)


class AuthConfigError(ValueError):
    """The credentials configuration is invalid; the message names the key."""


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    #: when the credential stops being valid (a token's ``expires_at``); None: never
    expires: datetime | None = None

    @property
    def can_act(self) -> bool:
        return self.role is Role.OPERATOR


_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """An scrypt hash string ``scrypt$N$r$p$salt$hash`` (base64) for the auth file."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def token_digest(token: str) -> str:
    # surrogateescape: aiohttp hands a header's undecodable bytes over as surrogates; they
    # hash as the bytes that were sent (matching no token) instead of raising a 500
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UserEntry(_Frozen):
    name: SafeId
    role: Role
    password_hash: Annotated[str, Field(pattern=r"^scrypt\$")]


class TokenEntry(_Frozen):
    name: SafeId
    role: Role
    token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    #: refused from this moment on; with a time zone (``2027-03-31T00:00:00Z``)
    expires_at: AwareDatetime | None = None


class AuthFile(_Frozen):
    users: tuple[UserEntry, ...] = ()
    tokens: tuple[TokenEntry, ...] = ()


class Credentials:
    """The users and tokens the console accepts. Comparisons are constant-time."""

    def __init__(
        self,
        users: Mapping[str, UserEntry] | None = None,
        tokens: Mapping[str, Principal] | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.users = dict(users or {})
        self.tokens = dict(tokens or {})  # sha256 hex -> principal
        self.clock = clock
        self._expired_logged: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.users or self.tokens)

    def add_token(self, token: str, principal: Principal) -> None:
        if len(token) < 16:
            raise AuthConfigError(f"token for {principal.name!r} is shorter than 16 characters")
        self.tokens[token_digest(token)] = principal

    def check_token(self, token: str) -> Principal | None:
        digest = token_digest(token)
        found = None
        for known, principal in self.tokens.items():
            if hmac.compare_digest(known, digest):
                found = principal
        if found is not None and found.expires is not None and found.expires <= self.clock():
            if found.name not in self._expired_logged:
                self._expired_logged.add(found.name)
                log.warning(
                    "console token %r expired at %s: refused",
                    found.name,
                    found.expires.isoformat(),
                )
            return None
        return found

    def check_password(self, name: str, password: str) -> Principal | None:
        user = self.users.get(name)
        if user is None:
            verify_password(password, _DUMMY_HASH)  # same work whether or not the name exists
            return None
        if verify_password(password, user.password_hash):
            return Principal(user.name, user.role)
        return None

    @classmethod
    def load(cls, environ: Mapping[str, str], auth_file: Path | None = None) -> Credentials:
        """Credentials from ``auth_file`` (or $CLIMASTREAM_CONSOLE_AUTH_FILE) and env tokens."""
        credentials = cls()
        path = auth_file or (
            Path(environ["CLIMASTREAM_CONSOLE_AUTH_FILE"])
            if environ.get("CLIMASTREAM_CONSOLE_AUTH_FILE")
            else None
        )
        if path is not None:
            key_lines = None
            try:
                raw, key_lines = load_yaml(path)
                parsed = AuthFile.model_validate(raw or {})
            except YamlFileError as exc:
                raise AuthConfigError(f"console auth file {exc}") from None
            except ValidationError as exc:
                where = "; ".join(error_lines(exc, root="", key_lines=key_lines, model=AuthFile))
                raise AuthConfigError(f"{path}: invalid auth file: {where}") from None
            credentials.users = {u.name: u for u in parsed.users}
            now = credentials.clock()
            for entry in parsed.tokens:
                expires = entry.expires_at.astimezone(UTC) if entry.expires_at else None
                credentials.tokens[entry.token_sha256] = Principal(entry.name, entry.role, expires)
                if expires is not None and expires <= now:
                    log.warning(
                        "%s: token %r expired at %s; it is refused",
                        path,
                        entry.name,
                        expires.isoformat(),
                    )
        for role in Role:
            name = f"CLIMASTREAM_CONSOLE_{role.value.upper()}_TOKEN"
            token = environ.get(name)
            if not token and environ.get(name + "_FILE"):
                try:
                    token = Path(environ[name + "_FILE"]).read_text().strip()
                except OSError as exc:
                    raise AuthConfigError(f"{name}_FILE: cannot read: {exc}") from None
            if token:
                credentials.add_token(token, Principal(role.value, role))
        return credentials


_DUMMY_HASH = hash_password("not-a-password", salt=b"climastream-dumm")


@dataclass
class Session:
    principal: Principal
    csrf: str
    expires: datetime


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SessionStore:
    """Server-side sessions behind an opaque random cookie; bounded and expiring.

    Beyond ``max_sessions`` the oldest session is dropped (its user logs in again).
    """

    def __init__(
        self,
        *,
        ttl: timedelta = timedelta(hours=12),
        max_sessions: int = 10000,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, principal: Principal) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        expires = self.clock() + self.ttl
        if principal.expires is not None:
            expires = min(expires, principal.expires)  # not past the token it was opened with
        session = Session(principal, secrets.token_urlsafe(32), expires)
        self._sessions[session_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[session_id]
            return None
        return session

    def delete(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


class LoginThrottle:
    """At most ``max_failures`` failed logins per client address per ``window``."""

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window: timedelta = timedelta(minutes=1),
        max_clients: int = 10000,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_clients = max_clients
        self._failures: OrderedDict[str, list[datetime]] = OrderedDict()

    def blocked(self, client: str) -> bool:
        cutoff = self.clock() - self.window
        recent = [t for t in self._failures.get(client, []) if t > cutoff]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return len(recent) >= self.max_failures

    def failed(self, client: str) -> None:
        self._failures.setdefault(client, []).append(self.clock())
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
