"""Figures and text of ``bench.redis_cost``: per job (per second for the idle rates), what is measured apart
from what is attributed or estimated."""

from __future__ import annotations

from typing import Any

from bench.redis_phases import BACKGROUND, Split
from bench.redis_trace import Window


def _r(x: float, digits: int = 2) -> float:
    return round(x, digits)


class IdleRates:
    """What Redis did per second while no job ran: commands sent (by phase), executed, CPU."""

    def __init__(self, window: Window, split: Split) -> None:
        s = max(window.seconds, 1e-9)
        self.seconds = window.seconds
        self.sent_per_s = split.sent / s
        self.executed_per_s = window.executed_total / s
        self.cpu_us_per_s = window.cpu_us / s
        self.phases = {n: (p.sent / s, p.executed / s) for n, p in split.phases.items() if p.sent}
        self.split = split

    def report(self) -> dict[str, Any]:
        return {"seconds": _r(self.seconds), "sent_per_s": _r(self.sent_per_s), "executed_per_s":
                _r(self.executed_per_s), "cpu_us_per_s": _r(self.cpu_us_per_s, 1),
                "phases": {n: {"sent_per_s": _r(a), "executed_per_s": _r(b)} for n, (a, b) in self.phases.items()},
                "items_per_s": {n: {k: _r(v / max(self.seconds, 1e-9)) for k, v in p.items.most_common()}
                                for n, p in self.split.phases.items() if p.sent}}


def _top(window: Window, n: int, k: int = 10) -> dict[str, float]:
    return {name: _r(calls / n) for name, calls in window.executed.most_common(k)}


def _totals(window: Window, ok: int, n: int, idle: IdleRates) -> dict[str, Any]:
    """Measured totals of one pass, and the same less the idle rates × the window (net of idle)."""
    t = window.seconds
    return {"window_s": _r(t), "succeeded": ok, "executed_per_job": _r(window.executed_total / n),
            "cpu_us_per_job": _r(window.cpu_us / n, 1),
            "executed_per_job_net_of_idle": _r((window.executed_total - idle.executed_per_s * t) / n),
            "cpu_us_per_job_net_of_idle": _r((window.cpu_us - idle.cpu_us_per_s * t) / n, 1),
            "executed_top_per_job": _top(window, n)}


def _phases(split: Split, window: Window, n: int, idle: IdleRates) -> dict[str, Any]:
    exec_us = sum(p.us for p in split.phases.values())
    outside = window.cpu_us - exec_us  # CPU not inside any command: I/O, parsing, event loop, cron, slowlog
    out: dict[str, Any] = {}
    for name, p in split.phases.items():
        rates = idle.phases.get(name, (0.0, 0.0))
        if not p.sent and not rates[0]:
            continue
        share = outside * p.sent / split.sent if split.sent else 0.0
        out[name] = {"sent": _r(p.sent / n, 3), "executed": _r(p.executed / n, 3), "lua_inner": _r(p.inner / n, 3),
                     "inferred": _r(p.inferred / n, 3), "exec_us": _r(p.us / n, 1),
                     "cpu_us_est": _r((p.us + share) / n, 1), "idle_sent_per_s": _r(rates[0]),
                     "idle_executed_per_s": _r(rates[1]), "background": name in BACKGROUND,
                     "counts": {"sent": p.sent, "executed": p.executed, "lua_inner": p.inner, "inferred": p.inferred,
                                "exec_us": p.us},
                     "items": {k: _r(v / n, 3) for k, v in p.items.most_common()}}
    return out


def run_report(name: str, what: str, n: int, untraced: tuple[Window, int] | None, traced: tuple[Window, int],
               split: Split, idle: IdleRates) -> dict[str, Any]:
    """One run's figures, per job. Measured: the totals, sent / executed / Lua inner counts and execution µs
    per phase. Attributed: the phase of each command. Inferred: ``inferred`` counts. Estimated: ``cpu_us_est``."""
    window, ok = traced
    exec_us = sum(p.us for p in split.phases.values())
    inner = sum(p.inner for p in split.phases.values())
    traced_totals = {**_totals(window, ok, n, idle), "sent_per_job": _r(split.sent / n),
                     "sent_per_job_net_of_idle": _r((split.sent - idle.sent_per_s * window.seconds) / n),
                     "lua_inner_per_job": _r(inner / n), "exec_us_per_job": _r(exec_us / n, 1),
                     "counts": {"sent": split.sent, "executed": window.executed_total, "lua_inner": inner}}
    checks = {"unexplained": split.unexplained, "mismatch": split.mismatch, "lua_orphans": split.orphans,
              "unknown_process_commands": split.unknown_process, "slowlog_full": window.slowlog_full}
    return {"run": name, "mode": what, "jobs": n,
            "untraced": _totals(*untraced, n, idle) if untraced else None, "traced": traced_totals,
            "phases": _phases(split, window, n, idle), "checks": checks}


