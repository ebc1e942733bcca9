"""The scripted agent turn: a pure function from a message to the HQ events it produces."""

from __future__ import annotations

import hashlib
import itertools
import random
import re
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError

MAX_DELTAS = 100_000
MAX_TOOLS = 100
MAX_ARTIFACTS = 100
MAX_INTERVAL_MS = 60_000.0
MODEL = "hq-sim-1"
DIRECTIVES_HELP = """\
directives in a message's text shape its turn (other bracketed words stay text):
  [deltas=N]        N text_delta chunks (1-100000; default 8-16)
  [interval_ms=F]   pause between events (default --delta-interval-ms)
  [tools=N]         N tool_call/tool_result pairs (default 1)
  [artifacts=N]     N artifact_created events (default 1)
  [tool_error]      the first tool_result has is_error: true
  [fail]            end with error {recoverable: false} instead of final; [fail=recoverable]
"""

_DIRECTIVE = re.compile(r"\[(deltas|interval_ms|tools|artifacts|fail|tool_error)(?:=([^\]]*))?\]")
_TOOLS = (
    ("search_documents", "workspace"),
    ("query_financials", "workspace"),
    ("fetch_url", "web"),
    ("run_python", "sandbox"),
)
# Non-ASCII, quotes and a backslash on purpose: clients must not corrupt them while splicing chunks.
_WORDS = (
    "revenue", "rose", "quarter", "over", "the", "café", "naïve", "forecast", "—", "margin",
    "grew", "12%", "→", "\"quoted\"", "C:\\data", "déjà", "vu", "and", "costs", "fell", "😀",
)  # fmt: skip


class DirectiveError(GatewayError):
    """A directive in the message text has a value the simulator cannot play."""


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """How a turn is shaped; None means "pick with the turn's random generator"."""

    deltas: int | None = None
    interval_ms: float | None = None
    tools: int = 1
    artifacts: int = 1
    fail: bool = False
    fail_recoverable: bool = False
    tool_error: bool = False


@dataclass(frozen=True, slots=True)
class ScriptedEvent:
    """One event of a turn, emitted ``delay_ms`` after the previous one."""

    event: str
    data: dict[str, Any]
    delay_ms: float


def _int_value(name: str, value: str | None, low: int, high: int) -> int:
    try:
        n = int(value or "")
    except ValueError:
        raise DirectiveError(f"[{name}=…] needs an integer {low}-{high}, got {value!r}") from None
    if not low <= n <= high:
        raise DirectiveError(f"[{name}=…] needs an integer {low}-{high}, got {n}")
    return n


def parse_directives(text: str) -> tuple[str, TurnOptions]:
    """Split ``text`` into the message without directives and the options they set."""
    fields: dict[str, Any] = {}
    for match in _DIRECTIVE.finditer(text):
        name, value = match.group(1), match.group(2)
        if name == "deltas":
            fields["deltas"] = _int_value(name, value, 1, MAX_DELTAS)
        elif name == "tools":
            fields["tools"] = _int_value(name, value, 0, MAX_TOOLS)
        elif name == "artifacts":
            fields["artifacts"] = _int_value(name, value, 0, MAX_ARTIFACTS)
        elif name == "interval_ms":
            try:
                ms = float(value or "")
            except ValueError:
                ms = -1.0
            if not 0.0 <= ms <= MAX_INTERVAL_MS:
                raise DirectiveError(f"[interval_ms=…] needs a number 0-{MAX_INTERVAL_MS:g}, got {value!r}")
            fields["interval_ms"] = ms
        elif name == "fail":
            if value not in (None, "recoverable"):
                raise DirectiveError(f"[fail] takes no value or =recoverable, got {value!r}")
            fields["fail"] = True
            fields["fail_recoverable"] = value == "recoverable"
        elif value is not None:
            raise DirectiveError(f"[{name}] takes no value, got {value!r}")
        else:
            fields[name] = True
    clean = " ".join(_DIRECTIVE.sub(" ", text).split())
    return clean, TurnOptions(**fields)


