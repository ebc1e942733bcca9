"""The live console (/console) in a real headless Chromium, over STOMP/SockJS and over SSE.

``tests/node/console_browser.mjs`` drives Debian's ``chromium`` with playwright-core (see its header for the
story it plays and the JSON it prints); this module starts the gateway, runs it, and checks what each page
shows against the journal. ``make test`` installs chromium (apt), playwright-core (tests/node) and the console's
vendored STOMP bundles (``make vendor``); without them the browser test skips locally and fails under CI=true.
The screenshot lands in ``test-artifacts/console.png`` (and ``docs/console.png`` when that is missing, or
always with ``HQGW_UPDATE_SCREENSHOT=1``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ROOT, ServerProcess

pytestmark = pytest.mark.integration

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
SCRIPT = ROOT / "tests" / "node" / "console_browser.mjs"
PLAYWRIGHT = ROOT / "tests" / "node" / "node_modules" / "playwright-core" / "package.json"
VENDOR = ROOT / "gateway" / "static" / "vendor"
ARTIFACT = ROOT / "test-artifacts" / "console.png"
DOCS_SCREENSHOT = ROOT / "docs" / "console.png"
TURN1 = "What changed in revenue this quarter? [deltas=24] [tools=2]"
TURN2 = "And the margins? [deltas=60] [interval_ms=30] [tools=1]"  # slow enough to drop mid-turn


@pytest.fixture(scope="module")
def browser() -> tuple[str, str]:
    """(node, chromium) once everything the browser test needs is installed; skip locally, fail in CI."""
    node = shutil.which("node")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    problems = []
    if node is None:
        problems.append("node is not on PATH")
    if chromium is None:
        problems.append("chromium is not installed (`make test` installs Debian's package; needs root)")
    if not PLAYWRIGHT.is_file():
        problems.append("tests/node/node_modules lacks playwright-core: run `make test` or `cd tests/node && npm ci`")
    missing = [f for f in ("stomp.umd.min.js", "sockjs.min.js") if not (VENDOR / f).is_file()]
    if missing:
        problems.append(f"gateway/static/vendor lacks {', '.join(missing)}: run `make vendor`")
    if problems:
        reason = "console browser test unavailable: " + "; ".join(problems)
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    assert node is not None and chromium is not None
    return node, chromium


def journal(gw: ServerProcess, conv: str) -> list[dict[str, Any]]:
    page = httpx.get(f"{gw.url}/api/v1/conversation/audit/{conv}", params={"after": 0, "limit": 1000}).json()
    assert page["nextAfter"] is None
    items: list[dict[str, Any]] = page["items"]
    return items


def seq_of(env: dict[str, Any]) -> int:
    return int(env["auditId"] if env["eventType"] == "AUDIT" else env["verbose"]["verboseId"])


def test_console_is_served_with_a_strict_policy(gateway: ServerProcess) -> None:
    """No browser needed: the page, its assets, the vendored bundles' mount, the trailing-slash redirect."""
    with httpx.Client(base_url=gateway.url) as http:
        page = http.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert re.search(r'<script type="module" src="console/console.js">', page.text)
        assert "<script>" not in page.text and "style=" not in page.text  # nothing inline: the CSP forbids it
        script = http.get("/console/console.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert script.headers["x-content-type-options"] == "nosniff"
        assert http.get("/console/console.css").headers["content-type"].startswith("text/css")
        assert http.get("/console/vendor/nothing-here.js").status_code == 404
        slash = http.get("/console/?conversation=x")
        assert slash.status_code == 308 and slash.headers["location"] == "../console?conversation=x"


def test_console_in_chromium_over_stomp_and_sse(
    gateway: ServerProcess, conv: str, browser: tuple[str, str], tmp_path: Path
) -> None:
    node, chromium = browser
    ARTIFACT.parent.mkdir(exist_ok=True)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options = {
        "base": gateway.url,
        "conversation": conv,
        "chromium": chromium,
        "userDataDir": str(profile),
        "turn1": TURN1,
        "turn2": TURN2,
        "screenshot": str(ARTIFACT),
        "timeoutMs": 15_000,
    }
    try:
        run = subprocess.run(
            [node, str(SCRIPT), json.dumps(options)],
            cwd=SCRIPT.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired as exc:  # the script's own waits have deadlines: this is a hang
        raise AssertionError(f"console_browser.mjs hung; stderr: {exc.stderr!r}") from None
    lines = run.stdout.strip().splitlines()
    assert lines, f"no output (exit {run.returncode}); stderr: {run.stderr[-3000:]}"
    result = json.loads(lines[-1])
    ARTIFACT.with_name("console-pages.json").write_text(json.dumps(result, indent=1))  # what each page showed
    assert result["ok"], f"{result.get('error')}\npages: {json.dumps(result.get('pages'))[:4000]}\n{run.stderr[-2000:]}"
    assert result["problems"] == []  # no page error, console error, CSP violation or failed request

    envs = journal(gateway, conv)
    seqs = [str(seq_of(e)) for e in envs]
    finals = {e["payload"]["_meta"]["turn"]: e["payload"]["text"] for e in envs if e["stage"] == "ASSISTANT_OUTPUT"}
    tools: dict[int, list[str]] = {1: [], 2: []}
    for e in envs:
        if e["stage"] == "MCP_TOOL_CALL":
            tools[e["payload"]["_meta"]["turn"]].append(e["payload"]["name"])
    turn2_end = next(seq_of(e) for e in envs if e["stage"] == "ENGINE_RETURN" and e["payload"]["_meta"]["turn"] == 2)
    assert set(finals) == {1, 2} and len(tools[1]) == 2 and len(tools[2]) == 1

    pages = result["pages"]
    assert pages["stomp"]["transport"] == "STOMP · SockJS websocket"
    assert pages["sse"]["transport"] == "SSE"
    for name in ("stomp", "sse"):
        page = pages[name]
        turns = page["turns"]
        assert [t["turn"] for t in turns] == [1, 2], name
        for turn, message in zip(turns, (TURN1, TURN2), strict=True):
            number = turn["turn"]
            assert turn["state"] == "COMPLETED", (name, turn)
            assert turn["userInput"] == message, (name, turn)
            # The text assembled from the deltas, shown live, equals the turn's final text.
            assert turn["reply"] == finals[number] and turn["replyFinal"] and turn["replyMatches"], (name, turn)
            assert [t["name"] for t in turn["tools"]] == tools[number], (name, turn)
            for tool in turn["tools"]:
                assert tool["status"] == "done" and re.fullmatch(r"\d+ ms|\d+\.\d+ s", tool["duration"]), (name, tool)
            assert "output tokens" in (turn["usage"] or ""), (name, turn)
            assert turn["errors"] == []
        # Every envelope once, in journal order, across the drop: the resume was exact.
        assert page["logSeqs"] == seqs, name
        assert page["lastSeq"] == seqs[-1] and page["duplicates"] == 0 and page["reconnects"] == 1, name
        resumed = [int(m.group(1)) for line in page["activity"] if (m := re.search(r"resumed after seq (\d+)", line))]
        assert len(resumed) == 1 and resumed[0] < turn2_end, (name, page["activity"])  # dropped mid-turn
    # Without the bundles the page says what to run, and still works over SSE (late join: turn snapshot).
    bare = pages["noVendor"]
    assert bare["vendorNote"] and "make vendor" in bare["vendorNote"] and bare["stompDisabled"]
    assert bare["transport"] == "SSE" and bare["turns"][-1]["reply"] == finals[2]

    assert ARTIFACT.stat().st_size > 10_000
    if not DOCS_SCREENSHOT.exists() or os.environ.get("HQGW_UPDATE_SCREENSHOT") == "1":
        publish_screenshot()


def publish_screenshot() -> None:
    """Copy the artifact to docs/ for the README, palette-reduced (~5x smaller) when pngquant is installed."""
    DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
    pngquant = shutil.which("pngquant")
    if pngquant:
        args = [pngquant, "--quality", "60-90", "--speed", "1", "--force", "--output", str(DOCS_SCREENSHOT)]
        if subprocess.run([*args, str(ARTIFACT)], capture_output=True, timeout=60).returncode == 0:
            return
    shutil.copyfile(ARTIFACT, DOCS_SCREENSHOT)
