"""The console's operations view and watcher count in a real headless Chromium (tests/node/ops_browser.mjs)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.clients import SseViewer
from tests.integration.conftest import submit
from tests.integration.test_presence import told_sse
from tests.servers import ROOT, ServerProcess

pytestmark = pytest.mark.integration

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
SCRIPT = ROOT / "tests" / "node" / "ops_browser.mjs"
PLAYWRIGHT = ROOT / "tests" / "node" / "node_modules" / "playwright-core" / "package.json"
ARTIFACT = ROOT / "test-artifacts" / "ops.png"


@pytest.fixture(scope="module")
def browser() -> tuple[str, str]:
    """(node, chromium); skip locally without them, fail in CI (the ops view needs no vendored bundle)."""
    node = shutil.which("node")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    needs = {"node is not on PATH": node, "chromium is not installed": chromium,
             "tests/node lacks playwright-core (npm ci)": PLAYWRIGHT.is_file()}  # fmt: skip
    problems = [what for what, ok in needs.items() if not ok]
    if problems:
        if IN_CI:
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))
    assert node is not None and chromium is not None
    return node, chromium


def test_ops_view_lists_the_conversation_live_and_disconnects_its_viewers(
    gateway: ServerProcess, conv: str, browser: tuple[str, str], tmp_path: Path
) -> None:
    node, chromium = browser
    ARTIFACT.parent.mkdir(exist_ok=True)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()

    async def main() -> None:
        viewers = [SseViewer(gateway.url, conv).start() for _ in range(2)]
        for v in viewers:
            await v.wait_connected()
        assert submit(gateway, conv, "ops view [deltas=6]").status_code == 202
        for v in viewers:
            await v.wait_for_stage("ENGINE_RETURN")
        options = {"base": gateway.url, "conversation": conv, "chromium": chromium, "userDataDir": str(profile),
                   "viewers": 3, "screenshot": str(ARTIFACT), "timeoutMs": 15_000}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            node, str(SCRIPT), json.dumps(options), cwd=SCRIPT.parent, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 90)
        except TimeoutError:
            proc.kill()
            raise AssertionError("ops_browser.mjs hung") from None
        lines = out.decode().strip().splitlines()
        assert lines, f"no output (exit {proc.returncode}); stderr: {err.decode()[-3000:]}"
        result = json.loads(lines[-1])
        assert result["ok"], f"{result.get('error')}\n{err.decode()[-2000:]}"
        assert result["problems"] == []  # no page error, console error, CSP violation or failed request

        seqs = viewers[0].seqs
        row = result["row"]
        assert result["watchers"] == "3"  # the console page itself and the two viewers here
        assert row["viewers"] == "3" and row["viewersText"] == "3 (sse 3)"
        assert row["state"] == "live" and row["holder"] not in ("—", "") and row["reconnects"] == "0"
        assert row["journal"] == f"{seqs[0]}…{seqs[-1]}" and row["turn"] == "1"
        assert re.fullmatch(r"\d+ ms", row["ttft"]) and re.fullmatch(r"[\d.]+ m?s ago", row["lastEvent"])
        assert int(result["totals"]["viewers"]) >= 3
        # The button ended every viewer, each told why: the console says so instead of reconnecting.
        assert "disconnected_by_admin" in result["consoleAfter"]["text"]
        assert result["rowAfter"] is None or result["rowAfter"]["viewers"] == "0"
        for v in viewers:
            await asyncio.wait_for(v.closed.wait(), 5)
            told = told_sse(v)
            assert told is not None and told["error"] == "disconnected_by_admin" and told["resumeFrom"] == seqs[-1]
            await v.stop()

    asyncio.run(main())


def test_ops_view_is_served_with_the_console_policy(gateway: ServerProcess) -> None:
    """No browser needed: the page and its script come with the console's strict CSP, nothing inline."""
    page = httpx.get(f"{gateway.url}/console/ops.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="ops.js">' in page.text
    assert "<script>" not in page.text and "style=" not in page.text
    script = httpx.get(f"{gateway.url}/console/ops.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert 'href="console/ops.html"' in httpx.get(f"{gateway.url}/console").text
