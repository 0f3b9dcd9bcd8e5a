"""What a campaign reports: its trials ranked by the metric, the table the terminal shows, and the
summary on the campaign's parent MLflow run (tables, plots, the best trial as a ready-to-run job).

matplotlib is imported when a plot is drawn (:func:`service.worker.plots.pyplot`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..io import storage, tracking
from ..paths import run_dir
from ..spec.loading import validate_job
from ..spec.schema import JobSpec
from ..spec.tree import get_dotted, with_values
from ..tasks import task_of
from ..worker.plots import pyplot

SUMMARY_FILE = "summary.json"  # the last summary, also readable without MLflow


def best_job_document(base: JobSpec, sampled: dict[str, Any]) -> dict[str, Any]:
    """The best trial's configuration as a ready-to-run job (``<campaign>-best``, same storage and
    tracking as the campaign)."""
    raw = with_values(base, sampled, name=f"{base.name}-best")
    validate_job(raw, "best job")
    return raw


def searched_keys(spec: JobSpec) -> list[str]:
    assert spec.search is not None
    keys = list(spec.search.space)
    if spec.search.algorithm == "grid" and spec.search.samples > 1:
        keys.append("train.seed")
    return keys


def fmt_config(config: dict[str, Any]) -> str:
    """Searched values as ``key=value, ...`` (floats to 4 significant digits)."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in config.items())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def ranked(spec: JobSpec, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials sorted by the metric (best first; trials without a value last)."""
    assert spec.search is not None
    sign = 1.0 if spec.search.mode == "min" else -1.0

    def key(t: dict[str, Any]) -> tuple[int, float]:
        v = t["value"]
        return (1, 0.0) if v is None or math.isnan(v) else (0, sign * v)

    return sorted(trials, key=key)


