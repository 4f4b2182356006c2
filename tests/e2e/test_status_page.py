"""The operator status page in a real headless Chromium (Debian's
``chromium``, driven by Playwright), on a real gateway listening on a
loopback port, on SQLite and on PostgreSQL.

The gateway's clock is a manual one started at the real time (a sign-in
link from ``filestore status-link``, made on the real clock, must be valid on
it), and moved forward instead of waiting. The command runs as a real
process once (SQLite); the browser test runs its code in-process. The browser signs in
through the form, reads the page and compares its figures with
``/v1/purge/status`` fetched with the same operator key, measures the
charts, and is refused with a client key, a tampered or expired cookie and a
revoked key; a sign-in link works once. Without chromium or Playwright the
browser tests skip, saying which is missing; the HTTP-level checks (CSRF,
cookie attributes, the link's refusals, headers) run regardless.

``FILESTORE_SCREENSHOT=docs/status-page.png`` keeps a screenshot of the page
(the SQLite run's).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from filestore import status_link
from filestore.api.status_page import COOKIE
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.errors import ConfigError
from filestore.metadata.base import InstanceStatus, Role
from filestore.sessions import SESSION_TTL, SessionSigner
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway

HOUR = 3600.0
CHROMIUM = shutil.which("chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or not HAVE_PLAYWRIGHT,
    reason="needs Debian's chromium (apt-get install chromium)"
    if CHROMIUM is None
    else "needs Playwright (pip install playwright; its own browsers are not used)",
)


@pytest.fixture
async def gw(tmp_path: Path, metadata_backend: MetadataBackend) -> AsyncIterator[Gateway]:
    clock = ManualClock(start=float(int(time.time())))
    async with running_gateway(tmp_path, clock=clock, database_url=metadata_backend.url) as gw:
        yield gw


def _base(gw: Gateway) -> str:
    return str(gw.client.make_url("")).rstrip("/")


async def _state(gw: Gateway) -> None:
    """Files of several lifetimes, a pass that purged an overdue one, and an
    expired file not yet purged."""
    for ttl in ("10m", "12m", "2h", "20h", "20h"):
        await gw.upload(os.urandom(1000), params={"ttl": ttl})
    gw.clock.advance(11 * 60)  # the 10-minute file is a minute overdue
    run = await gw.client.post("/v1/purge/run", headers=await gw.auth(role=Role.OPERATOR))
    assert run.status == 200
    assert (await run.json())["pass"]["purged"] == 1
    gw.clock.advance(2 * 60)  # the 12-minute file: expired, unpurged


async def _status_json(gw: Gateway) -> dict[str, Any]:
    resp = await gw.client.get("/v1/purge/status", headers=await gw.auth(role=Role.OPERATOR))
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def _make_link(gw: Gateway, base: str) -> str:
    """What ``filestore status-link --ttl 60m --base-url BASE`` prints last."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        await status_link.run(
            gw.settings, argparse.Namespace(ttl="60m", key_id=None, base_url=base)
        )
    return out.getvalue().strip().splitlines()[-1]


def link_key_id(link: str) -> str:
    """The operator key id a sign-in link names (``l1.<key id>.…``)."""
    return link.split("token=", 1)[1].split(".")[1]


