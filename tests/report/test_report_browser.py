"""The report in headless Chromium (Debian's chromium, driven by Playwright): every image loads, no
console error; a screenshot goes to the test's tmp folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium executable (Debian package `chromium`; `make test` installs it when run as root, "
                    "see tools/ensure-chromium.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (the `test` extra: pip install -e '.[test]')")
    return sync_playwright


def test_report_renders_in_headless_chromium(tiny_report, tmp_path):
    sync_playwright = _browser_or_skip()
    index = tiny_report.folder / "index.html"
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(index.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), "
                                                      "i.complete, i.naturalWidth])")
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert len(widths) == len(list(tiny_report.folder.glob("*.png"))) >= 8
    assert [src for src, complete, width in widths if not (complete and width > 0)] == []
    assert problems == []
    assert screenshot.stat().st_size > 10_000
