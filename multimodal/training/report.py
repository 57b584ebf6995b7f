"""What a training run shows a person: the results table and the curves plot."""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

logger = logging.getLogger(__name__)


# Metrics that are the fraction of samples (or queries) that got something right: shown with
# their count ("4 of 10") and a 95% interval. Other averages (mean per-class recall, mAP)
# show how many items they average.
_COUNTED_RATE = re.compile(r"^(accuracy|recall)@\d+$")
_COUNT_KEYS = (("num_queries", "queries"), ("num_samples", "samples"))
_Z_95 = 1.959964  # standard normal quantile of 0.975


def format_results(results: dict[str, float]) -> str:
    """Evaluation results as an aligned table: metric, value (rates as percentages), how many it stands on.

    A metric's count comes from the ``num_queries`` or ``num_samples`` beside it (the
    nearest prefix of its name): ``audio_real_zeroshot/accuracy@1  40.0%  4 of 10
    13.7-72.6%`` reads as small where ``... 400 of 1,000`` does not. Rates of samples
    (accuracy@k, recall@k) show the count right and a 95% Wilson score interval; other
    averages show the number averaged. Count entries shown this way get no row of their own.
    """
    if not results:
        return "(no evaluation results)"
    rows, used = [], set()
    for key, value in results.items():
        count = _count_of(key, results)
        if count is not None and _is_rate(key, value):
            used.add(count[0])
    for key, value in results.items():
        if key in used:
            continue
        count = _count_of(key, results) if _is_rate(key, value) else None
        rows.append((key, _shown(key, value), *_count_columns(key, value, count)))
    headers = ("metric", "value", "of", "95% interval")
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(4)]
    if not any(row[3] for row in rows):
        headers, widths = headers[:3], widths[:3]
    if not any(row[2] for row in rows):
        headers, widths = headers[:2], widths[:2]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1])]
        cells += [cell.ljust(width) for cell, width in zip(row[2:len(widths)], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def wilson_interval(successes: int, total: int, z: float = _Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for the default z); sound for small counts and 0 or 1."""
    if total <= 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total and total > 0, got {successes} of {total}")
    proportion = successes / total
    denominator = 1 + z**2 / total
    centre = (proportion + z**2 / (2 * total)) / denominator
    half_width = z * math.sqrt(proportion * (1 - proportion) / total + z**2 / (4 * total**2)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def _is_rate(key: str, value) -> bool:
    return (isinstance(value, float) and 0 <= value <= 1
            and not any(key.rsplit("/", 1)[-1] == count for count, _ in _COUNT_KEYS))


def _shown(key: str, value) -> str:
    if _is_rate(key, value):
        return f"{100 * value:.1f}%"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _count_of(key: str, results: dict) -> tuple[str, int, str] | None:
    """(count key, count, unit) of the nearest ``num_queries`` / ``num_samples`` above ``key``; None without one."""
    parts = key.split("/")[:-1]
    while parts:
        prefix = "/".join(parts)
        for name, unit in _COUNT_KEYS:
            count = results.get(f"{prefix}/{name}")
            if isinstance(count, (int, float)) and count > 0 and float(count).is_integer():
                return f"{prefix}/{name}", int(count), unit
        parts.pop()
    return None


def _count_columns(key: str, value, count: tuple[str, int, str] | None) -> tuple[str, str]:
    if count is None:
        return "", ""
    _, total, unit = count
    if not _COUNTED_RATE.match(key.rsplit("/", 1)[-1]):
        return f"{total:,} {unit}", ""
    right = round(value * total)
    low, high = wilson_interval(right, total)
    of = f"{right:,} of {total:,}" + (" queries" if unit == "queries" else "")
    return of, f"{100 * low:.1f}-{100 * high:.1f}%"


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
