"""Access control of the console app: login, roles, CSRF, and the action path."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from climastream.contract import Quantity
from console.auth import Credentials, Principal, Role, hash_password, verify_password
from console.feed import ListActionSink
from console.hub import Hub
from console.state import LiveState
from console.web import COOKIE, ConsoleApp, MalformedRequestFilter, quiet_malformed_requests
from tests.unit.console.builders import raw_request, reading

OP_TOKEN = "operator-token-0123456789"
VIEW_TOKEN = "viewer-token-0123456789"
FP = "0123456789abcdef"


@pytest.fixture
async def setup() -> AsyncIterator[tuple[TestClient[object, object], ListActionSink]]:
    credentials = Credentials()
    credentials.add_token(OP_TOKEN, Principal("olga", Role.OPERATOR))
    credentials.add_token(VIEW_TOKEN, Principal("wall", Role.VIEWER))
    sink = ListActionSink()
    app = ConsoleApp(Hub(LiveState()), credentials, sink).build()
    async with TestClient(TestServer(app)) as client:
        yield client, sink


def test_password_hashes_verify() -> None:
    encoded = hash_password("a long password")
    assert verify_password("a long password", encoded)
    assert not verify_password("a long passwort", encoded)
    assert not verify_password("x", "garbage")


async def test_unauthenticated_requests_are_refused(
    setup: tuple[TestClient, ListActionSink],
) -> None:
    client, _ = setup
    refused = await client.get("/api/me")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="climastream"'
    assert await refused.json() == {"error": "login required"}
    response = await client.get("/", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/login"


async def login(client: TestClient, token: str) -> str:
    response = await client.post("/login", data={"token": token}, allow_redirects=False)
    assert response.status == 302
    cookie = response.cookies[COOKIE]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    me = await (await client.get("/api/me")).json()
    return str(me["csrf"])


async def test_raised_answers_carry_the_security_headers_and_api_errors_are_json(
    setup: tuple[TestClient, ListActionSink],
) -> None:
    client, _ = setup

    def secured(response: Any) -> bool:
        return (
            "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            and response.headers["X-Content-Type-Options"] == "nosniff"
            and response.headers["Cache-Control"] == "no-store"
        )

    refused = await client.get("/api/me")
    assert (refused.status, secured(refused)) == (401, True)
    login = await client.post("/login", data={"token": OP_TOKEN}, allow_redirects=False)
    assert (login.status, secured(login)) == (302, True)
    bearer = {"Authorization": f"Bearer {OP_TOKEN}"}
    missing = await client.get("/api/nope", headers=bearer)
    assert (missing.status, secured(missing)) == (404, True)
    assert await missing.json() == {"error": "404: Not Found"}
    wrong_method = await client.delete("/api/me", headers=bearer)
    assert (wrong_method.status, wrong_method.headers["Allow"]) == (405, "GET,HEAD")
    assert await wrong_method.json() == {"error": "405: Method Not Allowed"}
    too_big = await client.post(
        f"/api/alerts/{FP}/actions", data=b"x" * (64 * 1024 + 1), headers=bearer
    )
    assert (too_big.status, secured(too_big)) == (413, True)
    assert "Maximum request body size 65536 exceeded" in (await too_big.json())["error"]


async def test_a_csrf_token_that_is_not_utf8_is_refused_not_a_server_error(
    setup: tuple[TestClient, ListActionSink], caplog: pytest.LogCaptureFixture
) -> None:
    client, sink = setup
    await login(client, OP_TOKEN)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    headers = f"Cookie: {COOKIE}={cookie}\r\n".encode() + b"X-CSRF-Token: \xff\xfe\r\n"
    answer = await raw_request(client.server, "POST", f"/api/alerts/{FP}/actions", headers)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    assert b"missing or wrong X-CSRF-Token" in answer
    assert sink.actions == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_operator_action_goes_to_the_action_sink(
    setup: tuple[TestClient, ListActionSink],
) -> None:
    client, sink = setup
    csrf = await login(client, OP_TOKEN)
    url = f"/api/alerts/{FP}/actions"
    body = {"action": "silence", "minutes": 30}
    # without the CSRF token, or from another origin: refused, nothing sent
    assert (await client.post(url, json=body)).status == 403
    foreign = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert (await client.post(url, json=body, headers=foreign)).status == 403
    assert sink.actions == []
    # behind a TLS proxy: the browser's https origin, as the proxy forwards it
    proxied = {
        "X-CSRF-Token": csrf,
        "Origin": "https://console.city.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "console.city.example",
    }
    assert (await client.post(url, json=body, headers=proxied)).status == 202
    sink.actions.clear()
    spoofed = {**proxied, "X-Forwarded-Host": "other.example"}
    assert (await client.post(url, json=body, headers=spoofed)).status == 403
    response = await client.post(url, json=body, headers={"X-CSRF-Token": csrf})
    assert response.status == 202
    (action,) = sink.actions
    assert (action.fingerprint, action.action.value, action.actor) == (FP, "silence", "olga")
    assert action.until is not None
    assert (action.until - action.at).total_seconds() == 1800
    bad = await client.post(
        "/api/alerts/NOT-HEX/actions", json=body, headers={"X-CSRF-Token": csrf}
    )
    assert bad.status == 400
    assert "fingerprint" in (await bad.json())["error"]


async def test_viewer_cannot_act(setup: tuple[TestClient, ListActionSink]) -> None:
    client, sink = setup
    csrf = await login(client, VIEW_TOKEN)
    response = await client.post(
        f"/api/alerts/{FP}/actions", json={"action": "acknowledge"}, headers={"X-CSRF-Token": csrf}
    )
    assert response.status == 403
    bearer = await client.post(
        f"/api/alerts/{FP}/actions",
        json={"action": "acknowledge"},
        headers={"Authorization": f"Bearer {VIEW_TOKEN}"},
    )
    assert bearer.status == 403
    assert sink.actions == []


@pytest.mark.parametrize("behind_proxy", [False, True])
async def test_behind_a_proxy_failed_logins_count_per_forwarded_client(behind_proxy: bool) -> None:
    credentials = Credentials()
    credentials.add_token(OP_TOKEN, Principal("olga", Role.OPERATOR))
    app = ConsoleApp(
        Hub(LiveState()), credentials, ListActionSink(), behind_proxy=behind_proxy
    ).build()
    async with TestClient(TestServer(app)) as client:

        async def login(token: str, client_address: str) -> int:
            # a client's own X-Forwarded-For entries come first; the proxy appends the last
            forwarded = {"X-Forwarded-For": f"10.9.9.9, {client_address}"}
            response = await client.post(
                "/login", data={"token": token}, headers=forwarded, allow_redirects=False
            )
            return response.status

        assert [await login("wrong-token-xxxxxxxx", "203.0.113.66") for _ in range(11)][-1] == 429
        # another user, all through the same proxy address: throttled too only without
        # --behind-proxy
        assert await login(OP_TOKEN, "198.51.100.7") == (302 if behind_proxy else 429)


async def test_wrong_token_fails_and_is_throttled(
    setup: tuple[TestClient, ListActionSink], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = setup
    statuses = []
    caplog.set_level(logging.INFO, logger="console.web")
    for _ in range(12):
        response = await client.post(
            "/login", data={"token": "wrong-token-xxxxxxxx"}, allow_redirects=False
        )
        statuses.append(response.status)
    assert statuses[:10] == [302] * 10  # back to /login?failed=1
    assert statuses[10:] == [429, 429]
    # an operator can see the attempts (a brute force shows in the journal), never the secret
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("login failed client=127.0.0.1 with=token" in m for m in messages) == 10
    assert sum("login refused: too many failed logins" in m for m in messages) == 2
    assert not any("wrong-token" in r.getMessage() for r in caplog.records)


async def test_a_failed_password_login_names_the_user_quoted(
    setup: tuple[TestClient, ListActionSink], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = setup
    caplog.set_level(logging.INFO, logger="console.web")
    hostile = "olga\nlogin name=admin role=operator"
    response = await client.post(
        "/login", data={"username": hostile, "password": "guess-1234"}, allow_redirects=False
    )
    assert response.status == 302
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage() == f"login failed client=127.0.0.1 with=password name={hostile!r}"
    assert "\n" not in record.getMessage()
    assert "guess-1234" not in record.getMessage()


async def test_the_event_stream_ends_when_the_session_does() -> None:
    """An open SSE stream must not outlive a logout (an audit saw 66 events after it)."""
    credentials = Credentials()
    credentials.add_token(OP_TOKEN, Principal("olga", Role.OPERATOR))
    app = ConsoleApp(Hub(LiveState()), credentials, ListActionSink(), keepalive_s=0.05).build()
    async with TestClient(TestServer(app)) as client:
        csrf = await login(client, OP_TOKEN)
        stream = await client.get("/api/events")
        assert stream.status == 200
        assert b"retry:" in await stream.content.readany()
        logout = await client.post("/logout", headers={"X-CSRF-Token": csrf}, allow_redirects=False)
        assert logout.status in (200, 204, 302)
        rest = await asyncio.wait_for(stream.content.read(), timeout=10)  # ends: EOF
        assert b"event: session-ended" in rest


async def test_a_malformed_request_is_one_warning_line_not_a_traceback(
    setup: tuple[TestClient, ListActionSink], caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL byte in a header (as a fuzzer or scanner sends) gets 400 and one WARNING;
    an exception in a handler stays an ERROR with its traceback."""
    client, _ = setup
    quiet_malformed_requests()
    quiet_malformed_requests()  # idempotent
    installed = logging.getLogger("aiohttp.server").filters
    assert sum(isinstance(f, MalformedRequestFilter) for f in installed) == 1
    server = client.server
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
        await writer.drain()
        answer = await reader.read(100)
        writer.close()
        await asyncio.sleep(0.1)  # the log record is written after the answer
    assert answer.startswith(b"HTTP/1.0 400")
    (record,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert record.levelname == "WARNING"
    assert record.exc_info is None
    assert "malformed HTTP request refused with 400: Invalid header value char" in (
        record.getMessage()
    )
    # a handler's own exception is left alone
    boom = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), None
    )
    try:
        raise RuntimeError("handler bug")
    except RuntimeError:
        boom.exc_info = sys.exc_info()
    assert MalformedRequestFilter().filter(boom)
    assert boom.levelname == "ERROR"
    assert boom.exc_info is not None


