"""``multimodal shards``: webdataset tar shards from a folder or a manifest.

Standard output: the shards written per split and the image statistics with the
training options that use them. Standard error: how a folder was read (its layout and
why), the progress bar and a summary of what was skipped or not used, a few lines by
reason (every sample and file in ``OUTPUT/skipped.jsonl``), and how many clips and captions are longer than a
model's audio window and text context (``--preset``; caption tokens counted with
``--tokenizer``, else words), which training would cut. The exit status is 1 when
more than ``--max-skip-fraction`` of the samples were skipped (the shards written are kept).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from multimodal.cli.command_options import byte_size, checked, fraction, positive_int, progress_bar, show_progress
from multimodal.data.writing.listing import CAPTION_SOURCES, LAYOUTS
from multimodal.presets import PRESETS

DEFAULT_MAX_SKIP_FRACTION = 0.1
_NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "gray": (128, 128, 128)}

skip_fraction = checked(float, lambda value: 0.0 <= value <= 1.0, "a number in [0, 1]")


def colour(text: str) -> tuple[int, int, int]:
    """``white``, ``black``, ``grey``, ``#RRGGBB`` or ``R,G,B`` (0-255 each) -> (R, G, B)."""
    name = text.strip().lower()
    if name in _NAMED_COLOURS:
        return _NAMED_COLOURS[name]
    if re.fullmatch(r"#[0-9a-f]{6}", name):
        return tuple(int(name[i : i + 2], 16) for i in (1, 3, 5))
    parts = [part.strip() for part in name.strip("[]()").split(",")]
    if len(parts) == 3 and all(part.isdigit() and int(part) <= 255 for part in parts):
        return tuple(int(part) for part in parts)
    raise argparse.ArgumentTypeError(f"expected white, black, grey, #RRGGBB or R,G,B with 0-255 each, got {text!r}")


def add_command(commands) -> None:
    shards = commands.add_parser(
        "shards", help="write webdataset tar shards from a folder or a manifest",
        description=(
            "Write tar shards ({prefix}-000000.tar ... and sizes.json) from a folder (media with same-name .txt "
            "captions, one sub-folder per class, or captions from file names with --captions names) or a "
            ".csv/.jsonl manifest (path, caption, other columns kept in .json). Files sharing a name are one sample "
            "(guitar.svg + guitar.ogg); two of one modality (cow.svg, cow.webp) are two. Every media file is decoded "
            "first; what fails is skipped, summarised by reason and listed in OUTPUT/skipped.jsonl, with every other "
            "file not used (files of types not read are also counted by type). The images' "
            "per-channel mean and std go to image_stats.json beside sizes.json; with class folders, the class names in "
            "label order to classes.json. Clips longer than the --preset "
            "model's audio window and captions longer than its text context, which training cuts, are counted."
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
    shards.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="folder layout: captions (a same-name .txt beside each media file) or classes (one "
                             "sub-folder per class, labelled in sorted order) (default auto: captions when half or "
                             "more of the pictures or of the sounds have a .txt, else classes; the choice is printed)")
    shards.add_argument("--captions", choices=CAPTION_SOURCES, default="auto",
                        help="where captions come from: auto (by the layout), names (each file's name, _ and - as "
                             "spaces: polar_bear.webp -> 'polar bear'), names+folders (its folders, then its name: "
                             "'animals, arctic: polar bear') (default auto)")
    shards.add_argument("--caption-template", metavar="TEMPLATE",
                        help="the caption with {} for the class name (classes layout; default 'a photo of {}.' for "
                             "images, 'the sound of {}.' for sounds) or for the name (--captions names; default '{}')")
    shards.add_argument("--caption-lines", choices=("lines", "first", "whole"), default="lines",
                        help="a caption file of several lines: each non-empty line is one caption, stored as a list "
                             "in the sample's .json (lines: training draws one, evaluation takes the first); only "
                             "its first line (first); or the whole text as one caption (whole) (default lines)")
    shards.add_argument("--image-background", type=colour, default=(255, 255, 255), metavar="COLOUR",
                        help="what transparent pixels are composited onto for the image statistics: white, black, "
                             "grey, #RRGGBB or R,G,B; train with the same --model.image_preprocess.background "
                             "(default white)")
    shards.add_argument("--max-skip-fraction", type=skip_fraction, default=DEFAULT_MAX_SKIP_FRACTION,
                        help="exit with status 1 when more than this share of the samples is skipped (the shards "
                             f"written are kept), in [0, 1]; 1 accepts any (default {DEFAULT_MAX_SKIP_FRACTION})")
    shards.add_argument("--overwrite", action="store_true", help="replace shards with the same prefix in OUTPUT")
    shards.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="the model preset whose audio window and text context the clips and captions are "
                             "measured against, to count what training would cut (default tiny)")
    shards.add_argument("--tokenizer", metavar="FILE",
                        help="a tokenizer.json (or a checkpoint folder holding one) to count caption tokens with; "
                             "without it captions are counted in words, a lower bound of their tokens")
    shards.set_defaults(run=run, command_parser=shards)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.writing.writer import list_folder, samples_from_manifest, write_shards

    lengths = length_limits(args.preset, args.tokenizer, parser)  # a bad --tokenizer fails before any work
    source = Path(args.input)
    if source.is_dir():
        listing = list_folder(source, layout=args.layout, captions=args.captions, caption_template=args.caption_template)
        print(f"layout: {listing.decision}", file=sys.stderr)
        samples, class_names = listing.samples, listing.class_names
    elif source.is_file():
        if source.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
            parser.error(f"argument --input: {source} is a file but not a .csv or .jsonl manifest")
        if args.captions != "auto":
            parser.error("argument --captions: a manifest brings its captions; --captions names reads a folder")
        samples, class_names = samples_from_manifest(source), None
    else:
        parser.error(f"argument --input: {source} does not exist (expected a folder or a .csv/.jsonl manifest)")
    bar = progress_bar(len(samples), "sample", "shards")

    def progress(state) -> None:
        show_progress(bar, state.processed, written=state.written, skipped=state.skipped)

    try:
        result = write_shards(samples, args.output, prefix=args.prefix, max_samples_per_shard=args.max_samples,
                              max_bytes_per_shard=args.max_bytes, validation_fraction=args.validation_fraction,
                              seed=args.seed, overwrite=args.overwrite, caption_lines=args.caption_lines,
                              background=args.image_background, progress=progress, lengths=lengths,
                              class_names=class_names)
    finally:
        bar.close()
    print_report(result, args.image_background, args.preset)
    if result.skip_fraction > args.max_skip_fraction:
        raise ValueError(
            f"skipped {len(result.skipped):,} of {result.num_listed:,} samples ({result.skip_fraction:.1%}), more than "
            f"--max-skip-fraction {args.max_skip_fraction:g}; the {result.num_written:,} written are in {args.output}. "
            f"Reasons above, one line per sample in {result.skipped_file}; fix the input or pass "
            f"--max-skip-fraction 1 to accept"
        )
    return 0


