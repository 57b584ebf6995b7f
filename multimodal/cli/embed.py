"""``multimodal embed``: files, folders, caption files or tar shards -> embeddings on disk."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from multimodal.data.modalities.registry import MEDIA_FIRST
from multimodal.apps.embedding import is_shard_spec
from multimodal.cli.command_options import (
    EXIT_STATUS_HELP,
    add_model_options,
    exit_status,
    load_model_for,
    non_negative_int,
    progress_bar,
    show_progress,
)


def add_command(commands) -> None:
    embed = commands.add_parser(
        "embed", help="embed files, folders, caption files or tar shards into .npy, .safetensors or .parquet",
        description=(
            "Embed many inputs. Files and folders (searched recursively by extension) or caption files "
            "(--modality text: one caption per line) go into one OUTPUT file: .npy (keys in OUTPUT's .keys.json "
            "sidecar, e.g. emb.npy -> emb.keys.json; modality, width and checkpoint id in its .meta.json), "
            ".safetensors or .parquet (keys and the rest in the file). Shard inputs "
            "(anything with .tar, {..} braces or pipe:) go into the folder OUTPUT, one part per shard "
            "(OUTPUT/part-<shard>.npy + .keys.json + .meta.json, which also records the shard: multimodal index "
            "reads it; shards of several folders are named by their path below the folder they share, e.g. "
            "train/shard-000000.tar -> OUTPUT/part-train__shard-000000.npy); a second run skips the parts already "
            "written. An existing "
            "OUTPUT file is refused unless --overwrite. Under accelerate launch (or with RANK/WORLD_SIZE set) each "
            "process takes its own shards. Inputs that cannot be read are reported on stderr and skipped; shard "
            "samples without the modality (a sound-only sample when embedding images) are passed over and counted."
        ),
        epilog=EXIT_STATUS_HELP,
    )
    add_model_options(embed)
    embed.add_argument("--modality", required=True, choices=MEDIA_FIRST, help="what the inputs are")
    embed.add_argument("--input", required=True, nargs="+", metavar="PATH",
                       help="files, folders, caption files (text), or shard specs")
    embed.add_argument("--output", required=True, metavar="PATH",
                       help="output file (.npy, .safetensors or .parquet) for file inputs; output folder for shard inputs")
    embed.add_argument("--format", choices=("npy", "safetensors", "parquet"), default="npy",
                       help="format of the parts written for shard inputs (default npy)")
    embed.add_argument("--num-workers", type=non_negative_int, default=0,
                       help="processes that read and preprocess inputs (default 0: the main process); with shard "
                            "inputs, the shards read at once, one process each")
    embed.add_argument("--overwrite", action="store_true",
                       help="replace an existing OUTPUT file; with shard inputs, embed again the parts already "
                            "complete (default: refuse an existing file; keep complete parts)")
    embed.set_defaults(run=run, command_parser=embed)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.apps import embedding, embedding_outputs

    shard_inputs = [is_shard_spec(text) for text in args.input]
    if any(shard_inputs) and not all(shard_inputs):
        parser.error("argument --input: give either shard specs or files/folders, not both")
    if all(shard_inputs):
        if Path(args.output).suffix.lower().lstrip(".") in embedding.OUTPUT_FORMATS:
            parser.error(f"argument --output: with shard inputs the output is a folder of parts (one per shard), "
                         f"got the file name {args.output}; give a folder and choose the parts' format with --format")
    else:
        try:
            embedding_outputs.output_format(args.output)
        except ValueError as error:
            parser.error(f"argument --output: {error}")
        missing = [text for text in args.input if not Path(text).exists()]
        if missing:
            parser.error(f"argument --input: {missing[0]} does not exist (expected files, folders or shard specs)")
        embedding_outputs.check_new_output(args.output, overwrite=args.overwrite)  # before the model loads
    rank, world_size, process_device = embedding.process_place()
    if not all(shard_inputs) and world_size > 1:
        parser.error(f"argument --input: files are embedded by one process, but {world_size} were launched; "
                     "give shard inputs to share the work, or run one process")
    model = load_model_for(args, process_device)
    if args.modality not in model.modalities:
        parser.error(f"argument --modality: this checkpoint encodes {model.modalities}, not {args.modality}")

    bar = progress_bar(None, "input", f"embed {args.modality}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""))

    def progress(state) -> None:
        bar.total = None if state.total is None else state.total
        postfix = {"skipped": state.skipped}
        if state.parts_total is not None:
            postfix["parts"] = f"{state.parts_done}/{state.parts_total}"
        show_progress(bar, state.embedded + state.skipped + state.absent, **postfix)

    try:
        if all(shard_inputs):
            result = embedding.embed_shards(model, args.modality, list(args.input), args.output, format=args.format,
                                            rank=rank, world_size=world_size, num_workers=args.num_workers,
                                            overwrite=args.overwrite, progress=progress)
        else:
            result = embedding.embed_files(model, args.modality, args.input, args.output,
                                           num_workers=args.num_workers, overwrite=args.overwrite, progress=progress)
    finally:
        bar.close()
    for key, reason in result.skipped:
        print(f"skipped {key}: {reason}", file=sys.stderr)
    written = ", ".join(str(path) for path in result.written) or "nothing new"
    resumed = f"; {len(result.resumed)} part(s) already complete, left as they were" if result.resumed else ""
    absent = (f"; {result.num_absent} shard sample(s) have no {args.modality} (not embedded)"
              if result.num_absent else "")
    print(f"embedded {result.num_embedded} {args.modality} input(s) into {written}{resumed}; "
          f"skipped {len(result.skipped)}{absent}")
    return exit_status(len(result.skipped), "input(s)")
