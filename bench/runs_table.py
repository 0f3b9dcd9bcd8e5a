"""Side-by-side table of finished runs from an MLflow store: the figures a comparison reports.

Runs the comparison's jobs first (same budget, same seed), then e.g.:

    .venv/bin/python bench/runs_table.py --tracking-uri sqlite:////tmp/cmp/runs/mlflow.db \\
        --runs fashion-mnist-hyper fashion-mnist-plain --out bench/results/fashion_mnist \\
        --metrics test_error valid_error params_total params_hypernetwork images_per_s

writes ``<out>.json`` (every metric, param and tag of each run, plus its wall time) and
``<out>.md`` (the chosen metrics, one row per run, and the ratio of each to the first run).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="run names (the jobs' name:), newest run of each")
    parser.add_argument("--metrics", nargs="+", required=True, help="columns of the Markdown table")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--title", default="")
    parser.add_argument("--note", default="", help="a line under the table (how the runs were made)")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    rows = []
    for name in args.runs:
        found = client.search_runs(
            experiments,
            filter_string=f"tags.`mlflow.runName` = '{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise SystemExit(f"no run named {name!r} in {args.tracking_uri}")
        run = found[0]
        wall = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
        rows.append(
            {
                "name": name,
                "run_id": run.info.run_id,
                "status": run.info.status,
                "wall_s": wall,
                "metrics": run.data.metrics,
                "params": run.data.params,
                "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.log")},
            }
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.node()} {platform.machine()}, {__import__('os').cpu_count()} CPUs"
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "runs": rows}, indent=1, default=str))

    def fmt(v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 or float(v).is_integer() else f"{v:.4f}"

    head = ["run", *args.metrics, "wall (s)"]
    md = [
        f"# {args.title or out.stem}",
        "",
        f"Machine: {machine}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    first = rows[0]["metrics"]
    for r in rows:
        cells = [fmt(r["metrics"].get(m)) for m in args.metrics]
        md.append(f"| {r['name']} | " + " | ".join(cells) + f" | {fmt(r['wall_s'])} |")
    md += [
        "",
        "Ratio to the first run:",
        "",
        "| run | " + " | ".join(args.metrics) + " |",
        "|" + "---|" * (len(args.metrics) + 1),
    ]
    for r in rows:
        ratios = [
            f"{r['metrics'][m] / first[m]:.2f}" if first.get(m) and r["metrics"].get(m) is not None else "-"
            for m in args.metrics
        ]
        md.append(f"| {r['name']} | " + " | ".join(ratios) + " |")
    if args.note:
        md += ["", args.note]
    signature = rows[0]["tags"].get("sacrebleu.signature")
    if signature:
        md += ["", f"sacreBLEU signature: `{signature}`"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
