"""What a training run shows a person: the results table and the curves plot."""
from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def format_results(results: dict[str, float]) -> str:
    """Evaluation results as an aligned two-column table; rates shown as percentages."""
    if not results:
        return "(no evaluation results)"
    width = max(len(k) for k in results)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -------"]
    for key, value in results.items():
        if isinstance(value, float) and not key.endswith("num_samples") and not key.endswith("num_queries") and 0 <= value <= 1:
            shown = f"{100 * value:6.1f}%"
        else:
            shown = f"{value:g}" if isinstance(value, (int, float)) else str(value)
        lines.append(f"{key.ljust(width)}  {shown}")
    return "\n".join(lines)


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_curves(metrics_path: str | Path, output: str | Path) -> Path | None:
    """A PNG of the training loss and of every evaluation rate over steps; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no curves plot (pip install matplotlib)")
        return None
    rows = read_metrics(metrics_path)
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    rate_keys = sorted({k for r in rows for k in r if (k.endswith("accuracy@1") or k.endswith("recall@1")) and "/" in k})
    figure, (loss_axis, eval_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if losses:
        loss_axis.plot(*zip(*losses), label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("contrastive loss")
    loss_axis.set_title("training loss")
    for key in rate_keys:
        points = [(r["step"], r[key]) for r in rows if key in r]
        eval_axis.plot(*zip(*points), marker="o", label=key)
    eval_axis.set_xlabel("step")
    if losses:
        eval_axis.set_xlim(0, max(step for step, _ in losses))
    eval_axis.set_ylim(0, 1)
    eval_axis.set_title("evaluation")
    if rate_keys:
        eval_axis.legend(fontsize=7)
    figure.tight_layout()
    output = Path(output)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
