"""Results → verdicts against issue 7's targets, a markdown table and a PNG chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.targets import SINGLE_OF, TARGETS

TRAFFIC = ("wide", "fast", "many", "upstream-heavy")
BASELINE_OF = {"stomp": "ws-baseline", "sockjs": "ws-baseline", "sse": "sse-baseline"}


def _get(results: dict[str, Any], scenario: str, target: str, key: str) -> Any:
    return results.get(scenario, {}).get(target, {}).get(key)


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b and not math.isnan(a) and not math.isnan(b):
        return round(a / b, 2)
    return None


def _baseline(target: str) -> str | None:
    t = TARGETS.get(target)
    if t is None or t.server != "gateway":
        return None
    return BASELINE_OF[t.kind]


def verdicts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of issue 7: what was measured, met / missed / not measured."""
    res = data["results"]
    rows: list[dict[str, Any]] = []

    def row(goal: str, value: Any, ok: bool | None, detail: str = "") -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "MISSED")
        rows.append({"target": goal, "measured": value, "verdict": verdict, "detail": detail})

    p99 = _get(res, "wide", "gateway-stomp", "p99_ms")
    others = "; ".join(
        f"{t} {_get(res, 'wide', t, 'p99_ms')} ms (deltas only {_get(res, 'wide', t, 'p99_delta_ms')} ms)"
        for t in ("gateway-stomp", "gateway-sockjs", "gateway-sse", "ws-baseline", "sse-baseline")
        if _get(res, "wide", t, "p99_ms") is not None
    )
    viewers = _get(res, "wide", "gateway-stomp", "viewers")
    row(
        "p99 ≤ 10 ms, wide (1,000 viewers, 20 events/s), STOMP-WS",
        None if p99 is None else f"{p99} ms ({viewers} viewers)",
        None if p99 is None else p99 <= 10,
        others,
    )

    for scenario in TRAFFIC:
        ws = _ratio(
            _get(res, scenario, "gateway-stomp", "cpu_us_per_delivery"),
            _get(res, scenario, "ws-baseline", "cpu_us_per_delivery"),
        )
        if ws is not None or scenario == "wide":
            row(
                f"CPU per STOMP delivery ≤ 1.5x bare websockets ({scenario})",
                None if ws is None else f"{ws}x",
                None if ws is None else ws <= 1.5,
            )
    for scenario in TRAFFIC:
        rabbit = _ratio(
            _get(res, scenario, "gateway-stomp", "cpu_us_per_delivery"),
            _get(res, scenario, "rabbitmq", "cpu_us_per_delivery"),
        )
        if rabbit is not None or scenario == "wide":
            row(
                f"CPU per STOMP delivery ≤ RabbitMQ Web-STOMP ({scenario})",
                None if rabbit is None else f"{rabbit}x",
                None if rabbit is None else rabbit <= 1.0,
            )

    for target, limit in (("gateway-stomp", 30), ("gateway-sse", 15)):
        kib = _get(res, "idle", target, "kib_per_viewer")
        row(
            f"≤ {limit} KiB RSS per idle {TARGETS[target].label} viewer",
            None if kib is None else f"{kib} KiB",
            None if kib is None else kib <= limit,
        )

    idle = {
        t: (_get(res, "idle", t, "viewers"), _get(res, "idle", t, "failed")) for t in TARGETS if t.startswith("gateway")
    }
    measured = {t: v for t, v in idle.items() if v[0] is not None}
    if measured:
        top = max(v[0] for v in measured.values())
        ok = all(v[0] >= 10_000 and not v[1] for v in measured.values())
        note = "" if top >= 10_000 else f"this run connected {top} per transport; run --full for 10,000"
        row(
            "10,000 concurrent idle viewers on one process",
            ", ".join(f"{t} {v[0]} (failed {v[1]})" for t, v in measured.items()),
            ok if top >= 10_000 else None,
            note,
        )
    else:
        row("10,000 concurrent idle viewers on one process", None, None)

    heavy = res.get("upstream-heavy", {}).get("gateway-stomp")
    if heavy:
        ok = heavy["conversations"] >= 1000 and not heavy.get("missing") and not heavy.get("gaps")
        row(
            "1,000 active conversations on one process",
            f"{heavy['conversations']} conversations, {heavy.get('deliveries_per_s')} deliveries/s, "
            f"p99 {heavy.get('p99_ms')} ms, missing {heavy.get('missing')}",
            ok,
        )
    else:
        row("1,000 active conversations on one process", None, None)

    cluster_rows(res, row)

    bad: list[str] = []
    checked = 0
    for scenario, per_target in res.items():
        for target, result in per_target.items():
            if not _ours(target) or not isinstance(result, dict) or "upstreams" not in result:
                continue
            up = result["upstreams"]
            checked += 1
            if up["exactly_one_open"] != up["conversations"] or up["opened_once"] != up["conversations"]:
                bad.append(f"{scenario}/{target}: {up}")
    row(
        "exactly one upstream per active conversation, every scenario",
        f"{checked} checks, {len(bad)} failed",
        None if not checked else not bad,
        "; ".join(bad[:3]),
    )

    faults: list[str] = []
    for scenario, per_target in res.items():
        for target, result in per_target.items():
            if not isinstance(result, dict) or not _ours(target):
                continue
            parts = {"": result}
            if scenario == "slow-mobile":
                parts = {f" {name}": result[name] for name in ("all-fast", "coalesce", "no-coalesce") if name in result}
            for label, part in parts.items():
                keys = ("gaps", "duplicates", "missing", "fast_gaps", "fast_duplicates", "fast_missing")
                counts = {k: part[k] for k in keys if part.get(k)}
                if counts:
                    faults.append(f"{scenario}/{target}{label}: {counts}")
    row(
        "zero gaps or duplicates (nothing missing), every gateway scenario",
        f"{len(faults)} with faults",
        not faults,
        "; ".join(faults[:4]),
    )
    return rows


