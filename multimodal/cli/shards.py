"""``multimodal shards``: webdataset tar shards from a folder or a manifest."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from multimodal.cli.common import byte_size, exit_status, fraction, positive_int, progress_bar


def add_command(commands) -> None:
    shards = commands.add_parser(
        "shards", help="write webdataset tar shards from a folder or a manifest",
        description=(
            "Write tar shards ({prefix}-000000.tar ... and sizes.json) from a folder (media with same-stem .txt "
            "captions, or one sub-folder per class) or a .csv/.jsonl manifest (path, caption, other columns kept "
            "in .json). Every media file is decoded first; what fails is skipped and listed with its reason."
        ),
    )
    shards.add_argument("--input", required=True, metavar="FOLDER|MANIFEST", help="a folder, or a .csv / .jsonl manifest")
    shards.add_argument("--output", required=True, metavar="DIR", help="where the shards go")
    shards.add_argument("--max-samples", type=positive_int, default=10_000, help="samples per shard at most (default 10000)")
    shards.add_argument("--max-bytes", type=byte_size, default=1 << 30,
                        help="bytes per shard at most, e.g. 500M or 1G (default 1G)")
    shards.add_argument("--validation-fraction", type=fraction, default=0.0,
                        help="share of samples written to OUTPUT/val (the rest to OUTPUT/train), in [0, 1) (default 0)")
    shards.add_argument("--seed", type=int, default=0, help="seeds the shuffle and the validation split (default 0)")
    shards.add_argument("--prefix", default="shard", help="shard file name prefix (default shard)")
    shards.add_argument("--layout", choices=("auto", "captions", "classes"), default="auto",
                        help="folder layout (default auto: captions when .txt files exist)")
    shards.add_argument("--caption-template", help="classes layout: caption with {} for the class name")
    shards.add_argument("--overwrite", action="store_true", help="replace shards with the same prefix in OUTPUT")
    shards.set_defaults(run=run, command_parser=shards)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.writer import samples_from_folder, samples_from_manifest, write_shards

    source = Path(args.input)
    if source.is_dir():
        samples = samples_from_folder(source, layout=args.layout, caption_template=args.caption_template)
    elif source.is_file():
        if source.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
            parser.error(f"argument --input: {source} is a file but not a .csv or .jsonl manifest")
        samples = samples_from_manifest(source)
    else:
        parser.error(f"argument --input: {source} does not exist (expected a folder or a .csv/.jsonl manifest)")
    bar = progress_bar(len(samples), "sample", "shards")

    def progress(state) -> None:
        bar.n = state.processed
        bar.set_postfix(written=state.written, skipped=state.skipped, refresh=False)
        bar.refresh()

    try:
        result = write_shards(samples, args.output, prefix=args.prefix, max_samples_per_shard=args.max_samples,
                              max_bytes_per_shard=args.max_bytes, validation_fraction=args.validation_fraction,
                              seed=args.seed, overwrite=args.overwrite, progress=progress)
    finally:
        bar.close()
    for origin, reason in result.skipped:
        print(f"skipped {origin}: {reason}", file=sys.stderr)
    for name, split in result.splits.items():
        print(f"{name}: {split.num_samples} samples in {len(split.shards)} shard(s): {split.spec or '(none)'}")
    print(f"written {result.num_written}, skipped {len(result.skipped)}")
    return exit_status(len(result.skipped), "input(s)")
