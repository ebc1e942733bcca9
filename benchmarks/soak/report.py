"""Soak results → one line per phase for the console, a markdown report for benchmarks/results/soak/."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("phase", "fault"),
    ("viewers", "viewers"),
    ("deliveries", "deliveries"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("lost_silently", "viewers lost silently"),
    ("lost_after_told", "viewers told, resume short"),
    ("told_and_resumed", "told and resumed, complete"),
    ("max_silence_ms", "max silence ms"),
    ("lag_p99_ms", "p99 lag ms"),
    ("turns", "turns accepted / in journal"),
    ("upstream", "one upstream per conversation"),
)


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "turns":
        return f"{row.get('turns_accepted')} / {row.get('turns_in_journal')}"
    if key == "upstream":
        up = row.get("upstream", {})
        verdict = "yes" if row.get("exactly_one_upstream") else f"NO ({up.get('conversations_over_one')} conv >1)"
        return f"{verdict}, max {up.get('max_open')}, {up.get('stream_opens')} opens"
    if key == "viewers":
        return f"{row.get('viewers')} ({row.get('open_failed', 0)} failed to open)"
    if key == "max_silence_ms":
        value = row.get(key)
        return f"{value / 1000:.1f} s" if isinstance(value, int | float) and value >= 10_000 else str(value)
    value = row.get(key)
    return "" if value is None else str(value)


def one_line(row: dict[str, Any]) -> str:
    return (
        f"{row['viewers']} viewers, {row['deliveries']} deliveries of {row['expected']} expected: lost {row['lost']}, "
        f"dup {row['duplicated']}, lost silently by {row['lost_silently']} viewers, told+complete "
        f"{row['told_and_resumed']}, told+short {row['lost_after_told']}, max silence {row['max_silence_ms']} ms, "
        f"turns {row['turns_accepted']}/{row['turns_in_journal']}, one upstream: {row['exactly_one_upstream']}, "
        f"notices {row['notices']}"
    )


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    plan = data["plan"]
    lines = [
        f"# Soak: {data['date']} ({data['mode']}), revision {data['revision']}",
        "",
        f"{m['cpus']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, Linux {m['kernel']}, Python {m['python']}; "
        f"load {m['load_before']:.2f} before, {m['load_after']:.2f} after; {data['elapsed_s']:.0f} s.",
        "",
        f"2 gateway processes + 1 redis-server + the HQ simulator; per phase {plan['viewers']} viewers "
        f"(STOMP/WebSocket, STOMP/SockJS, SSE in thirds, spread over both gateways) on {plan['conversations']} "
        f"fresh conversations, turns of {plan['deltas']} deltas every {plan['interval_ms']:g} ms submitted through "
        f"the gateways for {plan['traffic_s']:g} s, {plan['joiners']} joiners and, every second, "
        f"{plan['churn_per_tick']} leaves and {plan['churn_per_tick']} reloads (resume with the cursor) per "
        f"load-client process; the fault at {plan['fault_at_s']:g} s. Gateway settings: {data['gateway_env']}.",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in data["phases"]:
        if row.get("error"):
            lines.append(f"| {row['phase']} | run failed: {row['error']} |" + " |" * (len(COLUMNS) - 2))
            continue
        lines.append("| " + " | ".join(_cell(row, key) for key, _ in COLUMNS) + " |")
    lines += [
        "",
        "* **lost**: envelopes of the journal (recorded from Redis every 200 ms, beside the gateways) that a viewer "
        "owed them never received, on any of its connections; **duplicated**: received twice.",
        "* **viewers lost silently**: lost something and were never told (no SSE `stale`/`error`, no STOMP ERROR, "
        "no close with a reason, not even a dropped connection). **told, resume short**: told, resumed with their "
        "cursor, still missing envelopes. **told and resumed, complete**: told (or dropped), resumed, nothing missing.",
        "* **max silence**: the longest an envelope sat in the journal before a viewer that was not told (nor "
        "dropped, nor reloading) received it; never received = until the end of the phase. Stalled viewers "
        "(which stop reading on purpose) are left out of it. **p99 lag**: the same wait, 99th percentile.",
        "* **turns accepted / in journal**: 2xx answers to `POST /api/v1/conversation/message` against turns "
        "whose `ENGINE_RETURN` reached the journal.",
        "* **one upstream per conversation**: the simulator's open streams sampled every 250 ms; opens = stream "
        "opens HQ counted during the phase.",
        "",
        "## Details per phase",
        "",
    ]
    for row in data["phases"]:
        if row.get("error"):
            continue
        lines.append(f"### {row['phase']}")
        lines.append("")
        lines.append(f"* fault: {row['fault']}")
        lines.append(
            f"* viewers by transport {row['by_kind']}; complete {row['viewers_complete']}; with loss "
            f"{row['viewers_with_loss']}; with duplicates {row['viewers_with_duplicates']}; told "
            f"{row['viewers_told']}; resumes {row['resumes']}; gave up {row['gave_up']}; out of order "
            f"{row['out_of_order']}; not in the journal {row['phantom']}"
        )
        lines.append(
            f"* churn {row['churn']}; still connected at the end {row['connected_at_end']}, of them behind the "
            f"journal {row['behind_at_end']} after {row['settle_s']} s of settling"
        )
        lines.append(f"* notices (what viewers were told, and drops): {row['notices']}")
        if row.get("lost"):
            lines.append(f"* lost envelopes by stage {row['lost_by_stage']}, by transport {row['lost_by_transport']}")
        if row.get("stalled_viewers"):
            lines.append(
                f"* stalled viewers {row['stalled_viewers']}: told {row['stalled_told']}, "
                f"envelopes they lost {row['stalled_lost']}"
            )
        lines.append(
            f"* turns accepted {row['turns_accepted']}, refused {row['turns_refused']}, at HQ {row['turns_at_hq']}, "
            f"in the journal {row['turns_in_journal']}"
        )
        lines.append(f"* journal per conversation {row['journal']}")
        lines.append(f"* upstreams {row['upstream']}; gateway logs {row['gateway_log']}")
        lines.append(f"* longest silences {row.get('silentest')}")
        if row.get("worst"):
            lines.append(f"* worst viewers {row['worst']}")
        lines.append("")
    return "\n".join(lines) + "\n"