def render(report: dict[str, Any], items: int = 6) -> str:
    c, idle = report["conditions"], report["idle"]
    lines = [f"Redis cost per job, by phase: model {c['model']}, {c['workers']} worker, {c['redis']}, "
             f"{c['cpus']} CPUs shared by bench, worker and Redis; warm-up {c['warmup_jobs']} jobs per run.",
             f"idle ({idle['seconds']} s, no jobs): {idle['sent_per_s']} sent/s, {idle['executed_per_s']} "
             f"executed/s, {idle['cpu_us_per_s']} µs CPU/s; " + ", ".join(
                 f"{n} {v['sent_per_s']}/s" for n, v in idle["phases"].items())]
    for run in report["runs"]:
        lines += ["", *_render_run(run, items)]
    lines += ["", "sent: commands clients sent (slowlog; EXEC and timed-out blocking reads inferred from "
              "commandstats). executed: sent + Lua's inner calls (commandstats). exec µs: Redis's own timing of "
              "each sent command (a script's inner calls included). CPU µs est.: exec µs + a share, by commands "
              "sent, of the CPU spent outside commands. net of idle: less the idle rate × the window."]
    return "\n".join(lines)


def _render_run(run: dict[str, Any], items: int) -> list[str]:
    t, u = run["traced"], run["untraced"]
    ok = f"traced {t['succeeded']}/{run['jobs']}" + (f", untraced {u['succeeded']}/{run['jobs']}" if u else "")
    lines = [f"{run['run']}: {run['mode']}, N={run['jobs']} per pass ({ok} succeeded)",
             f"  {'per job':<22}{'sent':>8}{'executed':>10}{'exec µs':>9}{'CPU µs':>9}   net of idle: executed, "
             "CPU µs"]
    if u:
        lines.append(f"  {'untraced pass':<22}{'-':>8}{u['executed_per_job']:>10}{'-':>9}{u['cpu_us_per_job']:>9}"
                     f"   {u['executed_per_job_net_of_idle']}, {u['cpu_us_per_job_net_of_idle']} "
                     f"(window {u['window_s']} s)")
    lines.append(f"  {'traced pass':<22}{t['sent_per_job']:>8}{t['executed_per_job']:>10}{t['exec_us_per_job']:>9}"
                 f"{t['cpu_us_per_job']:>9}   {t['executed_per_job_net_of_idle']}, {t['cpu_us_per_job_net_of_idle']}"
                 f" (window {t['window_s']} s)")
    top = (u or t)["executed_top_per_job"]
    lines.append("  executed, top commands: " + ", ".join(f"{k} {v}" for k, v in top.items()))
    lines.append(f"  {'phase (traced pass)':<22}{'sent':>8}{'executed':>10}{'exec µs':>9}{'CPU est.':>9}"
                 f"{'(Lua)':>8}{'idle sent/s':>13}")
    for background in (False, True):
        if background:
            lines.append("  -- background (runs with or without jobs; compare the idle rate) --")
        for name, p in run["phases"].items():
            if p["background"] == background:
                lines.append(f"  {name:<22}{p['sent']:>8.2f}{p['executed']:>10.2f}{p['exec_us']:>9.1f}"
                             f"{p['cpu_us_est']:>9.1f}{p['lua_inner']:>8.2f}{p['idle_sent_per_s']:>13.2f}")
    checks = {k: v for k, v in run["checks"].items() if v}
    if checks:
        lines.append(f"  CHECKS: {checks}")
    if items:
        for name, p in run["phases"].items():
            shown = list(p["items"].items())[:items]
            lines.append(f"    {name}: " + ", ".join(f"{k} {v}" for k, v in shown))
    return lines
