"""Plans and backtests as markdown (presentation: reads the dicts fitting/plan.py and
fitting/backtest.py return, computes nothing).

    from flopscale.fitting.outlook_report import plan_markdown, backtest_markdown, outlook_section
    print(plan_markdown(plan))          # one plan: N_opt, D_opt, shape, batch, lr, steps, loss, guards
    print(backtest_markdown(bt))        # MAPE, bias, coverage of the 90% interval, allocation exponent
    outlook_section(payload)            # report.md's lines for fits.json "outlook" (sweeps only)

`flopscale plan` and `flopscale backtest` print the first two; report.md ends with the third.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from .numbers import fmt


def _g(v, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_g(x) for x in v) + "]"
    return (fmt(v, ".4g") if isinstance(v, float) else f"{v}") + unit


def plan_markdown(p: Dict, title: Optional[str] = None) -> str:
    """A markdown section for a plan dict (report.md, or `flopscale plan` text output)."""
    lines = [f"### {title or 'Plan at C = ' + _g(p['budget'])}", "", f"Source: {p['source']}.", ""]
    m = p.get("model")
    rows = [("N_opt", _g(p["N_opt"]), p["sources"].get("N_opt, D_opt", "")),
            ("D_opt (tokens)", _g(p["D_opt"]), ""), ("tokens per parameter", _g(p["tokens_per_param"]), "")]
    if p.get("epochs") is not None:
        rows.append(("epochs over the unique tokens", _g(p["epochs"]), p["sources"].get("data-constrained", "")))
    if m:
        rows.append(("model", f"n_layer {m['n_layer']}, d_model {m['d_model']}, n_heads {m['n_heads']}, d_ff {m['d_ff']}"
                     f" (N {m['N']:,}, aspect {m['aspect']:.3g})", p["sources"].get("model", "")))
    rows += [("batch", f"{p['batch_size']} x {p['n_ctx']} = {p['batch_size_tokens']:,} tokens",
              p["sources"].get("batch_size_tokens", "")),
             ("lr", _g(p["lr"]), p["sources"].get("lr", "")),
             ("steps / warmup", f"{p['steps']:,} / {p['warmup_steps']:,} ({p['schedule']})", p["sources"].get("warmup_steps", "")),
             ("loss", f"{_g(p['loss']['value'])} (90% PI {_g(p['loss']['pi90'])})", p["loss"]["pi90_method"]),
             ("wall time", "—" if p["wall_time_s"] is None else f"{p['wall_time_s'] / 3600:.3g} h",
              (p.get("throughput") or {}).get("source", "no throughput given"))]
    cmp_ = p["compute"]
    rows.append(("compute", f"law {cmp_['law']} ({cmp_['N_counts']}): {_g(cmp_['C_law'])}"
                 + (f"; exact non-embedding {_g(cmp_['C_nonembedding'])}, all {_g(cmp_['C_all'])}" if "C_all" in cmp_ else ""), ""))
    lines += ["| quantity | value | from |", "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "Guards:", ""] + [f"- {'**WARN** ' if g['warn'] else ''}{g['name']}: {g['message']}" for g in p["guards"]]
    if p.get("warnings"):
        lines += [""] + [f"- note: {w}" for w in p["warnings"]]
    return "\n".join(lines) + "\n"


def backtest_markdown(bt: Dict, title: Optional[str] = None) -> str:
    a = bt["allocation_exponent"]
    f = lambda v: fmt(v, ".4g")
    lines = [f"### {title or 'Backtest of ' + bt['law'] + ': ' + bt['split']['rule']}", "",
             f"Fitted on {bt['n_train']} points, predicted {bt['n_test']}; errors in percent of the observed "
             f"{bt['target']}.", "",
             "| MAPE % | bias % | max abs % | coverage of 90% PI | a (split) | a (full) | change |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| {bt['mape']:.3g} | {bt['bias']:+.3g} | {bt['max_abs_pct_err']:.3g} | {100 * bt['coverage90']:.0f}% "
             f"({bt['n_test']} points) | {f(a['split'])} | {f(a['full'])} | {f(a['change'])} |", "",
             f"Intervals: {bt['pi_method']}.", ""]
    lines += [f"- {'**WARN** ' if g['warn'] else ''}{g['message']}" for g in bt["guards"]]
    return "\n".join(lines) + "\n"


def outlook_section(payload: dict) -> List[str]:
    """The study's outlook (payload["outlook"], sweeps only): plans beyond its largest budget and a
    backtest of that budget from the smaller ones."""
    o = payload.get("outlook")
    if not o:
        return []
    md = ["## Beyond the study: plans at 10x and 100x its largest budget, and a backtest", ""]
    for p in o.get("plans", []):
        md.append(plan_markdown(p))
    if "plans_skipped" in o:
        md += [f"No plan: {o['plans_skipped']}.", ""]
    if "backtest" in o:
        md.append(backtest_markdown(o["backtest"], title="Backtest: the largest budget predicted from the smaller ones"))
    if "backtest_skipped" in o:
        md += [f"No backtest: {o['backtest_skipped']}.", ""]
    return md
