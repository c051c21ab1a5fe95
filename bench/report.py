"""Markdown report (tables) and PNG plot from bench/run.py's results; ``report.py results.json`` writes the report
again from the numbers alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness import table

TARGET_FLOOR = 0.90
TARGET_PEER = 5.0
TARGET_P99_MS = 10.0
TARGET_LOAD_S = 10.0  # first load of the scale configuration (JSON)
TARGET_WORKER_MB = 400.0


def _f(value: Any, fmt: str = "{:.0f}", none: str = "n/a") -> str:
    return none if value is None else fmt.format(value)


def _yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _peak(results: dict, key: str) -> float | None:
    return (results.get("peak", {}).get(key) or {}).get("median_rps")


def summary(results: dict) -> dict[str, Any]:
    tb, floor = _peak(results, "tokenbridge"), _peak(results, "floor")
    hydra, hydra_default = _peak(results, "hydra"), _peak(results, "hydra-default")
    ol = results.get("open_loop", {}).get("tokenbridge", {}).get("0.8", {})
    return {
        "tb": tb,
        "floor": floor,
        "hydra": hydra,
        "hydra_default": hydra_default,
        "floor_ratio": tb / floor if tb and floor else None,
        "peer_ratio": tb / hydra if tb and hydra else None,
        "peer_default_ratio": tb / hydra_default if tb and hydra_default else None,
        "p99_80": ol.get("p99_ms"),
    }


def verify_every_token_ratio(results: dict) -> float | None:
    """Tokenbridge/floor with no verified signature remembered: the variant's ratio to the default run beside it,
    times the default's ratio to the floor."""
    v = (results.get("peak") or {}).get("tokenbridge-verify-every-token") or {}
    ratio = summary(results)["floor_ratio"]
    if not v.get("median_rps") or not v.get("baseline_median_rps") or ratio is None:
        return None
    return v["median_rps"] / v["baseline_median_rps"] * ratio


def headline(results: dict) -> dict[str, float | None]:
    """The numbers a change is judged by, for the before/after table (kept in the next run's ``previous``)."""
    s = summary(results)
    ol = results.get("open_loop", {}).get("tokenbridge", {})
    abl = results.get("ablation") or {}
    scale = results.get("scale") or {}
    server = scale.get("server_json") or {}
    return {
        "Tokenbridge peak exchanges/s": s["tb"],
        "floor peak exchanges/s": s["floor"],
        "Tokenbridge / floor": s["floor_ratio"],
        "Tokenbridge verifying every token / floor": verify_every_token_ratio(results),
        "Tokenbridge / Ory Hydra (tuned)": s["peer_ratio"],
        "p99 at 50 % of peak (ms)": (ol.get("0.5") or {}).get("p99_ms"),
        "p99 at 80 % of peak (ms)": s["p99_80"],
        "in process: µs per exchange, full (p50)": (abl.get("full") or {}).get("p50_us"),
        "in process: µs per exchange, floor (p50)": (abl.get("floor") or {}).get("p50_us"),
        "scale: first load of 100,000 apps from JSON (s)": (scale.get("large_json") or {}).get("load_s"),
        "scale: serve --workers 2 ready after, JSON (s)": server.get("ready_s"),
        "scale: RSS per worker (MB)": max(server.get("worker_rss_mb") or [0]) or None,
    }


