"""``multimodal index``: outputs of ``multimodal embed`` -> a search index directory (build, or add to one)."""
from __future__ import annotations

import argparse
import sys

from multimodal.cli.command_options import checkpoint_dir, non_negative_int, positive_int
from multimodal.data.modalities.registry import MEDIA_FIRST
from multimodal.apps.search.plan import INDEX_TYPES


def add_command(commands) -> None:
    index = commands.add_parser(
        "index", help="build a FAISS search index from outputs of multimodal embed, or add to one",
        description=(
            "Index embeddings written by multimodal embed (.npy + .keys.json + .meta.json, .safetensors, .parquet; "
            "files, or folders of per-shard parts) into the folder OUTPUT: the FAISS index, the exact vectors, each "
            "row's key, source and caption, and manifest.json (checkpoint id, modality, width, count, index type and "
            "parameters). Each input records its modality and, for a shard part, its shard; .npy outputs of earlier "
            "versions record neither: give --modality, and --shards to find each part's shard by its name (a part "
            "whose name several of the shards have is refused, not guessed). --index-type auto chooses flat (every "
            "vector scored) up to 100,000 vectors and IVF-PQ above, both re-ranked exactly in float32. --add adds new "
            "inputs to an existing index without rebuilding it; inputs already in it are left out. Nothing is "
            "written unless the whole index is."
        ),
    )
    index.add_argument("--input", required=True, nargs="+", metavar="PATH",
                       help="output files of multimodal embed, or folders of its parts")
    index.add_argument("--output", required=True, metavar="DIR", help="the index folder")
    index.add_argument("--checkpoint", type=checkpoint_dir, metavar="DIR",
                       help="the checkpoint that embedded the inputs (required to build; --add defaults to the "
                            "index's own)")
    index.add_argument("--modality", choices=MEDIA_FIRST,
                       help="what the inputs embed: needed only for .npy outputs of earlier versions, which do "
                            "not record it (with no .meta.json); refused when an input records another")
    index.add_argument("--shards", metavar="SPEC",
                       help="the shard spec that parts which do not record their shard (.npy parts of earlier "
                            "versions) were embedded from: finds each one's shard by its name, so hits show the "
                            "sample and its caption; a name several of the shards have is refused")
    index.add_argument("--add", action="store_true", help="add the inputs to the index at OUTPUT")
    index.add_argument("--overwrite", action="store_true", help="replace an index already at OUTPUT")
    index.add_argument("--index-type", choices=INDEX_TYPES, default="auto",
                       help="auto (by size, default), flat (every vector scored) or ivfpq")
    index.add_argument("--nlist", type=positive_int, help="ivfpq: inverted lists (default about 4 sqrt(N))")
    index.add_argument("--pq-m", type=positive_int, help="ivfpq: bytes per vector, a divisor of the width (default width/8)")
    index.add_argument("--nprobe", type=positive_int,
                       help="ivfpq: lists searched per query (default: tuned to recall@10 >= 0.97 against exact search)")
    index.add_argument("--seed", type=non_negative_int, default=0, help="training sample and k-means seed (default 0)")
    index.add_argument("--no-captions", action="store_true",
                       help="do not read shard samples' captions (saves one pass over the shards)")
    index.set_defaults(run=run, command_parser=index)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.apps.search import add_to_index, build_index, index_size, open_index

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.add:
        for option in ("overwrite", "nlist", "pq_m", "nprobe"):
            if getattr(args, option):
                parser.error(f"argument --{option.replace('_', '-')}: not allowed with --add (the index keeps its parameters)")
        if args.index_type != "auto":
            parser.error("argument --index-type: not allowed with --add (the index keeps its type)")
        result = add_to_index(args.output, args.input, checkpoint=args.checkpoint, modality=args.modality,
                              shards=args.shards, read_captions=not args.no_captions, progress=progress)
        index = open_index(args.output)
        already = f"; {len(result.already_indexed)} input(s) already in the index, left out" if result.already_indexed else ""
        print(f"added {result.rows_added} {index.modality} vector(s) from {len(result.added)} input(s) to {args.output}: "
              f"{index.count} in all ({index.plan.factory}){already}")
        return 0
    if args.checkpoint is None:
        parser.error("argument --checkpoint: required to build an index (the index records its id)")
    index = build_index(args.input, args.output, checkpoint=args.checkpoint, modality=args.modality, shards=args.shards,
                        index_type=args.index_type, nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe,
                        seed=args.seed, read_captions=not args.no_captions, overwrite=args.overwrite,
                        progress=progress)
    plan = index.plan
    size = index_size(args.output)["total"] / (1 << 20)
    tuned = (f", nprobe {plan.nprobe}, re-ranking {plan.refine_factor}x k candidates "
             f"(recall@10 {plan.tuning['recall@10']:.3f} on {plan.tuning['queries']} of its vectors)"
             if plan.type == "ivfpq" else " (every vector scored, the best re-scored in float32)")
    print(f"indexed {index.count} {index.modality} vector(s) of {index.dim} dimensions into {args.output}: "
          f"{plan.factory}{tuned}; {size:.1f} MiB")
    return 0
