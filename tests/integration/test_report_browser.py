"""The run report in a real browser: headless Chromium (Debian's ``chromium``) opens report.html
with the network blocked, the plots and tables are in the rendered DOM, its script ran, the
console stayed silent, and a screenshot is kept with the test output.

Built from a synthetic but valid run directory (:mod:`reports.synthetic`), so no cluster is
needed. Skipped, with the reason, when no Chromium is installed (``scripts/setup.sh`` installs
it as root).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports.report.write import write_report
from reports.synthetic import Synth, write_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]? (.*)$")


@pytest.fixture(scope="module")
def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no headless Chromium found (tried chromium, chromium-browser, google-chrome); "
        "`apt-get install chromium` or run scripts/setup.sh as root"
    )


def run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # the report must open with no network
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-20:])
        pytest.fail(f"{browser} exited {proc.returncode}:\n{tail}")
    return proc


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for line in stderr.splitlines() if (m := CONSOLE.search(line))]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = write_run(
        tmp_path_factory.mktemp("run") / "20260101-000000-synthetic_kill-s7", Synth(failures=8)
    )
    return write_report(run).html


def test_report_renders_in_headless_chromium(browser: str, report: Path, tmp_path: Path) -> None:
    proc = run_browser(browser, tmp_path / "profile", "--dump-dom", report.as_uri())
    dom = proc.stdout
    assert 'data-js="ok"' in dom, "the report's inline script did not run to its end"
    assert dom.count("<svg") >= 7, (
        "expected the latency, tier, rate, spectrum, budget, lag and timeline charts"
    )
    assert dom.count("<polyline") >= 3 and 'class="fault-window"' in dom
    for table in ("slo", "windows", "stages", "generator", "faults"):
        assert f'<table class="{table}">' in dom, f"table {table} missing from the DOM"
    assert "recchaos run synthetic.yaml --seed 7" in dom
    messages = console_messages(proc.stderr)
    assert not messages, f"console messages while opening the report: {messages}"


def test_report_screenshot_is_kept(browser: str, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    run_browser(
        browser,
        tmp_path / "profile",
        "--hide-scrollbars",
        "--window-size=1100,4600",
        f"--screenshot={shot}",
        report.as_uri(),
    )
    assert shot.is_file() and shot.stat().st_size > 50_000, "screenshot missing or blank"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"report screenshot: {shot}")


def test_console_errors_would_be_caught(browser: str, tmp_path: Path) -> None:
    """The console check itself works: a page with a script error is noticed."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFn();</script></body></html>")
    proc = run_browser(browser, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert any("undefinedFn is not defined" in m for m in console_messages(proc.stderr))
