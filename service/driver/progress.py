"""Progress lines for the terminal: rank 0 puts small dicts on a Ray queue, the driver prints them."""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _metrics(metrics: dict[str, float]) -> str:
    """``valid_bpc 1.2345  test_bpc 1.2222``: names as MLflow shows them."""
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)


def format_event(ev: dict[str, Any]) -> str:
    """One terminal line for a progress event of any task's worker loop (see service.worker)."""
    kind = ev.get("event")
    if kind == "start":
        how = f"resumed at step {ev['step']}" if ev["step"] else "starting"
        steps = f"{ev['total_steps']} steps" if ev["total_steps"] is not None else "steps unbounded"
        budget = f" within {ev['time_budget']}" if ev.get("time_budget") else ""
        return (
            f"[train] {how}: {steps}{budget}, {ev['workers']} worker(s), "
            f"{ev['batches_per_epoch']} {ev.get('unit', 'batches')}/epoch, {ev['parameters']:,} parameters"
        )
    if kind == "log":
        # fraction: of the steps or of the time budget, whichever ends the run first
        pct = 100.0 * ev.get("fraction", ev["step"] / (ev["total_steps"] or 1))
        total = "" if ev["total_steps"] is None else f"/{ev['total_steps']}"
        name, value, unit = ev["loss"]
        rate, rate_unit = ev["rate"]
        return (
            f"[train] step {ev['step']:>6}{total} ({pct:5.1f}%)  epoch {ev['epoch']}  "
            f"loss {value:.4f} {unit}  {rate:,.0f} {rate_unit}  lr {ev['lr']:.2e}  "
            f"ETA {fmt_duration(ev['eta_s'])}"
        )
    if kind == "eval":
        over = f" ({ev['over']})" if ev.get("over") else ""
        return f"[eval]  step {ev['step']:>6}  {_metrics(ev['metrics'])}{over}"
    if kind == "checkpoint":
        return f"[ckpt]  step {ev['step']:>6}  checkpoint saved, metrics flushed to MLflow"
    if kind == "final":
        return f"[done]  step {ev['step']}  {_metrics(ev['metrics'])}"
    if kind == "sample":
        return "[sample] " + ev["text"].replace("\n", "\n         ")
    if kind == "info":
        return f"[info]  {ev['text']}"
    if kind == "error":
        return f"[error] {ev['message']}"
    return f"[train] {ev}"


class QueuePrinter:
    """Drains a ``ray.util.queue.Queue`` in a background thread and prints each event. ``cause``:
    the first error event marked ``cause`` (a worker's reason for the job to fail, e.g. its storage
    retries running out, sent by every rank that meets it), for the driver to report once."""

    def __init__(self, queue: Any, out: TextIO | None = None) -> None:
        self.queue, self.out = queue, out or sys.stdout
        self.cause: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hyperctl-progress")

    def __enter__(self) -> QueuePrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain()

    def _print(self, ev: dict[str, Any]) -> None:
        if ev.get("cause"):  # kept, not printed: the driver ends with it as the job's error
            self.cause = self.cause or str(ev["message"])
            return
        print(format_event(ev), file=self.out, flush=True)

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                self._print(self.queue.get_nowait())
        except Exception:  # the queue actor is gone
            pass

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self._print(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception:
                if self._stop.wait(1.0):
                    return


__all__ = ["QueuePrinter", "fmt_duration", "format_event"]