async def test_the_streams_filter_comes_from_the_query_and_bad_ones_are_named() -> None:
    credentials = Credentials()
    credentials.add_token(VIEW_TOKEN, Principal("wall", Role.VIEWER))
    state = LiveState()
    state.add_readings(
        reading(f"{zone[0]}-{i}", zone, 1, Quantity.TEMPERATURE, 20.0)
        for zone in ("north", "park")
        for i in range(3)
    )
    app = ConsoleApp(Hub(state), credentials, ListActionSink(), keepalive_s=0.05).build()
    bearer = {"Authorization": f"Bearer {VIEW_TOKEN}"}
    async with TestClient(TestServer(app)) as client:
        park = await (await client.get("/api/snapshot/streams?zone=park", headers=bearer)).json()
        assert {r["zone"] for r in park["rows"]} == {"park"}
        assert park["zones"] == ["north", "park"]
        found = await client.get("/api/snapshot/streams?device=N-2&zone=", headers=bearer)
        assert [r["id"] for r in (await found.json())["rows"]] == ["n-2"]

        stream = await client.get("/api/events?zone=north", headers=bearer)
        assert stream.status == 200
        first = b""
        while b"event: streams" not in first:
            first += await asyncio.wait_for(stream.content.readany(), timeout=10)
        data = first.split(b"event: streams\ndata: ", 1)[1].split(b"\n", 1)[0]
        assert {r["zone"] for r in orjson.loads(data)["rows"]} == {"north"}
        stream.close()

        # the other panels have no rows to choose: the same snapshot as without a filter
        plain = await (await client.get("/api/snapshot/map", headers=bearer)).read()
        filtered = await client.get("/api/snapshot/map?zone=park", headers=bearer)
        assert await filtered.read() == plain

        for path, error in [
            ("/api/snapshot/streams?zon=park", "unknown parameter 'zon'; known: zone, device"),
            ("/api/events?colour=red", "unknown parameter 'colour'; known: zone, device"),
            ("/api/snapshot/streams?zone=a&zone=b", "parameter 'zone' given more than once"),
            (f"/api/events?device={'x' * 101}", "device: device search is 101 characters"),
        ]:
            refused = await client.get(path, headers=bearer)
            assert refused.status == 400, path
            assert (await refused.json())["error"].startswith(error), path
