"""``multimodal interpolate``: blend a fine-tuned checkpoint with the one it started from (WiSE-FT)."""
from __future__ import annotations

import argparse

from multimodal.cli.command_options import EXIT_STATUS_HELP, checked, checkpoint_dir

unit_interval = checked(float, lambda value: 0.0 <= value <= 1.0, "a number in [0, 1]")


def add_command(commands) -> None:
    interpolate = commands.add_parser(
        "interpolate", help="blend two checkpoints of one architecture: (1 - alpha) * A + alpha * B (WiSE-FT)",
        description="Write the checkpoint whose weights are (1 - alpha) * A + alpha * B, typically A the pretrained "
                    "checkpoint and B the one fine-tuned from it (WiSE-FT: robust fine-tuning of zero-shot models). "
                    "The output holds B's config and tokenizer; every command reads it.",
        epilog=EXIT_STATUS_HELP,
    )
    interpolate.add_argument("--from", dest="a", required=True, type=checkpoint_dir, metavar="A",
                             help="the checkpoint at alpha 0 (e.g. the pretrained one)")
    interpolate.add_argument("--to", dest="b", required=True, type=checkpoint_dir, metavar="B",
                             help="the checkpoint at alpha 1 (e.g. the fine-tuned one)")
    interpolate.add_argument("--alpha", required=True, type=unit_interval,
                             help="B's weight in the blend, in [0, 1] (WiSE-FT's usual choice: 0.5)")
    interpolate.add_argument("--output", required=True, metavar="DIR",
                             help="the checkpoint directory to write (an existing checkpoint there is replaced)")
    interpolate.set_defaults(run=run, command_parser=interpolate)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.pretrained import interpolate_checkpoints

    output = interpolate_checkpoints(args.a, args.b, args.alpha, args.output)
    print(f"wrote {output}: {1 - args.alpha:g} x {args.a} + {args.alpha:g} x {args.b}")
    return 0