def _ours(target: str) -> bool:
    """A gateway target: one process or a cluster."""
    return target.startswith(("gateway", "cluster"))


def _point(res: dict[str, Any], target: str, viewers: int) -> dict[str, Any]:
    points = res.get("cluster", {}).get(target, {}).get("points", [])
    return next((p for p in points if p.get("viewers") == viewers), {})


def cluster_rows(res: dict[str, Any], row: Any) -> None:
    """Issue 14: cluster CPU per delivery ≤ 1.3x the single process; p99 at 1,000 viewers ≤ 1.5x."""
    if not res.get("cluster"):
        return
    for cluster, single in SINGLE_OF.items():
        if cluster not in res["cluster"] or single not in res["cluster"]:
            continue
        steps = [p["viewers"] for p in res["cluster"][cluster].get("points", [])]
        ratios = {
            v: _ratio(
                _point(res, cluster, v).get("cpu_us_per_delivery"), _point(res, single, v).get("cpu_us_per_delivery")
            )
            for v in steps
        }
        measured = ", ".join(f"{v} viewers {r}x" for v, r in ratios.items())
        known = [r for r in ratios.values() if r is not None]
        row(
            f"cluster CPU per delivery ≤ 1.3x single process ({cluster} vs {single}, all gateways + redis-server)",
            measured or None,
            None if not known else all(r <= 1.3 for r in known),
        )
        p99 = _ratio(_point(res, cluster, 1000).get("p99_ms"), _point(res, single, 1000).get("p99_ms"))
        row(
            f"cluster p99 at 1,000 viewers ≤ 1.5x single process ({cluster} vs {single})",
            None
            if p99 is None
            else f"{p99}x ({_point(res, cluster, 1000).get('p99_ms')} vs {_point(res, single, 1000).get('p99_ms')} ms)",
            None if p99 is None else p99 <= 1.5,
        )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    res = data["results"]
    m = data["machine"]
    out = [
        f"# Fan-out benchmark — {data['date']}",
        "",
        f"Machine: {m['cpus']} CPU ({m['cpu_model']}), {m['mem_gib']} GiB, Linux {m['kernel']}, Python {m['python']}. "
        f"Gateway revision `{data.get('revision', 'unknown')}`. "
        f"Mode `{data['mode']}`, medians of {data['plan']['repeat']} repeats, {data['elapsed_s']:.0f} s in all; "
        f"load average {m['load_before']:.2f} before, {m['load_after']:.2f} after.",
        "",
        "## Targets (issue 7)",
        "",
        "| target | measured | verdict | detail |",
        "|---|---|---|---|",
    ]
    out += [f"| {v['target']} | {_fmt(v['measured'])} | {v['verdict']} | {v['detail']} |" for v in data["verdicts"]]
    for scenario in TRAFFIC:
        if not res.get(scenario):
            continue
        out += [
            "",
            f"## {scenario}",
            "",
            "| target | viewers x conv | deliveries/s | p50 ms | p99 ms | p99 deltas ms | max ms | CPU µs/delivery | "
            "vs bare | vs RabbitMQ | server CPU % | gaps/dup/missing | one upstream each |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for target, r in res[scenario].items():
            base = _baseline(target)
            vs_bare = (
                _ratio(r.get("cpu_us_per_delivery"), _get(res, scenario, base, "cpu_us_per_delivery")) if base else None
            )
            vs_rabbit = _ratio(r.get("cpu_us_per_delivery"), _get(res, scenario, "rabbitmq", "cpu_us_per_delivery"))
            up = r.get("upstreams", {})
            one = f"{up.get('exactly_one_open')}/{up.get('conversations')}" if up else "-"
            out.append(
                f"| {target} | {r.get('viewers')} x {r.get('conversations')} | {_fmt(r.get('deliveries_per_s'))} | "
                f"{_fmt(r.get('p50_ms'))} | {_fmt(r.get('p99_ms'))} | {_fmt(r.get('p99_delta_ms'))} | "
                f"{_fmt(r.get('max_ms'))} | "
                f"{_fmt(r.get('cpu_us_per_delivery'))} | {_fmt(vs_bare) + 'x' if vs_bare else '-'} | "
                f"{_fmt(vs_rabbit) + 'x' if vs_rabbit and target != 'rabbitmq' else '-'} | "
                f"{_fmt(r.get('server_cpu_pct'))} | "
                f"{r.get('gaps', 0)}/{r.get('duplicates', 0)}/{r.get('missing', 0)} | {one} |"
            )
    if res.get("cluster"):
        out += [
            "",
            "## cluster (issue 14): 2 gateways + redis-server beside the single memory-mode process",
            "",
            "One conversation at 20 events/s; cluster viewers split evenly over the 2 gateways; cluster CPU = both "
            "gateways + redis-server.",
            "",
            "| target | viewers | processes | deliveries/s | p50 ms | p99 ms | p99 deltas ms | CPU µs/delivery | "
            "vs single | CPU % | gaps/dup/missing | stale/closed |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for target, r in res["cluster"].items():
            for p in r.get("points", []):
                single = SINGLE_OF.get(target)
                vs = (
                    _ratio(p.get("cpu_us_per_delivery"), _point(res, single, p["viewers"]).get("cpu_us_per_delivery"))
                    if single
                    else None
                )
                out.append(
                    f"| {target} | {p.get('viewers')} | {r.get('processes')} | {_fmt(p.get('deliveries_per_s'))} | "
                    f"{_fmt(p.get('p50_ms'))} | {_fmt(p.get('p99_ms'))} | {_fmt(p.get('p99_delta_ms'))} | "
                    f"{_fmt(p.get('cpu_us_per_delivery'))} | {_fmt(vs) + 'x' if vs else '-'} | "
                    f"{_fmt(p.get('server_cpu_pct'))} | "
                    f"{p.get('gaps', 0)}/{p.get('duplicates', 0)}/{p.get('missing', 0)} | "
                    f"{p.get('stale', 0)}/{p.get('closed', 0)} |"
                )
    if res.get("idle"):
        out += [
            "",
            "## idle",
            "",
            "| target | viewers (failed) | KiB RSS per viewer | vs bare | RSS MiB | idle CPU % | connects/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for target, r in res["idle"].items():
            base = _baseline(target)
            vs = _ratio(r.get("kib_per_viewer"), _get(res, "idle", base, "kib_per_viewer")) if base else None
            out.append(
                f"| {target} | {r.get('viewers')} ({r.get('failed')}) | {_fmt(r.get('kib_per_viewer'))} | "
                f"{_fmt(vs) + 'x' if vs else '-'} | {_fmt(r.get('rss_mib'))} | {_fmt(r.get('idle_cpu_pct'))} | "
                f"{_fmt(r.get('connects_per_s'))} |"
            )
    slow = next(iter(res.get("slow-mobile", {}).values()), None)
    if slow:
        out += [
            "",
            "## slow-mobile (issue 10)",
            "",
            f"{slow['viewers']} viewers of one conversation over {slow['transport']}, {slow['slow_viewers']} of them "
            f"reading at {slow['slow_read_kib_s']:g} KiB/s; one turn of {slow['deltas']} deltas at "
            f"{slow['rate_per_s']:g}/s. Frames and KiB are per slow viewer (median); catch-up = the turn's last "
            "envelope emitted → received by a slow viewer.",
            "",
            "| variant | envelopes | slow frames | slow KiB | caught up | cut loose | progress % at cap | "
            "catch-up s (median / max) | fast p50 ms | fast p99 ms | fast p99 vs all-fast |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in ("all-fast", "coalesce", "no-coalesce"):
            r = slow.get(name, {})
            out.append(
                f"| {name} | {_fmt(r.get('envelopes'))} | {_fmt(r.get('slow_frames'))} | {_fmt(r.get('slow_kib'))} | "
                f"{_fmt(r.get('slow_caught_up'))} | {_fmt(r.get('slow_cut_loose'))} | "
                f"{_fmt(r.get('slow_progress_pct'))} | "
                f"{_fmt(r.get('slow_catch_up_s'))} / {_fmt(r.get('slow_catch_up_max_s'))} | "
                f"{_fmt(r.get('fast_p50_ms'))} | {_fmt(r.get('fast_p99_ms'))} | "
                f"{_fmt(r.get('fast_p99_vs_all_fast'))} |"
            )
    for name, prof in data.get("profiles", {}).items():
        out += [
            "",
            f"## profile: {name} ({prof.get('target', 'gateway-stomp')}, py-spy, {prof['samples']} samples, "
            f"flame graph `{prof['svg']}`)",
            "",
            "| self % | function |",
            "|---|---|",
        ]
        out += [f"| {pct} | `{fn}` |" for fn, pct in prof["self"][:12]]
        out += ["", "| self % by file | file |", "|---|---|"]
        out += [f"| {pct} | `{fn}` |" for fn, pct in prof["self_by_file"][:10]]
        out += ["", "| inclusive % | gateway function |", "|---|---|"]
        out += [f"| {pct} | `{fn}` |" for fn, pct in prof.get("inclusive_gateway", [])[:10]]
    if data.get("notes"):
        out += ["", "## Notes", ""] + [f"* {n}" for n in data["notes"]]
    return "\n".join(out) + "\n"


def chart(data: dict[str, Any], path: Path) -> bool:
    """Latency percentiles vs viewers (wide) and CPU per delivery per target; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    res = data["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    for target, r in res.get("wide", {}).items():
        curve = r.get("curve") or []
        xs = [p["viewers"] for p in curve]
        line = left.plot(xs, [p["p99_ms"] for p in curve], marker="o", label=f"{target} p99")[0]
        left.plot(
            xs, [p["p50_ms"] for p in curve], marker=".", linestyle="--", color=line.get_color(), label=f"{target} p50"
        )
    left.axhline(10, color="grey", linewidth=0.8, linestyle=":")
    left.set_yscale("log")
    left.set_xscale("log")
    left.set_xlabel("viewers of one conversation (20 events/s)")
    left.set_ylabel("latency emit → viewer, ms")
    left.set_title("wide: latency percentiles vs viewers")
    left.legend(fontsize=7, ncol=2)
    scenarios = [s for s in TRAFFIC if res.get(s)]
    targets = [t for t in TARGETS if any(t in res.get(s, {}) for s in scenarios)]
    width = 0.8 / max(1, len(targets))
    for i, target in enumerate(targets):
        values = [_get(res, s, target, "cpu_us_per_delivery") or 0 for s in scenarios]
        right.bar([j + i * width for j in range(len(scenarios))], values, width, label=target)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))], scenarios)
    right.set_ylabel("server CPU µs per delivered message")
    right.set_title("CPU per delivery per target")
    right.legend(fontsize=7)
    fig.suptitle(f"hq-gateway fan-out benchmark {data['date']} ({data['machine']['cpus']} CPU, mode {data['mode']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
