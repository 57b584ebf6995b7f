"""Fine-tuning the demo's checkpoint on other writers' digits: what each recipe gains on them, and what it forgets.

The target: scikit-learn's 1,797 8 x 8 digits (the demo's ``image-real`` split: 13 other
writers, another scanner, evaluation only in the demo). Its samples with an even
scikit-learn index (899) become image-text training shards with the demo's own captions
("a handwritten seven"); those with an odd index (898) are the test half. Each recipe is
``train.py --init_from CHECKPOINT`` on the 899 for the fine-tuning default's 300 steps (or
``--steps``), with the demo's batch (128), image-text pairs only, so the audio tower is
never trained:

- ``lr 2e-3``: the from-scratch learning rate and warm-up (what ``--init_from`` ran with
  before it had fine-tuning defaults), and a few lower rates (``--rates``);
- ``defaults``: nothing but the data: the fine-tuning defaults (and
  other warm-ups with them, ``--warmups 10,150``);
- ``lock image`` / ``lock text``: one tower locked (``--freeze``), at the defaults (LiT at
  2e-3 too: the text tower it moves is the one the untrained audio tower is aligned to);
- ``layer decay 0.75`` at 2e-3: each earlier block learning 0.75 times slower;
- ``WiSE-FT``: ``multimodal interpolate`` of the checkpoint and the ``lr 2e-3`` fine-tune, alpha 0.5.

Each result (and the checkpoint itself) is evaluated in this process, the same way
(fp32, the demo's zero-shot templates): the test half (the target), the demo's held-out
MNIST digits, its held-out synthetic voices and its ten human recordings (the two
towers the run does not train on, audio, and the one it moves, text). Printed: a table
of those figures with the change against the checkpoint, and the command of each row.

Run: ``python -m bench.bench_finetune [--quick] [--checkpoint DIR] [--steps N] [--rates 5e-4,2e-4,1e-4]``.
The checkpoint defaults to the demo run ``runs/demo-base`` (``python train.py
--run_name demo-base``), trained first when missing. ``--quick``: 20 steps, the defaults
and the old rate only, a smoke run.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import machine_summary
from multimodal.checkpoint import list_checkpoints
from multimodal.training.optimizer import FINE_TUNING_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
BASE_RUN = "demo-base"
WORKDIR = ROOT / "runs" / "bench-finetune"
OLD_LR = "2e-3"  # the from-scratch default, which --init_from used before it had its own
OLD_RECIPE = f"lr {OLD_LR} (from-scratch default)"
# The start-up lines worth echoing: the fine-tuning defaults chosen, and warnings (drift).
START_UP_LINES = ("fine-tuning", "warning")
METRICS = {  # column -> (evaluation set, metric)
    "target": ("digits_test", "accuracy@1"),
    "MNIST": ("image_zeroshot", "accuracy@1"),
    "voices": ("audio_zeroshot", "accuracy@1"),
    "human": ("audio_real_zeroshot", "accuracy@1"),
}


@dataclass
class Recipe:
    name: str
    arguments: list[str] = field(default_factory=list)  # train.py arguments beyond the data and steps
    blend_of: str | None = None  # WiSE-FT: the recipe whose result is interpolated with the checkpoint
    rebind_of: str | None = None  # binding audio again: the recipe whose result is trained on the demo's audio-text


def recipes(rates: list[str], warmups: list[str], quick: bool) -> list[Recipe]:
    old = Recipe(OLD_RECIPE, ["--optim.lr", OLD_LR, "--optim.warmup_steps", "50"])
    if quick:
        return [old, Recipe("defaults")]
    return [
        old,
        *[Recipe(f"lr {rate}", ["--optim.lr", rate]) for rate in rates],
        Recipe("defaults"),
        *[Recipe(f"defaults, {steps} warm-up steps", ["--optim.warmup_steps", steps]) for steps in warmups],
        Recipe("lock image (LiT)", ["--freeze", '["image"]']),
        Recipe(f"lock image (LiT), lr {OLD_LR}", ["--freeze", '["image"]', "--optim.lr", OLD_LR]),
        Recipe("then bind audio again", ["--freeze", '["image", "text"]'], rebind_of=f"lock image (LiT), lr {OLD_LR}"),
        Recipe("lock text", ["--freeze", '["text"]']),
        Recipe(f"layer decay 0.75, lr {OLD_LR}", ["--optim.lr", OLD_LR, "--optim.warmup_steps", "50",
                                                   "--optim.layer_decay", "0.75"]),
        Recipe("WiSE-FT alpha 0.5 of lr 2e-3", blend_of=old.name),
    ]


def split_digits(workdir: Path) -> tuple[str, str]:
    """The demo's scikit-learn digits as two shard folders: even indices to train on, odd ones to test."""
    from multimodal.data.demo.dataset import build_demo
    from multimodal.data.pipeline.shard_reader import expand_shards, read_shard
    from multimodal.data.writing.writer import SampleSource, write_shards

    train_dir, test_dir = workdir / "digits-train", workdir / "digits-test"
    if (train_dir / "sizes.json").is_file() and (test_dir / "sizes.json").is_file():
        return relative(train_dir), relative(test_dir)
    halves: dict[int, list[SampleSource]] = {0: [], 1: []}
    problems: list = []
    for url in expand_shards(build_demo().image_real):
        for sample in read_shard(url, problems):
            extra = json.loads(sample["json"])
            halves[extra["index"] % 2].append(SampleSource(
                key=sample["__key__"], media={"png": sample["png"]}, caption=sample["txt"].decode(), extra=extra))
    if problems:
        raise RuntimeError(f"the demo's scikit-learn digits could not be read: {problems[:2]}")
    for half, directory in ((0, train_dir), (1, test_dir)):
        write_shards(halves[half], directory, prefix=directory.name, overwrite=True)
    return relative(train_dir), relative(test_dir)