def best_trial(spec: JobSpec, trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best completed trial (a trial stopped early holds an early value; it is not a result),
    or the best of all when none completed."""
    order = [t for t in ranked(spec, trials) if t["value"] is not None and math.isfinite(t["value"])]
    completed = [t for t in order if t["state"] == "completed"]
    candidates = completed or order
    return candidates[0] if candidates else None


def format_trials(spec: JobSpec, trials: list[dict[str, Any]]) -> str:
    assert spec.search is not None
    keys = searched_keys(spec)
    head = ["trial", "state", "step", str(spec.search.metric)] + keys
    rows = [
        [
            t["trial"],
            t["state"],
            str(t["step"] if t["step"] is not None else "-"),
            f"{t['value']:.4f}" if t["value"] is not None else "-",
        ]
        + [_fmt(t["config"].get(k)) for k in keys]
        for t in ranked(spec, trials)
    ]
    columns = zip(head, *rows, strict=True)
    widths = [max(len(str(x)) for x in col) for col in columns] if rows else [len(h) for h in head]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    return "\n".join(lines)


# ---- the summary on the parent run ---------------------------------------------------------------


def write_summary(spec: JobSpec, uri: str, parent_id: str, trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """On the campaign's run: ``summary/trials.csv`` and ``summary/trials.md`` (trials sorted by the
    metric), a plot of the metric against the task's summary axis (e.g. ``plots/<metric>_vs_N_z.png``)
    and one per other searched key, ``plots/learning_curves.png`` (every trial's metric curve),
    ``best_job.yaml`` (the best trial as a ready-to-run job), metrics ``best_<metric>`` and trial
    counts, tags for the best trial."""
    assert spec.search is not None
    log = tracking.RunLog(uri, parent_id)
    metric = str(spec.search.metric)
    keys = searched_keys(spec)
    order = ranked(spec, trials)
    axis = task_of(spec).summary_axis
    # The summary axis's column: a searched key has one already; otherwise every trial has the base value.
    axis_column = axis.label if axis is not None and axis.key not in keys else None
    base_value = get_dotted(spec.model_dump(mode="json"), axis.key) if axis is not None else None
    axis_of = {t["trial"]: t["config"].get(axis.key, base_value) if axis else None for t in trials}
    columns = ["rank", "trial", "run_id", "state", "step", metric] + keys + ([axis_column] if axis_column else [])
    table = []
    for i, t in enumerate(order, 1):
        row = {
            "rank": i,
            "trial": t["trial"],
            "run_id": t["run_id"] or "",
            "state": t["state"],
            "step": t["step"],
            metric: t["value"],
            **{k: t["config"].get(k) for k in keys},
        }
        if axis_column:
            row[axis_column] = axis_of[t["trial"]]
        table.append(row)

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
    md = [
        f"# Campaign {spec.name}: trials by {metric} ({spec.search.mode})",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    md += ["| " + " | ".join(_md(row.get(c)) for c in columns) + " |" for row in table]
    best = best_trial(spec, trials)
    if best:
        md += [
            "",
            f"Best: trial `{best['trial']}` ({metric} {best['value']:.4f}), "
            f"{fmt_config(best['config'])}; job: `best_job.yaml`.",
        ]
    log.log_text(buf.getvalue(), "summary/trials.csv")
    log.log_text("\n".join(md) + "\n", "summary/trials.md")

    curves = {t["trial"]: tracking.metric_history(uri, t["run_id"], metric) for t in trials if t["run_id"]}
    with tempfile.TemporaryDirectory(prefix="hyperctl-summary-") as tmp:
        plot_keys = ([axis.key] if axis else []) + [k for k in keys if axis is None or k != axis.key]
        for key in plot_keys:
            on_axis = axis is not None and key == axis.key
            label = axis.label if axis is not None and on_axis else key
            points = [
                (axis_of[t["trial"]] if on_axis else t["config"].get(key), t["value"], t["state"]) for t in trials
            ]
            path = Path(tmp) / f"{metric}_vs_{label}.png"
            domain = spec.search.space.get(key)
            log_base = (
                axis.log_base
                if axis is not None and on_axis
                else (10 if domain and domain.kind == "loguniform" else None)
            )
            _scatter(
                points,
                path,
                xlabel=f"{label} ({key})" if on_axis else label,
                ylabel=metric,
                title=f"{spec.name}: {metric} against {label}",
                log_base=log_base,
            )
            log.log_artifact(str(path), "plots")
        path = Path(tmp) / "learning_curves.png"
        labels = {t["trial"]: f"{t['trial']} ({fmt_config(t['config'])})" for t in trials}
        _curves(curves, labels, path, ylabel=metric, title=f"{spec.name}: {metric} of every trial")
        log.log_artifact(str(path), "plots")

    counts = {
        s: sum(1 for t in trials if t["state"] == s) for s in ("completed", "stopped early", "failed", "diverged")
    }
    for s, n in counts.items():
        log.log_metric(f"trials_{s.replace(' ', '_')}", n)
    log.log_metric("trials", len(trials))
    storage.write_bytes_atomic(
        storage.join(run_dir(spec), SUMMARY_FILE), json.dumps({"trials": table, "best": best}, default=str).encode()
    )
    if best is None:
        return None
    doc = best_job_document(spec, best["config"])
    text = (
        f"# Best trial of campaign {spec.name}: trial {best['trial']} (MLflow run {best['run_id']}),\n"
        f"# {metric} = {best['value']:.4f}; searched values: {fmt_config(best['config'])}.\n"
        f"# Run it with: hyperctl submit best_job.yaml\n" + yaml.safe_dump(doc, sort_keys=False)
    )
    log.log_text(text, "best_job.yaml")
    log.log_metric(f"best_{metric}", best["value"])
    log.set_tags(**{tracking.TAG_BEST_TRIAL: best["trial"]})
    if best["run_id"]:
        log.set_tags(**{tracking.TAG_BEST_RUN: best["run_id"]})
    return best


def _md(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _scatter(
    points: list[tuple[Any, Any, str]], path: Path, xlabel: str, ylabel: str, title: str, log_base: int | None
) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        "completed": ("o", "tab:blue"),
        "stopped early": ("x", "tab:orange"),
        "diverged": ("v", "tab:red"),
        "failed": ("v", "tab:red"),
    }
    for state, (marker, color) in styles.items():
        pts = [(x, y) for x, y, s in points if s == state and x is not None and y is not None and math.isfinite(y)]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, color=color, label=state, s=45)
    other = [(x, y) for x, y, s in points if s not in styles and x is not None and y is not None and math.isfinite(y)]
    if other:
        ax.scatter(*zip(*other, strict=True), marker=".", color="gray", label="running", s=45)
    xs = [x for x, _, _ in points if isinstance(x, (int, float))]
    if log_base and xs and min(xs) > 0 and max(xs) > min(xs):
        ax.set_xscale("log", base=log_base)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + " (last reported)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(
    curves: dict[str, list[tuple[int, float]]], labels: dict[str, str], path: Path, ylabel: str, title: str
) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for trial, points in sorted(curves.items()):
        if points:
            ax.plot(*zip(*points, strict=True), "o-", ms=3, lw=1.2, label=labels.get(trial, trial))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = [
    "SUMMARY_FILE",
    "best_job_document",
    "best_trial",
    "fmt_config",
    "format_trials",
    "ranked",
    "searched_keys",
    "write_summary",
]
