"""The serving benchmark's report for people: a table with one row per level, and the plot of
TTFT, update lag and waited share by turn index."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rxt_dist.eval.serving_stats import TARGET_SESSIONS


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.1f}"


def summary_table(report: dict[str, Any]) -> str:
    """One row per level: TTFT p50/p99 at turn 1 and the last turn, their ratio, answer time,
    update lag, waited share, throughput, errors."""
    lines = [(f"serving {report['server'].get('model_id')} at {report['server']['url']}: "
              f"{report['config']['turns']} turns, {report['config']['query_words']} words → "
              f"max {report['config']['max_tokens']} tokens, think {report['config']['think_time_s']} s"),
             (f"{'S':>3} {'TTFT t1 p50/p99 ms':>19} {'TTFT tN p50/p99 ms':>19} {'tN/t1':>6} {'answer p50':>10} "
              f"{'lag p50/p99 ms':>15} {'waited':>7} {'tok/s agg':>9} {'tok/s/sess':>10} {'errors':>6}")]
    for lv in report["levels"]:
        pt, last = lv["per_turn"], max(lv["turns_played"] - 1, 0)
        ratio = lv["ttft"]["ratio_last_first"]
        waited = lv["waited"]["share"]
        per_session = lv["throughput"]["per_session_tokens_per_s"]["p50_tokens_per_s"]
        lines.append(
            f"{lv['sessions']:>3} {_ms(pt['ttft_p50_s'][0]) + '/' + _ms(pt['ttft_p99_s'][0]):>19} "
            f"{_ms(pt['ttft_p50_s'][last]) + '/' + _ms(pt['ttft_p99_s'][last]):>19} "
            f"{'—' if ratio is None else f'{ratio:.2f}':>6} {_ms(lv['answer']['p50_s']):>10} "
            f"{_ms(lv['update_lag']['p50_s']) + '/' + _ms(lv['update_lag']['p99_s']):>15} "
            f"{'—' if waited is None else f'{100 * waited:.0f}%':>7} "
            f"{lv['throughput']['aggregate_tokens_per_s'] or 0:9.1f} {per_session or 0:10.1f} "
            f"{lv['requests'] - lv['requests_ok']:>6}" + ("  (truncated)" if lv["truncated"] else ""))
    met = report["targets"]["met"]
    lines.append(f"targets at S={TARGET_SESSIONS}: " + ("not run" if met is None else "met" if met else "NOT met"))
    return "\n".join(lines)


def plot_serving(report: dict[str, Any], path: str | Path) -> Path:
    """TTFT p50/p99 by turn index, update lag p50/p99 by turn index (median answer time
    dotted) and the share of requests that waited, one line per level; PNG, atomically."""
    from rxt_dist.eval.plots import _pyplot, save_png

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, lv in enumerate(report["levels"]):
        color, pt, label = colors[i % len(colors)], lv["per_turn"], f"S={lv['sessions']}"
        turns = pt["turn"]
        axes[0].plot(turns, _scaled(pt["ttft_p50_s"]), color=color, label=f"{label} p50")
        axes[0].plot(turns, _scaled(pt["ttft_p99_s"]), color=color, linestyle="--", label=f"{label} p99")
        axes[1].plot(turns, _scaled(pt["update_lag_p50_s"]), color=color, label=f"{label} lag p50")
        axes[1].plot(turns, _scaled(pt["update_lag_p99_s"]), color=color, linestyle="--", label=f"{label} lag p99")
        if lv["answer"]["p50_s"] is not None:
            axes[1].axhline(lv["answer"]["p50_s"] * 1e3, color=color, linestyle=":", label=f"{label} answer p50")
        axes[2].plot(turns, [None if x is None else 100 * x for x in pt["waited_share"]], color=color,
                     marker=".", label=label)
    axes[0].set(title="time to first token (streamed)", xlabel="turn", ylabel="ms", yscale="log")
    axes[1].set(title="memory update lag (end of answer → version committed)", xlabel="turn", ylabel="ms",
                yscale="log")
    axes[2].set(title="requests that waited for the previous update", xlabel="turn", ylabel="%", ylim=(-5, 105))
    server = report["server"]
    fig.suptitle(f"{server.get('model_source') or server.get('model_id')} — {report['config']['max_tokens']} "
                 f"tokens/answer, think {report['config']['think_time_s']} s, load average "
                 f"{report['machine']['load_average']} before → {report['load_average_after']} after",
                 fontsize=9)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_png(plt, fig, path)


def _scaled(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else v * 1e3 for v in values]
