"""``multimodal convert``: open_clip / Hugging Face weights -> a checkpoint directory of ours."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_command(commands) -> None:
    convert = commands.add_parser(
        "convert", help="convert open_clip / Hugging Face CLIP / Hugging Face AST weights into a checkpoint",
        description="Convert another project's weights (a file or a directory; nothing is downloaded) into a "
                    "checkpoint directory of ours.",
    )
    convert.add_argument("--from", dest="source_kind", required=True, choices=("open_clip", "hf-clip", "hf-ast"),
                         help="what SOURCE is")
    convert.add_argument("source", metavar="SOURCE", help="weights file or directory")
    convert.add_argument("--output", required=True, metavar="DIR", help="the checkpoint directory to write")
    convert.add_argument("--activation", choices=("gelu", "quick_gelu"),
                         help="open_clip: the MLP activation (quick_gelu for OpenAI weights and *-quickgelu models)")
    convert.add_argument("--model-config", metavar="JSON", help="open_clip: the model config (e.g. ViT-B-32.json)")
    convert.add_argument("--config", metavar="JSON", help="hf-clip / hf-ast: config.json of a bare weights file")
    convert.add_argument("--vocab-path", metavar="FILE", help="CLIP's bpe_simple_vocab_16e6.txt.gz "
                                                              "(default: the one in the installed open_clip)")
    convert.set_defaults(run=run, command_parser=convert)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.interop import convert_checkpoint

    if not Path(args.source).exists():
        parser.error(f"argument SOURCE: {args.source} does not exist (expected a weights file or a directory)")
    options = {"activation": args.activation, "model_config": args.model_config, "config": args.config,
               "vocab_path": args.vocab_path}
    allowed = {"open_clip": {"activation", "model_config", "vocab_path"}, "hf-clip": {"config", "vocab_path"},
               "hf-ast": {"config"}}[args.source_kind]
    for name, value in options.items():
        if value is not None and name not in allowed:
            parser.error(f"argument --{name.replace('_', '-')}: does not apply to --from {args.source_kind}")
    output = convert_checkpoint(args.source_kind, args.source, args.output,
                                **{name: value for name, value in options.items() if value is not None})
    print(f"converted {args.source} ({args.source_kind}) into {output}")
    return 0