def eval_sets(test_shards: str) -> list:
    """The test half as a zero-shot set, beside the demo's held-out MNIST, voices and human recordings."""
    from multimodal.data.demo.dataset import build_demo
    from multimodal.apps.evaluation import EvalSetConfig
    from multimodal.training.demo_sources import demo_eval_sets

    demo = [e for e in demo_eval_sets(build_demo()) if e.name in {m[0] for m in METRICS.values()}]
    target = EvalSetConfig(name="digits_test", shards=test_shards, modality="image", class_names=demo[0].class_names,
                           templates=demo[0].templates)
    return [target, *demo]


def evaluate(checkpoint: Path, sets: list) -> dict[str, float]:
    """The columns of the table for one checkpoint (fp32, on the CPU)."""
    from multimodal.apps import evaluation
    from multimodal.training import data_sources
    from multimodal.checkpoint import load_model, load_tokenizer

    model = load_model(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    data = data_sources.prepare(data_sources.DataConfig(), model.config, tokenizer,
                                data_sources.ResolvedSources(train=[], eval_sets=sets))
    results = evaluation.run_evaluations(model, data.eval_sets, tokenizer)
    return {column: 100 * results[f"{name}/{metric}"] for column, (name, metric) in METRICS.items()}


def train_command(checkpoint: Path, train_shards: str | None, steps: int | None, run_dir: Path,
                  arguments: list[str], threads: int | None) -> list[str]:
    """``train.py`` from ``checkpoint`` on the image-text shards ``train_shards`` (None: the demo's own data)."""
    sources = [] if train_shards is None else [
        "--data.train", json.dumps([{"shards": train_shards, "modalities": ["image", "text"]}])]
    return [sys.executable, "train.py", "--init_from", relative(checkpoint), *sources,
            *steps_option(steps), "--output_dir", relative(run_dir.parent), "--run_name", run_dir.name,
            "--plot", "false", *(["--threads", str(threads)] if threads else []), *arguments]


def steps_option(steps: int | None) -> list[str]:
    """``--optim.steps N`` where the steps are given; none for the fine-tuning default's."""
    return ["--optim.steps", str(steps)] if steps is not None else []


def relative(path: Path | str) -> str:
    """A path as the commands show it: from the repository root where it lies inside."""
    path = Path(path).absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def slug(name: str) -> str:
    """A recipe's run name: ``lock image (LiT), lr 2e-3`` -> ``lock-image-lr-2e-3``."""
    return re.sub(r"\s*\([^)]*\)", "", name).replace(",", "").replace(" ", "-")


def chosen_recipes(args) -> list[Recipe]:
    """The recipes to run: all, or those ``--only`` names (with the run a blend or a rebind needs)."""
    every = recipes([rate for rate in args.rates.split(",") if rate],
                    [steps for steps in args.warmups.split(",") if steps], args.quick)
    if args.only is None:
        return every
    wanted = {r.name for r in every if any(part in r.name for part in args.only.split("|"))}
    wanted |= {r.blend_of or r.rebind_of for r in every if r.name in wanted and (r.blend_of or r.rebind_of)}
    return [r for r in every if r.name in wanted]


def run(command: list[str]) -> str:
    """Runs a command in the repository; returns its standard error (the start-up log); raises with it on failure."""
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{finished.stderr[-3000:]}")
    return finished.stdout + finished.stderr


def base_checkpoint(given: str | None, quick: bool) -> Path:
    """The checkpoint to fine-tune: the one given, or the demo run's last, trained first when missing."""
    if given is not None:
        return Path(given)
    run_dir = ROOT / "runs" / BASE_RUN
    if not list_checkpoints(run_dir):
        print(f"no checkpoint in {run_dir}: training the demo first (python train.py --run_name {BASE_RUN})",
              flush=True)
        run([sys.executable, "train.py", "--run_name", BASE_RUN, *(["--optim.steps", "100"] if quick else [])])
    return list_checkpoints(run_dir)[-1]


def run_recipe(recipe: Recipe, checkpoint: Path, train_shards: str, steps: int | None, runs: Path,
               trained: dict[str, Path], threads: int | None) -> tuple[Path, str]:
    """Runs one recipe; returns the checkpoint it made and its options as the table shows them."""
    run_dir = runs / slug(recipe.name)
    if recipe.blend_of is not None:
        command = [sys.executable, "-m", "multimodal", "interpolate", "--from", relative(checkpoint),
                   "--to", relative(trained[recipe.blend_of]), "--alpha", "0.5", "--output", relative(run_dir)]
        run(command)
        return run_dir, f"`multimodal interpolate --from CHECKPOINT --to {slug(recipe.blend_of)}'s --alpha 0.5`"
    if recipe.rebind_of is not None:  # on the demo's own data: its image-text source is locked, so not drawn
        command = train_command(trained[recipe.rebind_of], None, steps, run_dir, recipe.arguments, threads)
        options = f"`--init_from {slug(recipe.rebind_of)}'s {shlex.join(recipe.arguments)}`, the demo's data"
    else:
        command = train_command(checkpoint, train_shards, steps, run_dir, recipe.arguments, threads)
        options = f"`{shlex.join(recipe.arguments)}`" if recipe.arguments else "(none)"
    for line in run(command).splitlines():
        if line.startswith(START_UP_LINES):
            print(f"  {line}", flush=True)
    trained[recipe.name] = list_checkpoints(run_dir)[-1]
    return trained[recipe.name], options


def row(name: str, options: str, figures: dict[str, float], base: dict[str, float], seconds: float | None) -> str:
    """One line of the table: the figures, each with its change against the checkpoint's."""
    cells = []
    for column, value in figures.items():
        if column == "human":
            cells.append(f"{round(value / 10)} of 10" + ("" if name == "checkpoint" else
                                                        f" ({round((value - base[column]) / 10):+d})"))
        else:
            cells.append(f"{value:.1f}%" + ("" if name == "checkpoint" else f" ({value - base[column]:+.1f})"))
    wall = f"{seconds:.0f} s" if seconds is not None else ""
    return f"| {name} | {options} | " + " | ".join(cells) + f" | {wall} |"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps, two recipes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="ignored: one run per recipe")
    parser.add_argument("--checkpoint", default=None,
                        help=f"the checkpoint to fine-tune (default: runs/{BASE_RUN}'s last)")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps per recipe (default: the fine-tuning default's)")
    parser.add_argument("--rates", default="5e-4,2e-4,1e-4",
                        help="lower learning rates tried beside 2e-3, comma-separated")
    parser.add_argument("--warmups", default="",
                        help="warm-up step counts tried with the default rate, comma-separated")
    parser.add_argument("--only", default=None,
                        help="run only the recipes whose name contains this text (or one of several, split by |)")
    parser.add_argument("--threads", type=int, default=None, help="train.py --threads (default: its own choice)")
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else None)
    print(machine_summary(), flush=True)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    checkpoint = base_checkpoint(args.checkpoint, args.quick)
    train_shards, test_shards = split_digits(WORKDIR)
    sets = eval_sets(test_shards)
    base = evaluate(checkpoint, sets)
    lines = [row("checkpoint", "(not fine-tuned)", base, base, None)]
    print(lines[0], flush=True)
    trained: dict[str, Path] = {}
    figures: dict[str, dict[str, float]] = {}
    runs = WORKDIR / time.strftime("%Y%m%d-%H%M%S")
    for recipe in chosen_recipes(args):
        started = time.time()
        result, options = run_recipe(recipe, checkpoint, train_shards, steps, runs, trained, args.threads)
        seconds = time.time() - started
        figures[recipe.name] = evaluate(result, sets)
        lines.append(row(recipe.name, options, figures[recipe.name], base, seconds))
        print(lines[-1], flush=True)
    print(f"\n{steps or FINE_TUNING_DEFAULTS['steps']} fine-tuning steps on 899 scikit-learn digits (even indices), "
          "tested on the other 898; "
          f"{machine_summary()}")
    example = train_command(checkpoint, train_shards, steps, runs / "NAME", [], args.threads)
    print("each row: " + shlex.join([".venv/bin/python" if part == sys.executable else part for part in example])
          + " OPTIONS")
    print("| recipe | OPTIONS | target (test half) | MNIST held out | voices held out | human | wall |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    changes = "; ".join(f"{name}: target {f['target'] - base['target']:+.1f}, MNIST {f['MNIST'] - base['MNIST']:+.1f}, "
                        f"voices {f['voices'] - base['voices']:+.1f}" for name, f in figures.items()
                        if name in ("defaults", OLD_RECIPE))
    print(f"finetune: {len(lines) - 1} recipe(s) from the checkpoint's target {base['target']:.1f}%, "
          f"MNIST {base['MNIST']:.1f}%, voices {base['voices']:.1f}%; {changes}")


if __name__ == "__main__":
    main()
