"""The console's credentials: the auth file, token expiry and the sessions it bounds."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from console.auth import (
    AuthConfigError,
    Credentials,
    Principal,
    Role,
    SessionStore,
    hash_password,
    token_digest,
)
from console.feed import ListActionSink
from console.hub import Hub
from console.state import LiveState
from console.web import ConsoleApp
from tests.unit.console.builders import raw_request

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WALL = "wallboard-token-0123456789"
TWIN = "digital-twin-token-0123456789"


def _auth_file(tmp_path: Path, twin_expiry: str) -> Path:
    path = tmp_path / "auth.yaml"
    path.write_text(
        "users:\n"
        f'  - {{name: alice, role: operator, password_hash: "{hash_password("pw")}"}}\n'
        "tokens:\n"
        f"  - {{name: wallboard, role: viewer, token_sha256: {token_digest(WALL)}}}\n"
        f"  - {{name: twin, role: viewer, token_sha256: {token_digest(TWIN)}, "
        f"expires_at: {twin_expiry}}}\n"
    )
    return path


def test_a_token_is_refused_from_its_expiry_on_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    credentials = Credentials.load({}, _auth_file(tmp_path, "2026-11-24T13:00:00+01:00"))
    # load() judges expiry on the real clock, which passed NOW (tested below): only what
    # check_token says on the test's clock counts here
    caplog.clear()
    clock = [NOW - timedelta(minutes=1)]
    credentials.clock = lambda: clock[0]
    twin = credentials.check_token(TWIN)
    assert twin == Principal("twin", Role.VIEWER, NOW)  # +01:00 read as UTC
    assert credentials.check_password("alice", "pw") == Principal("alice", Role.OPERATOR)
    clock[0] = NOW
    with caplog.at_level(logging.WARNING, logger="console.auth"):
        assert credentials.check_token(TWIN) is None
        assert credentials.check_token(TWIN) is None
    assert [r.getMessage() for r in caplog.records] == [
        "console token 'twin' expired at 2026-11-24T12:00:00+00:00: refused"
    ]
    assert TWIN not in caplog.text
    # a token without expires_at does not expire
    clock[0] = NOW + timedelta(days=3650)
    assert credentials.check_token(WALL) == Principal("wallboard", Role.VIEWER)


def test_a_token_already_expired_at_start_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="console.auth"):
        credentials = Credentials.load({}, _auth_file(tmp_path, "2020-01-01T00:00:00Z"))
    assert "token 'twin' expired at 2020-01-01T00:00:00+00:00; it is refused" in caplog.text
    assert credentials.check_token(TWIN) is None


def test_an_expiry_without_a_time_zone_is_refused_by_key(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError) as caught:
        Credentials.load({}, _auth_file(tmp_path, "2027-01-01T00:00:00"))
    assert str(caught.value).endswith(
        "invalid auth file: tokens.1.expires_at: Input should have timezone info (line 5)"
    )


def test_a_session_ends_no_later_than_the_token_it_was_opened_with() -> None:
    sessions = SessionStore(ttl=timedelta(hours=12), clock=lambda: NOW)
    _, short = sessions.create(Principal("twin", Role.VIEWER, NOW + timedelta(hours=1)))
    assert short.expires == NOW + timedelta(hours=1)
    _, normal = sessions.create(Principal("alice", Role.OPERATOR))
    assert normal.expires == NOW + timedelta(hours=12)


async def test_an_expired_bearer_token_gets_401_like_a_wrong_one() -> None:
    clock = [NOW - timedelta(seconds=1)]
    credentials = Credentials(clock=lambda: clock[0])
    credentials.tokens[token_digest(TWIN)] = Principal("twin", Role.VIEWER, NOW)
    app = ConsoleApp(Hub(LiveState()), credentials, ListActionSink()).build()
    bearer = {"Authorization": f"Bearer {TWIN}"}
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/ngsi-ld/v1/types", headers=bearer)).status == 200
        clock[0] = NOW
        renew = 'Bearer realm="climastream", error="invalid_token"'
        for url in ("/ngsi-ld/v1/types", "/api/me"):
            refused = await client.get(url, headers=bearer)
            assert refused.status == 401
            assert refused.headers["WWW-Authenticate"] == renew
            assert "bearer token is not valid" in await refused.text()


async def test_a_token_that_is_not_utf8_is_a_401_not_a_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    credentials = Credentials()
    credentials.tokens[token_digest(WALL)] = Principal("wallboard", Role.VIEWER)
    app = ConsoleApp(Hub(LiveState()), credentials, ListActionSink()).build()
    async with TestServer(app) as server:
        for path in ("/api/me", "/ngsi-ld/v1/types"):
            answer = await raw_request(
                server, "GET", path, b"Authorization: Bearer \xff\xfe-not-utf8\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        bearer = f"Authorization: Bearer {WALL}\r\n".encode()
        answer = await raw_request(server, "GET", "/api/me", bearer)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