def reply_text(prompt: str, min_chars: int, rng: random.Random) -> str:
    """A plausible reply mentioning ``prompt``, at least ``min_chars`` characters long."""
    topic = prompt[:80] or "nothing in particular"
    parts = [f"You asked about “{topic}”."]
    length = len(parts[0])
    sentence = 0
    while length < max(min_chars, 60):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 9))]
        sentence += 1
        # A paragraph break now and then: the newline must survive one-line JSON data.
        sep = "\n\n" if sentence % 4 == 0 else " "
        piece = sep + " ".join(words).capitalize() + "."
        parts.append(piece)
        length += len(piece)
    return "".join(parts)


def split_chunks(text: str, n: int, rng: random.Random) -> list[str]:
    """Cut ``text`` into ``n`` non-empty chunks at random points (``len(text) >= n``)."""
    cuts = sorted(rng.sample(range(1, len(text)), n - 1)) if n > 1 else []
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _digest(args: str) -> str:
    return "sha256:" + hashlib.sha256(args.encode()).hexdigest()[:16]


def build_turn(text: str, rng: random.Random, *, interval_ms: float) -> list[ScriptedEvent]:
    """The events of one turn for ``text`` (``final.duration_ms`` is planned); DirectiveError if unplayable."""
    prompt, opts = parse_directives(text)
    step = opts.interval_ms if opts.interval_ms is not None else interval_ms
    out: list[ScriptedEvent] = []

    def emit(event: str, data: dict[str, Any], delay_ms: float = step) -> None:
        out.append(ScriptedEvent(event, data, delay_ms))

    emit("status", {"message": "Thinking…"}, 0.0)
    emit("agent_active", {"hint": f"planning: {len(prompt)} chars of input, {opts.tools} tool(s)"})
    for n in range(opts.tools):
        name, scope = _TOOLS[rng.randrange(len(_TOOLS))]
        call_id = f"call_{rng.getrandbits(48):012x}"
        args = f"query={prompt[:40]!r}, page={n + 1}"
        emit("status", {"message": f"Calling {name}"})
        emit(
            "tool_call",
            {"id": call_id, "name": name, "scope": scope, "args_summary": args, "args_digest": _digest(args)},
        )
        failed = opts.tool_error and n == 0
        summary = f"{name} timed out after 30 s" if failed else f"{rng.randint(1, 40)} results"
        emit("tool_result", {"id": call_id, "is_error": failed, "summary": summary}, step * rng.randint(2, 4))
    for n in range(opts.artifacts):
        artifact_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        emit("artifact_created", {"id": artifact_id, "kind": "document", "title": f"Notes {n + 1}"})
    emit("status", {"message": "Writing the answer"})
    deltas = opts.deltas if opts.deltas is not None else rng.randint(8, 16)
    reply = reply_text(prompt, deltas, rng)
    chunks = split_chunks(reply, deltas, rng)
    if opts.fail:
        for chunk in chunks[: len(chunks) // 2]:
            emit("text_delta", {"text": chunk})
        message = "simulated failure: the agent's machine stopped responding"
        emit("error", {"message": message, "recoverable": opts.fail_recoverable})
    else:
        for chunk in chunks:
            emit("text_delta", {"text": chunk})
        input_tokens = 250 + len(prompt) // 4
        output_tokens = max(1, len(reply) // 4)
        cost = round(input_tokens * 3e-6 + output_tokens * 15e-6, 6)
        usage = {"model": MODEL, "input_tokens": input_tokens, "output_tokens": output_tokens, "cost_usd": cost}
        emit("token_usage", usage, 0.0)
        planned_ms = round(sum(e.delay_ms for e in out))
        emit("final", {"text": reply, "duration_ms": planned_ms}, 0.0)
    emit("done", {}, 0.0)
    return out
