"""Plots of evaluation reports (matplotlib, from the ``bench`` extra, imported when used)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rxt_dist.eval.report import write_bytes_atomic

_STYLE = {
    "rxt": ("RxT respond", "tab:blue"),
    "rxt_compiled": ("RxT respond, compiled", "tab:green"),
    "stateless_full": ("stateless, full re-read", "tab:red"),
    "stateless_prefix": ("stateless, prefix cache", "tab:orange"),
    "hf_llama": ("HF Llama generate", "tab:purple"),
}
_CONSOLIDATE = ("RxT consolidate (off the response path)", "tab:cyan")


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install -e '.[bench]'") from exc
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _run_title(run: dict[str, Any]) -> str:
    cfg = run["config"]
    rxt = run["models"].get("rxt", {})
    return (f"{rxt.get('source', cfg['rxt_preset'])} vs {cfg['baseline_preset']}; "
            f"{cfg['query_tokens']}+{cfg['answer_tokens']} tokens/turn, {run['threads']} thread(s)")


def save_png(plt, fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it as PNG to ``path`` (atomically) and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def plot_latency(document: dict[str, Any], path: str | Path) -> Path:
    """Per-turn time to first token, full-turn time, paired time-to-first-token ratio and
    cumulative tokens processed, one row per run of a ``latency.json`` document; written as
    PNG to ``path`` (atomically)."""
    plt = _pyplot()
    runs = document["runs"]
    fig, axes = plt.subplots(len(runs), 4, figsize=(21, 4.2 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        for name, result in run["systems"].items():
            turns = range(1, len(result["prompt_s"]) + 1)
            label, color = _STYLE.get(name, (name, None))
            row[0].plot(turns, [t * 1e3 for t in result["prompt_s"]], label=label, color=color)
            row[1].plot(turns, [t * 1e3 for t in result["turn_s"]], label=label, color=color)
            if "prompt_paired_ratio" in result:
                row[2].plot(turns, result["prompt_paired_ratio"], label=label, color=color)
            cumulative = [sum(result["tokens_per_turn"][: i + 1]) for i in range(len(turns))]
            row[3].plot(turns, cumulative, label=label, color=color)
            if "consolidate_s" in result:
                label, color = _CONSOLIDATE
                row[1].plot(turns, [t * 1e3 for t in result["consolidate_s"]], linestyle="--",
                            label=label, color=color)
        row[0].set(title="time to first token", xlabel="turn", ylabel="ms (median)", yscale="log")
        row[1].set(title="full turn", xlabel="turn", ylabel="ms (median)", yscale="log")
        row[2].axhline(1.15, color="gray", linestyle=":", label="RxT target 1.15")
        row[2].set(title="time to first token / turn-1 replay (paired)", xlabel="turn",
                   ylabel="ratio (median)", yscale="log")
        row[3].set(title="tokens processed (cumulative)", xlabel="turn", ylabel="tokens")
        row[0].text(0.01, 1.09, _run_title(run), transform=row[0].transAxes, fontsize=9)
        for ax in row:
            ax.grid(True, alpha=0.3)
        row[1].legend(fontsize=8)
        row[2].legend(fontsize=8)
        row[3].legend(fontsize=8)
    return save_png(plt, fig, path)


def plot_learning_curves(studies: list[dict[str, Any]], path: str | Path) -> Path:
    """Recall on held-out conversations (new values, own answers; dashed: gold-consolidated)
    against minutes of training, one line per arm of ``jobs/memory_study.py``; PNG to ``path``."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    for i, study in enumerate(studies):
        color = f"C{i}"
        curve = study["curve"]
        minutes = [p["minutes"] for p in curve]
        left.plot(minutes, [100 * (p["rxt"]["exact_match"] or 0) for p in curve], marker="o", color=color,
                  label=study["arm"])
        left.plot(minutes, [100 * (p["rxt_gold"]["exact_match"] or 0) for p in curve], linestyle="--",
                  color=color, alpha=0.6)
        right.plot([p["tokens"] / 1e6 for p in curve], [100 * (p["rxt"]["exact_match"] or 0) for p in curve],
                   marker="o", color=color, label=study["arm"])
    left.set(title="recall, new values (solid: own answers; dashed: gold answers consolidated)",
             xlabel="minutes of training (1 CPU thread)", ylabel="exact match %")
    right.set(title="recall, new values, own answers", xlabel="training tokens (millions)", ylabel="exact match %")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return save_png(plt, fig, path)


def plot_scaling(report: dict[str, Any], path: str | Path) -> Path:
    """Replicas per deployment over the serving benchmark's run (``replicas_over_time``), with
    each level's window shaded and its TTFT p50 and update-lag p50 beside it."""
    plt = _pyplot()
    samples = report["replicas_over_time"]
    t0 = samples[0]["at_unix"]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    names = sorted({k for s in samples for k in s["running"]})
    times = [s["at_unix"] - t0 for s in samples]
    for i, name in enumerate(names):  # a small offset each, so equal counts stay visible
        line, = ax.step(times, [s["running"].get(name, 0) + 0.04 * i for s in samples], where="post", label=name)
        starting = [s.get("replicas", {}).get(name, {}).get("STARTING", 0) for s in samples]
        if any(starting):  # asked for but not yet running (e.g. waiting for CPUs)
            ax.step(times, [s["running"].get(name, 0) + n + 0.04 * i for s, n in zip(samples, starting)],
                    where="post", linestyle="--", color=line.get_color(), label=f"{name} incl. starting")
    for level in report["levels"]:
        if level.get("started_at_unix") is None:
            continue
        a, b = level["started_at_unix"] - t0, level["ended_at_unix"] - t0
        for axis in (ax, bx):
            axis.axvspan(a, b, alpha=0.08, color="tab:gray")
        ax.text((a + b) / 2, 0.1, f"S={level['sessions']}", ha="center")
        ttft, lag = level["ttft"]["p50_s"], level["update_lag"]["p50_s"]
        if ttft is not None:
            bx.plot([a, b], [ttft * 1e3] * 2, color="tab:blue", label="TTFT p50" if level is report["levels"][0] else None)
        if lag is not None:
            bx.plot([a, b], [lag * 1e3] * 2, color="tab:orange", label="update lag p50" if level is report["levels"][0] else None)
    ax.set_ylabel("replicas")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    bx.set_ylabel("ms")
    bx.set_xlabel("seconds since the first sample")
    bx.legend(loc="upper right")
    ax.set_title("autoscaling under a load ramp (levels shaded), then idle")
    return save_png(plt, fig, path)
