"""``multimodal demo``: build the built-in demo dataset and print where it is."""
from __future__ import annotations

import argparse

from multimodal.cli.command_options import progress_bar, show_progress


def add_command(commands) -> None:
    demo = commands.add_parser(
        "demo", help="build the spoken and handwritten digits demo dataset and print where it is",
        description="Build (once; later calls reuse it) the demo dataset of handwritten digit images and spoken "
                    "digits, and print its shard specs.",
    )
    demo.add_argument("--cache", metavar="DIR", help="where it lives (default $MULTIMODAL_CACHE or ~/.cache/multimodal)")
    demo.add_argument("--scale", type=float, default=1.0, help="fraction of the data, in (0, 1] (default 1)")
    demo.add_argument("--seed", type=int, default=0, help="seeds every random choice (default 0)")
    demo.add_argument("--force", action="store_true", help="rebuild even when a complete build exists")
    demo.set_defaults(run=run, command_parser=demo)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.demo.dataset import SPLITS, build_demo

    if not 0 < args.scale <= 1:
        parser.error(f"argument --scale: expected a number in (0, 1], got {args.scale}")
    bars: dict[str, object] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = progress_bar(total, "item", stage)
        bar = bars[stage]
        bar.total = total
        show_progress(bar, done)

    try:
        paths = build_demo(args.cache, force=args.force, progress=progress, scale=args.scale, seed=args.seed)
    finally:
        for bar in bars.values():
            bar.close()
    print(f"demo data set in {paths.root}")
    for split in SPLITS:
        print(f"  {split}: {paths.num_samples.get(split, 0)} samples: {paths.shards(split)}")
    print(f"  captions: {paths.captions_file}")
    print(f"  class names: {', '.join(paths.class_names)}")
    return 0
