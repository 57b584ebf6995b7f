"""``multimodal tokenizer``: train the byte-level BPE caption tokenizer."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from multimodal.apps.embedding import is_shard_spec
from multimodal.cli.command_options import positive_int
from multimodal.data.modalities.registry import CAPTION_MODALITY


def add_command(commands) -> None:
    tokenizer = commands.add_parser(
        "tokenizer", help="train the byte-level BPE caption tokenizer",
        description="Train our byte-level BPE tokenizer on captions: text files (one caption per line) or tar shards "
                    "(their .txt or json text/caption).",
    )
    tokenizer.add_argument("--captions", required=True, nargs="+", metavar="FILE_OR_SHARDS",
                           help="caption files or shard specs")
    tokenizer.add_argument("--vocab-size", required=True, type=positive_int, help="largest vocabulary (>= 259)")
    tokenizer.add_argument("--min-frequency", type=positive_int, default=2,
                           help="merge a pair only if it occurs this often (default 2)")
    tokenizer.add_argument("--output", required=True, metavar="tokenizer.json", help="where to write it")
    tokenizer.set_defaults(run=run, command_parser=tokenizer)


def _is_caption_shards(source: str) -> bool:
    """A shard spec, or a folder of .tar shards (as `multimodal shards` writes)."""
    return is_shard_spec(source) or (Path(source).is_dir() and any(Path(source).glob("*.tar")))


def _captions(sources: Sequence[str]):
    from multimodal.data.pipeline.shard_reader import expand_shards, read_shard
    from multimodal.data.tokenization.bpe_tokenizer import read_caption_files
    from multimodal.data.pipeline.sample_fields import UnusableSample
    from multimodal.apps.embedding import shard_sample_input

    for source in sources:
        if _is_caption_shards(source):
            for url in expand_shards(source):
                for sample in read_shard(url, []):
                    try:
                        yield shard_sample_input(sample, CAPTION_MODALITY)
                    except UnusableSample:
                        continue
        else:
            yield from read_caption_files(source)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.tokenization.bpe_tokenizer import MIN_VOCAB_SIZE, Tokenizer

    if args.vocab_size < MIN_VOCAB_SIZE:
        parser.error(f"argument --vocab-size: must be at least {MIN_VOCAB_SIZE} (256 bytes + 3 special tokens), "
                     f"got {args.vocab_size}")
    for source in args.captions:
        if not _is_caption_shards(source) and not Path(source).is_file():
            parser.error(f"argument --captions: {source} is neither a caption file, a shard spec nor a folder of shards")
    tokenizer = Tokenizer.train(_captions(args.captions), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    path = tokenizer.save(args.output)
    print(f"tokenizer with {tokenizer.vocab_size} ids written to {path}")
    return 0