def length_limits(preset_name: str, tokenizer_path: str | None, parser: argparse.ArgumentParser):
    """The preset's audio window and text context, with the tokenizer at ``tokenizer_path`` (None: count words)."""
    from multimodal.checkpoint import load_tokenizer
    from multimodal.presets import preset
    from multimodal.training.truncation import model_limits

    tokenizer = None
    if tokenizer_path is not None:
        try:
            tokenizer = load_tokenizer(tokenizer_path)
        except (OSError, ValueError) as error:
            parser.error(f"argument --tokenizer: {error}")
        if tokenizer is None:
            parser.error(f"argument --tokenizer: {tokenizer_path} is a folder without a tokenizer.json")
    return model_limits(preset(preset_name), tokenizer)


def _print_unused(result) -> None:
    """Files of types read that no sample uses (a second picture's SVG left out, a .txt where captions
    come from names), a line per reason; files of types not read have their own line."""
    from multimodal.data.writing.writer import UNUSED_FILE_REASONS

    counts = {reason: count for reason, count in result.unused_counts.items() if reason != "type_not_read"}
    if not counts:
        return
    print(f"{sum(counts.values()):,} other files not used (each named in {result.skipped_file}):", file=sys.stderr)
    first = {}
    for entry in result.unused_files:
        first.setdefault(entry.reason, entry.origin)
    for reason, count in counts.items():
        print(f"  {count:>7,} {reason}: {UNUSED_FILE_REASONS[reason]} (e.g. {first[reason]})", file=sys.stderr)


def print_report(result, background: tuple[int, int, int], preset_name: str = "tiny") -> None:
    """The summary: skips, ignored files and what training would cut to standard error; shards and
    statistics to standard output."""
    from multimodal.data.preprocess.image_stats import FILE_NAME as IMAGE_STATS_FILE
    from multimodal.data.writing.writer import SKIP_REASONS
    from multimodal.training.truncation import written_truncation_lines

    if result.skipped:
        print(f"skipped {len(result.skipped):,} of {result.num_listed:,} samples "
              f"(one line per sample in {result.skipped_file}):", file=sys.stderr)
        first = {}
        for skip in result.skipped:
            first.setdefault(skip.reason, skip.origin)
        for reason, count in result.skip_counts.items():
            print(f"  {count:>7,} {reason}: {SKIP_REASONS[reason]} (e.g. {first[reason]})", file=sys.stderr)
    if result.ignored_files:
        counts = ", ".join(f"{count:,} {f'.{extension}' if extension else '(no extension)'}"
                           for extension, count in result.ignored_files.items())
        print(f"ignored files of types not read: {counts} (each named in {result.skipped_file})", file=sys.stderr)
    _print_unused(result)
    if result.multi_line_captions:
        what = {
            "lines": "each non-empty line is one caption, as a list in the sample's .json "
                     "(--caption-lines first keeps the first line)",
            "first": "their first line is the caption",
            "whole": "each whole text is one caption",
        }[result.caption_lines]
        print(f"{result.multi_line_captions:,} caption files have several lines: {what}", file=sys.stderr)
    if result.svgs_rasterised:
        print(f"{result.svgs_rasterised:,} SVG drawings rasterised to PNG", file=sys.stderr)
    if result.lengths is not None:
        for line in written_truncation_lines(result.lengths, preset_name):
            print(line, file=sys.stderr)
    for name, split in result.splits.items():
        print(f"{name}: {split.num_samples:,} samples in {len(split.shards)} shard(s): {split.spec or '(none)'}")
    print(f"written {result.num_written:,} of {result.num_listed:,} samples, skipped {len(result.skipped):,}")
    stats = result.training_split.image_stats
    if stats is not None:
        mean = ", ".join(f"{value:.4f}" for value in stats.mean)
        std = ", ".join(f"{value:.4f}" for value in stats.std)
        print(f"image mean [{mean}], std [{std}] over {stats.images_measured:,} images "
              f"({result.training_split.directory / IMAGE_STATS_FILE}); train with:")
        options = stats.override_arguments()
        if tuple(background) != (255, 255, 255):
            options += f" --model.image_preprocess.background '[{', '.join(str(value) for value in background)}]'"
        print(f"  {options}")