def before_after(results: dict) -> list[str]:
    """This run's headline beside the one of the run it replaced in the same directory."""
    prev = results.get("previous")
    if not prev:
        return []
    before, after = prev.get("source") or {}, results.get("source") or {}
    rows = [
        ["started", prev.get("started", "?"), results["started"]],
        ["commit", f"`{before.get('commit', '?')}`", f"`{after.get('commit', '?')}`"],
    ]
    for label, value in headline(results).items():
        old = (prev.get("headline") or {}).get(label)
        fmt = "{:.2f}" if (value or old or 0) < 10 else "{:.0f}"
        rows.append([label, _f(old, fmt), _f(value, fmt)])
    return ["## Before and after", "", *table(["", "before", "after"], rows)]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peaks = results.get("peak", {})
    order = [
        k
        for k in (
            "floor",
            "tokenbridge",
            "tokenbridge-verify-every-token",
            "tokenbridge-RS256",
            "tokenbridge-EdDSA",
            "tokenbridge-gthread",
            "tokenbridge-sync",
            "floor-gthread",
            "floor-sync",
            "hydra",
            "hydra-default",
        )
        if k in peaks
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    colors = {
        "floor": "#888888",
        "floor-gthread": "#bbbbbb",
        "floor-sync": "#bbbbbb",
        "hydra": "#d95f02",
        "hydra-default": "#f4a582",
    }
    xs = range(len(order))
    ax1.bar(xs, [peaks[k]["median_rps"] or 0 for k in order], color=[colors.get(k, "#1b9e77") for k in order])
    for x, k in zip(xs, order, strict=True):
        runs = [r["ok_rps"] for r in peaks[k]["runs"]]
        ax1.scatter([x] * len(runs), runs, color="black", s=10, zorder=3)
        ax1.text(x, (peaks[k]["median_rps"] or 0) * 1.01, f"{peaks[k]['median_rps']:.0f}", ha="center", fontsize=8)
    ax1.set_xticks(list(xs))
    ax1.set_xticklabels([k.replace("tokenbridge", "tb") for k in order], rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("exchanges/s (closed loop, median; dots: runs)")
    ax1.set_title("Peak throughput, 2 gunicorn workers / Hydra, same machine")

    ol = results.get("open_loop", {})
    keys = [k for k in ("floor", "tokenbridge", "tokenbridge-gthread", "hydra") if k in ol]
    width = 0.2
    for i, k in enumerate(keys):
        for j, (frac, stat) in enumerate([("0.5", "p50_ms"), ("0.5", "p99_ms"), ("0.8", "p50_ms"), ("0.8", "p99_ms")]):
            value = (ol[k].get(frac) or {}).get(stat)
            if value is None:
                continue
            ax2.bar(
                i + (j - 1.5) * width,
                value,
                width,
                color=["#a6cee3", "#1f78b4", "#fdbf6f", "#ff7f00"][j],
                label=f"{stat[:3]} at {float(frac):.0%} of own peak" if i == 0 else None,
            )
    ax2.axhline(TARGET_P99_MS, color="red", linestyle="--", linewidth=1, label="p99 target (10 ms)")
    ax2.set_xticks(range(len(keys)))
    ax2.set_xticklabels([k.replace("tokenbridge", "tb") for k in keys], fontsize=8)
    ax2.set_ylabel("latency from scheduled send, ms (open loop)")
    ax2.set_yscale("log")
    ax2.set_title("Latency at fixed arrival rates")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _target(label: str, value: float | None, shown: str, goal: str, ok: Any) -> list[str]:
    return [label, shown if value is not None else "n/a", goal, _yes(None if value is None else ok(value))]


def targets_table(results: dict) -> list[str]:
    s = summary(results)
    every = verify_every_token_ratio(results)
    sc = results.get("scale") or {}
    js, srv = sc.get("large_json") or {}, sc.get("server_json") or sc.get("server") or {}
    worst = max(srv.get("worker_rss_mb") or [0]) or None
    rows = [
        _target(
            "Tokenbridge / floor, peak exchanges/s",
            s["floor_ratio"],
            f"{_f(s['floor_ratio'], '{:.2f}')} ({_f(s['tb'])} / {_f(s['floor'])})",
            f"≥ {TARGET_FLOOR:.2f}",
            lambda v: v >= TARGET_FLOOR,
        ),
        _target(
            "Tokenbridge / Ory Hydra (jwt-bearer, fastest client-secret hashing)",
            s["peer_ratio"],
            f"{_f(s['peer_ratio'], '{:.2f}')}× ({_f(s['tb'])} / {_f(s['hydra'])})",
            f"≥ {TARGET_PEER:.0f}×",
            lambda v: v >= TARGET_PEER,
        ),
        _target(
            "Tokenbridge / Ory Hydra with its default client-secret hashing",
            s["peer_default_ratio"],
            f"{_f(s['peer_default_ratio'], '{:.1f}')}× ({_f(s['tb'])} / {_f(s['hydra_default'])})",
            f"≥ {TARGET_PEER:.0f}×",
            lambda v: v >= TARGET_PEER,
        ),
        _target(
            "the same as the first, every subject token's signature verified (estimated from the variant)",
            every,
            _f(every, "{:.2f}"),
            f"≥ {TARGET_FLOOR:.2f}",
            lambda v: v >= TARGET_FLOOR,
        ),
        _target(
            "Tokenbridge p99 at 80 % of its peak (open loop)",
            s["p99_80"],
            f"{_f(s['p99_80'], '{:.2f}')} ms",
            f"≤ {TARGET_P99_MS:.0f} ms",
            lambda v: v <= TARGET_P99_MS,
        ),
        _target(
            f"scale: first load of {sc.get('applications', 0):,} applications from JSON",
            js.get("load_s"),
            f"{_f(js.get('load_s'), '{:.1f}')} s",
            f"≤ {TARGET_LOAD_S:.0f} s",
            lambda v: v <= TARGET_LOAD_S,
        ),
        _target(
            "scale: RSS per worker of `tokenbridge serve --workers 2`",
            worst,
            f"{_f(worst)} MB",
            f"≤ {TARGET_WORKER_MB:.0f} MB",
            lambda v: v <= TARGET_WORKER_MB,
        ),
    ]
    return table(["target", "measured", "goal", ""], rows)


def _mem_row(label: str, mem: dict) -> list[str]:
    if "workers" in mem:
        return [
            label,
            ", ".join(_f(w.get("rss_mb")) for w in mem["workers"]),
            ", ".join(_f(w.get("pss_mb")) for w in mem["workers"]),
            _f(mem["master"].get("rss_mb")),
        ]
    p = mem.get("process", {})
    return [label, f"{_f(p.get('rss_mb'))} (one Go process)", _f(p.get("pss_mb")), "—"]


VARIANTS = (
    "tokenbridge-verify-every-token",
    "tokenbridge-RS256",
    "tokenbridge-EdDSA",
    "tokenbridge-gthread",
    "tokenbridge-sync",
)


def profile_tables(prof: dict) -> list[str]:
    labels = list(dict.fromkeys(label for p in prof.values() for label in p.get("inclusive_pct", {})))
    locks = list(dict.fromkeys(leaf for p in prof.values() for leaf in p.get("lock_wait_pct", {})))
    rows = [
        [label, *(_f(p.get("inclusive_pct", {}).get(label), "{:.1f} %", "—") for p in prof.values())]
        for label in labels
    ]
    rows += [
        [
            f"threads blocked in `{leaf}`",
            *(_f(p.get("lock_wait_pct", {}).get(leaf), "{:.1f} %", "—") for p in prof.values()),
        ]
        for leaf in locks
    ]
    own = [
        [key, f"`{name}`", f"{share} %"] for key, p in prof.items() for name, share in p.get("own_inclusive_pct", [])
    ]
    top = [
        [key, f"`{name}`", f"{share} %"] for key, p in prof.items() for name, share in p.get("top_self_pct", [])[:10]
    ]
    return [
        *table(["frames anywhere on the stack", *prof], rows),
        *table(["server", "Tokenbridge's own function (inclusive)", "share"], own),
        *table(["server", "frame (self time)", "share"], top),
    ]


def write(results: dict, out_dir: Path) -> Path:
    """``report.md``: tables only; how each number is measured is in bench/README.md."""
    out_dir = Path(out_dir)
    s = summary(results)
    m, plan, src = results["machine"], results["plan"], results.get("source") or {}
    targets, peaks = results.get("targets", {}), results.get("peak", {})
    ol = results.get("open_loop", {})
    L = [
        "# Tokenbridge benchmarks",
        "",
        "Written by `bench/run.py` (`make bench`); what each number measures: `bench/README.md`. Raw numbers: "
        "`results.json`; plot: `bench.png`; server logs: `logs/`.",
        "",
        *table(
            [
                "started",
                "run",
                "seconds in all",
                "waited for tests (s)",
                "measurements started while tests ran",
                "commit",
                "code measured",
            ],
            [
                [
                    results["started"],
                    "quick (indicative only)" if results["quick"] else "full",
                    results["elapsed_s"],
                    results.get("waited_for_tests_s", 0),
                    results.get("runs_while_tests_ran", 0),
                    f"`{src.get('commit')}` {src.get('subject', '')}",
                    "HEAD exported from git (`--committed`)"
                    if src.get("committed_tree")
                    else f"work tree, {src.get('uncommitted_server_changes_in_work_tree')} uncommitted server files",
                ]
            ],
        ),
        "## Machine",
        "",
        *table(
            ["", ""],
            [
                [k, m[k]]
                for k in (
                    "nproc",
                    "cpu",
                    "memory",
                    "kernel",
                    "python",
                    "go",
                    "hydra",
                    "wrk",
                    "falcon",
                    "pyjwt",
                    "gunicorn",
                    "cryptography",
                )
                if k in m
            ],
        ),
        "## Results against the targets",
        "",
        *targets_table(results),
        *table(
            ["paired ratio", "median", "per round"],
            [
                [f"tokenbridge / {k}", f"{v['median']:.2f}", ", ".join(f"{x:.2f}" for x in v["per_round"])]
                for k, v in (results.get("paired_ratios") or {}).items()
                if v.get("median")
            ],
        ),
        "![benchmark plot](bench.png)",
        "",
        *before_after(results),
        "## What was measured",
        "",
        *table(
            ["server", "what", "issued tokens", "request bytes", "response bytes"],
            [
                [
                    key,
                    info["label"],
                    *(
                        info.get("notes", {}).get("sanity", {}).get(k, "?")
                        for k in ("issued_alg", "request_bytes", "response_bytes")
                    ),
                ]
                for key, info in targets.items()
            ],
        ),
        *table(
            ["IdentityProviders", "OAuthApplications", "manifests MB", "default worker class", *plan],
            [
                [
                    (results.get("config") or {}).get("identity_providers"),
                    (results.get("config") or {}).get("applications"),
                    _f((results.get("config") or {}).get("manifest_bytes", 0) / 1e6, "{:.1f}"),
                    results.get("default_worker_class", "gevent"),
                    *plan.values(),
                ]
            ],
        ),
        "## Peak throughput (closed loop)",
        "",
        *table(
            ["server", "median exchanges/s", "runs († unbalanced)", "errors", "wrk p50 / p99 ms"],
            [
                [
                    key,
                    _f(p["median_rps"]),
                    ", ".join(f"{r['ok_rps']:.0f}" + ("" if r.get("balanced", True) else "†") for r in p["runs"]),
                    sum(r["errors"] for r in p["runs"]),
                    f"{_median([r['p50_us'] for r in p['runs']]) / 1000:.1f} / "
                    f"{_median([r['p99_us'] for r in p['runs']]) / 1000:.1f}",
                ]
                for key, p in peaks.items()
            ],
        ),
        "## Latency at fixed arrival rates (open loop)",
        "",
        *table(
            [
                "server",
                "rate (/s)",
                "p50 ms",
                "p99 ms",
                "service p50 / p99 ms",
                "non-200",
                "errors/missing",
                "generator CPU (share of a core)",
            ],
            [
                [
                    key,
                    f"{v['rate']:.0f} ({float(frac):.0%})",
                    _f(v["p50_ms"], "{:.2f}"),
                    _f(v["p99_ms"], "{:.2f}"),
                    f"{_median([r['service_p50_ms'] or 0 for r in v['runs']]):.2f} / "
                    f"{_median([r['service_p99_ms'] or 0 for r in v['runs']]):.2f}",
                    v["non200"],
                    v["errors"],
                    f"{sum(r['generator_cpu_s'] for r in v['runs']) / sum(r['duration'] + 1 for r in v['runs']):.0%}",
                ]
                for key, by_frac in ol.items()
                for frac, v in by_frac.items()
            ],
        ),
        "## Memory (after the open-loop runs)",
        "",
        *table(
            ["server", "RSS per worker (MB)", "PSS per worker (MB)", "master RSS (MB)"],
            [_mem_row(key, mem) for key, mem in results.get("memory", {}).items()],
        ),
        "## Variants, each beside a fresh run of the default",
        "",
        *table(
            ["variant", "median exchanges/s", "default beside it", "ratio", "p99 at 50 % / 80 % of own peak (ms)"],
            [
                [
                    targets.get(key, {}).get("label", key),
                    f"{peaks[key]['median_rps']:.0f}",
                    f"{peaks[key]['baseline_median_rps']:.0f}",
                    f"{peaks[key]['median_rps'] / peaks[key]['baseline_median_rps']:.2f}",
                    " / ".join(
                        _f((ol.get(key, {}).get(frac) or {}).get("p99_ms"), "{:.1f}") for frac in ("0.5", "0.8")
                    ),
                ]
                for key in VARIANTS
                if key in peaks
            ]
            + [
                [
                    f"{targets.get(key, {}).get('label', key)} vs the floor's default",
                    f"{peaks[key]['median_rps']:.0f}",
                    _f(s["floor"]),
                    _f(s["floor"] and peaks[key]["median_rps"] / s["floor"], "{:.2f}"),
                    "",
                ]
                for key in ("floor-gthread", "floor-sync")
                if key in peaks
            ],
        ),
    ]
    prof = results.get("profile") or {}
    if prof:
        L += ["## Where the time goes (py-spy, shares of the workers' non-idle samples)", "", *profile_tables(prof)]
    abl = results.get("ablation") or {}
    if abl:
        full = (abl.get("full") or {}).get("p50_us")
        L += [
            "## Ablation: the app's own cost per exchange, in process",
            "",
            *table(
                ["variant", "p50 µs / exchange", "mean µs", "vs full (p50)", "statuses"],
                [
                    [variant, "failed", "", "", f"`{v['error'][-200:]}`"]
                    if "error" in v
                    else [
                        variant,
                        f"{v['p50_us']:.0f}",
                        f"{v['mean_us']:.0f}",
                        f"{v['p50_us'] - full:+.0f} µs" if full and variant != "full" else "",
                        v["statuses"],
                    ]
                    for variant, v in abl.items()
                ],
            ),
        ]
    scale = results.get("scale")
    if scale:
        import scale as scale_module

        L += [
            "## Scale",
            "",
            *(
                ["The scale run failed:", "", f"```\n{scale['error'][-800:]}\n```", ""]
                if "error" in scale
                else scale_module.markdown(scale)
            ),
        ]
    calls = out_dir / "library_calls.json"
    if calls.exists():  # bench/library_calls.py: the library calls' cost beside their floors, before and after
        import library_calls

        section = library_calls.markdown(json.loads(calls.read_text())).split("\n", 1)[1]
        L += ["## Library calls beside their floors", *section.splitlines()]
    build = results.get("peer_build", {})
    env = (targets.get("hydra", {}).get("notes", {}).get("env")) or {}
    L += [
        "## The peer: Ory Hydra (set-up: `bench/README.md`)",
        "",
        *table(["build", "start error"], [[build.get("status"), build.get("start_error", "")[:800]]]),
        *table(["environment variable", "value"], [[f"`{k}`", f"`{v}`"] for k, v in env.items()]),
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(L))
    return path


if __name__ == "__main__":
    res_path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "results.json")
    print(write(json.loads(res_path.read_text()), res_path.parent))