def _status_link(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    env.update(
        FILESTORE_DATA_DIR=str(gw.settings.data_dir),
        FILESTORE_DATABASE_URL=gw.settings.database_url,
    )
    return subprocess.run(
        [sys.executable, "-m", "filestore", "status-link", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


# -------------------------------------------------------------- the browser
@needs_browser
async def test_status_page_in_chromium(gw: Gateway, metadata_backend: MetadataBackend) -> None:
    from playwright.async_api import async_playwright

    await _state(gw)
    operator = await gw.key("ops", Role.OPERATOR)
    client = await gw.key("acme", Role.CLIENT)
    expected = await _status_json(gw)
    assert expected["backlog"] == 1 and expected["most_overdue_seconds"] == 60
    lifetimes = await gw.services.metadata.files.lifetime_histogram(gw.clock.now(), HOUR, 24)
    base = _base(gw)

    async with async_playwright() as pw:
        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 900})
            context.set_default_timeout(15_000)
            page = await context.new_page()
            csp_errors: list[str] = []
            page.on(
                "console",
                lambda m: csp_errors.append(m.text) if "Content Security" in m.text else None,
            )

            # Signed out: the page sends the browser to the form.
            await page.goto(f"{base}/status")
            assert page.url == f"{base}/status/login"
            assert await page.locator("form[action='/status/login'] #api_key").count() == 1

            # A client key is refused, and gets no cookie.
            await page.fill("#api_key", client)
            await page.click("#sign-in")
            await page.wait_for_url(f"{base}/status/login?note=refused")
            assert "refused" in (await page.locator("#note").inner_text())
            assert [c for c in await context.cookies() if c["name"] == COOKIE] == []

            # The operator key: the session cookie, and the page.
            await page.fill("#api_key", f"  {operator}\n")
            await page.click("#sign-in")
            await page.wait_for_url(f"{base}/status")
            (cookie,) = [c for c in await context.cookies() if c["name"] == COOKIE]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert cookie["path"] == "/status" and not cookie["secure"]
            assert operator.split("_", 2)[2] not in cookie["value"]
            assert cookie["expires"] - time.time() <= SESSION_TTL + 5

            response = await page.goto(f"{base}/status")
            assert response is not None and response.status == 200
            headers = response.headers
            assert "default-src 'none'" in headers["content-security-policy"]
            assert headers["x-frame-options"] == "DENY"
            assert headers["cache-control"] == "no-store"
            assert headers["content-type"].startswith("text/html")

            # The same figures as /v1/purge/status (the clock has not moved).
            async def value(ident: str) -> str:
                got = await page.locator(f"#{ident}").get_attribute("data-value")
                assert got is not None, ident
                return got

            assert int(await value("backlog")) == expected["backlog"] == 1
            assert float(await value("most-overdue")) == expected["most_overdue_seconds"]
            assert int(await value("live-files")) == expected["live_files"]
            assert int(await value("failing-files")) == expected["failing_files"]
            assert int(await value("purged-total")) == expected["purged_total"] == 1
            assert await value("purge-state") in ("ok", "stale", "behind", "failing")
            deps = await page.locator("#dependencies tbody tr").all_inner_texts()
            assert {tuple(r.split("\t")) for r in deps} == set(expected["health"].items())
            instances = await page.locator("#instances tbody tr").all_inner_texts()
            assert len(instances) == len(expected["cluster"]["instances"]) == 1
            assert expected["instance"] in instances[0]
            history = await page.locator("#history tbody tr").all_inner_texts()
            assert len(history) == 1 and expected["instance"] in history[0]
            keks = await page.locator("#keks tbody tr").all_inner_texts()
            assert keks and "active" in keks[-1]
            # The stylesheet applied: its hash is the one the policy allows.
            background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(245, 247, 250)"

            # The charts render, with one bar per non-empty bucket.
            for chart in ("#lifetime-chart", "#lag-chart"):
                box = await page.locator(chart).bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 80, chart
            bars = page.locator("#lifetime-chart rect.bar")
            assert await bars.count() == sum(1 for c in lifetimes if c) == 2
            counts = {
                int(await bars.nth(i).get_attribute("data-bucket") or -1): int(
                    await bars.nth(i).get_attribute("data-count") or -1
                )
                for i in range(await bars.count())
            }
            assert counts == {i: c for i, c in enumerate(lifetimes) if c}
            assert sum(counts.values()) == 3  # the 2 h and the two 20 h files
            lags = page.locator("#lag-chart rect.lag")
            assert await lags.count() == 1
            assert float(await lags.first.get_attribute("data-lag") or 0) == 60.0
            for rect in [bars.nth(i) for i in range(2)] + [lags.first]:
                box = await rect.bounding_box()
                assert box is not None and box["width"] > 0 and box["height"] > 0

            shot = os.environ.get("FILESTORE_SCREENSHOT")
            if shot and metadata_backend.name == "sqlite":
                await page.screenshot(path=shot, full_page=True)

            # A tampered cookie is refused.
            tag = cookie["value"][-1]
            forged = cookie["value"][:-1] + ("A" if tag != "A" else "B")
            await context.add_cookies(
                [{"name": COOKIE, "value": forged, "domain": "127.0.0.1", "path": "/status"}]
            )
            await page.goto(f"{base}/status")
            assert page.url == f"{base}/status/login?note=expired"
            assert [c for c in await context.cookies() if c["name"] == COOKIE] == []

            # Sign in again; sign out with the button.
            await page.fill("#api_key", operator)
            await page.click("#sign-in")
            await page.wait_for_url(f"{base}/status")
            await page.click("#sign-out")
            await page.wait_for_url(f"{base}/status/login?note=signed-out")
            await page.goto(f"{base}/status")
            assert page.url == f"{base}/status/login"

            # A sign-in link from `filestore status-link` (its code, run here
            # on this gateway's settings): it signs in, leaves the address
            # bar, works once, and dies with its key.
            link = await _make_link(gw, base)
            other = await browser.new_context()
            other.set_default_timeout(15_000)
            linked = await other.new_page()
            await linked.goto(link)
            await linked.wait_for_url(f"{base}/status")
            assert await linked.locator("#backlog").count() == 1
            again = await (await browser.new_context()).new_page()
            await again.goto(link)
            assert again.url == f"{base}/status/login?note=link"
            linked_key = link_key_id(link)
            assert await gw.services.metadata.api_keys.revoke(linked_key, gw.clock.now())
            await linked.goto(f"{base}/status")
            assert linked.url == f"{base}/status/login?note=expired"
            await other.close()

            # A session past its 12 hours is refused (the gateway's clock moves).
            operator = await gw.key("ops2", Role.OPERATOR)
            await page.fill("#api_key", operator)
            await page.click("#sign-in")
            await page.wait_for_url(f"{base}/status")
            gw.clock.advance(SESSION_TTL + 1)
            await page.goto(f"{base}/status")
            assert page.url == f"{base}/status/login?note=expired"
            assert csp_errors == []
            await context.close()
        finally:
            await browser.close()


# ------------------------------------------------------------ HTTP-level
async def test_csrf_cookie_and_refusals(gw: Gateway) -> None:
    operator = await gw.key("ops", Role.OPERATOR)
    http = gw.client
    origin = _base(gw)
    form = {"api_key": operator}

    async def login(**headers: str) -> Any:
        return await http.post("/status/login", data=form, headers=headers, allow_redirects=False)

    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Origin": origin},
        {"Sec-Fetch-Site": "same-site"},
    ):
        resp = await login(**headers)
        assert resp.status == 403, headers
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert "Set-Cookie" not in resp.headers
    # From the page itself (or a client that is no browser): signed in.
    resp = await login(Origin=origin, **{"Sec-Fetch-Site": "same-origin"})
    assert resp.status == 303 and resp.headers["Location"] == "/status"
    cookie = resp.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
    assert cookie["path"] == "/status" and int(cookie["max-age"]) == SESSION_TTL
    # Behind a TLS proxy the cookie is Secure (and the origin is https).
    resp = await login(**{"X-Forwarded-Proto": "https", "Origin": "https://" + origin[7:]})
    assert resp.status == 303 and resp.cookies[COOKIE]["secure"]
    # Logout is guarded the same way.
    resp = await http.post(
        "/status/logout", headers={"Origin": "http://evil.example"}, allow_redirects=False
    )
    assert resp.status == 403
    # The key never goes in a URL: a query string is not a form.
    resp = await http.post("/status/login", params=form, allow_redirects=False)
    assert resp.status == 400
    # Bad form fields and notes are problems, not pages.
    resp = await http.post("/status/login", data={"key": operator}, allow_redirects=False)
    assert resp.status == 400
    assert (await http.get("/status/login", params={"note": "<script>"})).status == 400

    # Pages carry the policy; redirects are not cached either.
    page = await http.get("/status/login")
    assert page.status == 200 and page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    resp = await http.get("/status", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/status/login"
    assert resp.headers["Cache-Control"] == "no-store"


async def test_sessions_and_links_are_checked(gw: Gateway) -> None:
    operator = await gw.key("ops", Role.OPERATOR)
    client = await gw.key("acme", Role.CLIENT)
    signer = SessionSigner(gw.services.links)
    now = gw.clock.now()
    op_id, client_id = operator.split("_")[1], client.split("_")[1]
    http = gw.client

    async def page_with(value: str) -> int:
        http.session.cookie_jar.clear()
        resp = await http.get("/status", cookies={COOKIE: value}, allow_redirects=False)
        return int(resp.status)

    good, _ = signer.session(op_id, now)
    assert await page_with(good) == 200
    # A client key's session (made with the real secret) does not open it;
    # neither does a session for an unknown key, an altered one, or a link.
    assert await page_with(signer.session(client_id, now)[0]) == 303
    assert await page_with(signer.session("0" * 12, now)[0]) == 303
    assert await page_with(good.replace(op_id, client_id)) == 303
    assert await page_with(good[:-1] + ("A" if good[-1] != "A" else "B")) == 303
    assert await page_with(signer.link_token(op_id, now)) == 303
    assert await page_with("s1." + op_id + ".99999999999.x") == 303

    async def link(token: str) -> tuple[int, str]:
        http.session.cookie_jar.clear()
        resp = await http.get("/status/link", params={"token": token}, allow_redirects=False)
        return int(resp.status), resp.headers.get("Location", "")

    token = signer.link_token(op_id, now, 60)
    assert await link(token[:-1] + ("A" if token[-1] != "A" else "B")) == (
        303,
        "/status/login?note=link",
    )
    assert await link(signer.link_token(client_id, now)) == (303, "/status/login?note=link")
    assert await link(good) == (400, "")  # a session is not a link
    status, _ = await link(token)
    assert status == 200
    assert await link(token) == (303, "/status/login?note=link")  # once
    gw.clock.advance(61)
    assert await link(signer.link_token(op_id, now, 60)) == (303, "/status/login?note=link")


async def test_every_value_is_escaped(gw: Gateway) -> None:
    """What others wrote to the shared database (instance names, error
    text) reaches the page as text, never as markup."""
    operator = await gw.key("ops", Role.OPERATOR)
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    now = gw.clock.now()
    await gw.services.metadata.cluster.report_pass(
        InstanceStatus(hostile, now - 1, now, 0, 1, 3.0, hostile, hostile)
    )
    value, _ = SessionSigner(gw.services.links).session(operator.split("_")[1], now)
    resp = await gw.client.get("/status", cookies={COOKIE: value})
    assert resp.status == 200
    body = await resp.text()
    assert "<script" not in body and "<img" not in body and "onerror=alert" in body
    assert body.count("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img") >= 3


async def test_status_link_command(tmp_path: Path) -> None:
    """``filestore status-link`` as a real process (on SQLite; the browser
    test runs its code on both databases)."""
    clock = ManualClock(start=float(int(time.time())))
    async with running_gateway(tmp_path, clock=clock) as gw:
        none = _status_link(gw)
        assert none.returncode == 2 and "no live operator key" in none.stderr
        operator = await gw.key("ops", Role.OPERATOR)
        base = _base(gw)
        made = _status_link(gw, "--ttl", "5m", "--base-url", base)
        assert made.returncode == 0, made.stderr
        link = made.stdout.strip().splitlines()[-1]
        assert link.startswith(f"{base}/status/link?token=l1.")
        assert link_key_id(link) == operator.split("_")[1]
        assert operator.split("_", 2)[2] not in made.stdout + made.stderr
        resp = await gw.client.get(link[len(base) :], allow_redirects=False)
        assert resp.status == 200 and COOKIE in resp.cookies
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        # Refusals, and the address it names by default.
        for ttl in ("2h", "soon", "0"):
            with pytest.raises(ConfigError):
                await status_link.run(
                    gw.settings, argparse.Namespace(ttl=ttl, key_id=None, base_url=None)
                )
        with pytest.raises(ConfigError, match="no live operator key"):
            await status_link.run(
                gw.settings, argparse.Namespace(ttl="1m", key_id="0" * 12, base_url=None)
            )
    assert status_link._base_url(Settings.load(env={}), None) == "http://127.0.0.1:8080"
    wildcard = Settings.load(env={}, host="0.0.0.0", port=9000)
    assert status_link._base_url(wildcard, None) == "http://127.0.0.1:9000"


def test_kek_epochs_list_ids_and_times_only(tmp_path: Path) -> None:
    """The KEK table for both schedules: ids, creation, deadlines, states."""
    from filestore.api.status_page import kek_epochs
    from filestore.crypto.keyring import Keyring
    from filestore.crypto.ratchet import RatchetKeyring
    from filestore.crypto.schedule import RatchetKeys

    settings = Settings.load(env={})
    after = settings.kek_destroy_after
    now = 1_800_000_000.0
    ring = Keyring.load_or_create(tmp_path / "keyring.json", now)
    ring.rotate(now + HOUR)
    ring.rotate(now + 2 * HOUR)
    ring.destroy(1, now + 2 * HOUR)
    epochs = kek_epochs(ring, settings, now + 2 * HOUR)
    assert [(k.kek_id, k.state) for k in epochs] == [
        (1, "destroyed, record pending"),
        (2, "retired"),
        (3, "active"),
    ]
    assert epochs[1].deadline == now + 2 * HOUR + after and epochs[2].deadline is None

    clock = ManualClock(now)
    ratchet = RatchetKeyring.create(tmp_path / "ratchet.json", now, HOUR)
    keys = RatchetKeys(ratchet, clock, after)
    first = ratchet.current_epoch(now)
    later = now + 30 * HOUR  # past the first epochs' deadlines, not yet advanced
    epochs = kek_epochs(keys, settings, later)
    assert epochs[0].kek_id == first and epochs[-1].kek_id == ratchet.current_epoch(later)
    assert epochs[-1].state == "active" and epochs[0].state == "past deadline"
    assert all(k.deadline == ratchet.deadline(k.kek_id, after) for k in epochs)
    assert {"retired", "active", "past deadline"} == {k.state for k in epochs}
