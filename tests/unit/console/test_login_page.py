"""The login page as a browser lays it out (Debian's Chromium, headless): every control
can be clicked, with and without the "login failed" line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[3] / "console" / "static"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (see console/README.md)"
)


@pytest.mark.parametrize("failed", [False, True])
async def test_each_login_button_receives_its_click(failed: bool) -> None:
    """The console's grid layout for <main> applied to the login box too: its children
    were laid out in two columns of a 360 px box, the title hidden under the token form,
    and after a failed login the "or" line lay over "Log in with token", so a click on
    the button went to the text instead."""
    from playwright.async_api import async_playwright

    css = (STATIC / "console.css").read_text()
    html = (STATIC / "login.html").read_text()
    html = html.replace(
        '<link rel="stylesheet" href="/static/console.css">', f"<style>{css}</style>"
    )
    html = html.replace('<script src="/static/login.js"></script>', "")
    assert "<style>" in html
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.set_content(html)
            if failed:  # what login.js does on /login?failed=1
                await page.evaluate("document.getElementById('failed').hidden = false")
            for control in ("#token", "#token-login", "#username", "#password", "#password-login"):
                hit = await page.evaluate(
                    """(sel) => {
                        const r = document.querySelector(sel).getBoundingClientRect();
                        const x = r.x + r.width / 2, y = r.y + r.height / 2;
                        const at = document.elementFromPoint(x, y);
                        if (at && at.closest(sel)) return "";
                        return at ? at.outerHTML.slice(0, 60) : "none";
                    }""",
                    control,
                )
                assert hit == "", f"{control} is covered by {hit}"
            title = await page.locator("h1").bounding_box()
            form = await page.locator("#token-form").bounding_box()
            assert title is not None
            assert form is not None
            assert title["y"] + title["height"] <= form["y"], "the title is under the form"
        finally:
            await browser.close()
