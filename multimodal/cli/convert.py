"""``multimodal convert``: open_clip / Hugging Face weights -> a checkpoint directory of ours."""
from __future__ import annotations

import argparse
from pathlib import Path

from multimodal.cli.command_options import EXIT_STATUS_HELP


def _channels(text: str) -> tuple[float, float, float]:
    """An argparse ``type``: three comma-separated numbers, R,G,B."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B such as 0.5,0.5,0.5, got {text!r}")
    return values


def add_command(commands) -> None:
    convert = commands.add_parser(
        "convert", help="convert open_clip / Hugging Face CLIP / Hugging Face AST weights into a checkpoint",
        description="Convert another project's weights (a file or a directory; nothing is downloaded) into a "
                    "checkpoint directory of ours.",
        epilog=EXIT_STATUS_HELP,
    )
    convert.add_argument("--from", dest="source_kind", required=True, choices=("open_clip", "hf-clip", "hf-ast"),
                         help="what SOURCE is")
    convert.add_argument("source", metavar="SOURCE", help="weights file or directory")
    convert.add_argument("--output", required=True, metavar="DIR", help="the checkpoint directory to write")
    # The options' dest names are convert_checkpoint's arguments; which kind takes which is multimodal.interop.converters.OPTIONS.
    convert.add_argument("--activation", choices=("gelu", "quick_gelu"),
                         help="open_clip: the MLP activation (quick_gelu for OpenAI weights and *-quickgelu models)")
    convert.add_argument("--model-config", metavar="JSON", help="open_clip: the model config (e.g. ViT-B-32.json)")
    convert.add_argument("--image-mean", type=_channels, metavar="R,G,B",
                         help="open_clip: the per-channel image mean the weights were trained with; needed for a bare "
                              "weights file (epoch_N.pt), which does not record it (OpenAI's and most LAION weights: "
                              "0.48145466,0.4578275,0.40821073); replaces a Hub directory's")
    convert.add_argument("--image-std", type=_channels, metavar="R,G,B",
                         help="open_clip: the per-channel image standard deviation, as --image-mean (OpenAI's: "
                              "0.26862954,0.26130258,0.27577711)")
    convert.add_argument("--config", metavar="JSON", help="hf-clip / hf-ast: config.json of a bare weights file")
    convert.add_argument("--vocab-path", metavar="FILE", help="CLIP's bpe_simple_vocab_16e6.txt.gz "
                                                              "(default: the one in the installed open_clip)")
    convert.set_defaults(run=run, command_parser=convert)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal import interop
    from multimodal.interop.converters import ALL_OPTIONS, OPTIONS

    if not Path(args.source).exists():
        parser.error(f"argument SOURCE: {args.source} does not exist (expected a weights file or a directory)")
    options = {name: getattr(args, name) for name in ALL_OPTIONS if getattr(args, name) is not None}
    for name in options:
        if name not in OPTIONS[args.source_kind]:
            parser.error(f"argument --{name.replace('_', '-')}: does not apply to --from {args.source_kind}")
    output = interop.convert_checkpoint(args.source_kind, args.source, args.output, **options)
    print(f"converted {args.source} ({args.source_kind}) into {output}")
    return 0
