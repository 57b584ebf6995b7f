"""``multimodal search``: text, image or audio queries against an index; or near-duplicate pairs within it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from multimodal.cli.common import DEVICE_HELP, PRECISION_HELP, checkpoint_dir, positive_int, resolve_device


def add_command(commands) -> None:
    search = commands.add_parser(
        "search", help="search an index with text, image or audio queries, or list its near-duplicates",
        description=(
            "Embed each query with the checkpoint the index was built from (or --checkpoint, which must be the "
            "same checkpoint: another one embeds into another space) and print the best hits: rank, cosine score, "
            "key, source, caption. Any modality the checkpoint encodes may query an index of any modality. "
            "Queries are searched in the order given. --duplicates T lists the pairs of rows of the index whose "
            "similarity is at least T instead."
        ),
    )
    search.add_argument("--index", required=True, metavar="DIR", help="an index folder written by multimodal index")
    search.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text query (repeatable)")
    search.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file query (repeatable)")
    search.add_argument("--audio", action="append", default=[], metavar="FILE", help="an audio file query (repeatable)")
    search.add_argument("--duplicates", type=float, metavar="THRESHOLD",
                        help="list pairs of rows with cosine similarity >= THRESHOLD instead of searching")
    search.add_argument("-k", "--top-k", type=positive_int, default=10, help="hits per query (default 10)")
    search.add_argument("--nprobe", type=positive_int, help="ivfpq indexes: lists searched (default: the index's tuned value)")
    search.add_argument("--json", action="store_true",
                        help='print JSON: a list with one {"query", "hits": [{"rank", "id", "score", "key", "source", '
                             '"caption"}]} per query (with --duplicates: a list of {"a", "b", "score"})')
    search.add_argument("--checkpoint", type=checkpoint_dir, metavar="DIR",
                        help="the checkpoint the index was built from, when it has moved (default: the path it records)")
    search.add_argument("--batch-size", type=positive_int, default=32, help="queries encoded together (default 32)")
    search.add_argument("--device", default="auto", help=DEVICE_HELP)
    search.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help=PRECISION_HELP)
    search.set_defaults(run=run, command_parser=search)


def _queries(args, parser) -> list[tuple[str, str]]:
    queries = [("text", text) for text in args.text]
    for modality in ("image", "audio"):
        for name in getattr(args, modality):
            if not Path(name).is_file():
                parser.error(f"argument --{modality}: {name} is not a file")
            queries.append((modality, name))
    if args.duplicates is None and not queries:
        parser.error("give a query: --text, --image or --audio (or --duplicates THRESHOLD)")
    if args.duplicates is not None and queries:
        parser.error("argument --duplicates: lists pairs within the index; give no query with it")
    if any(not text.strip() for text in args.text):
        parser.error("argument --text: a query must not be empty")
    return queries


def _print_duplicates(index, pairs, as_json: bool) -> None:
    records = []
    for a, b, score in pairs:
        records.append({"a": index.hit(a, score).to_dict(), "b": index.hit(b, score).to_dict(), "score": score})
    if as_json:
        print(json.dumps(records, indent=2))
        return
    for record in records:
        print(f"{record['score']:.4f}  {record['a']['key']}  {record['b']['key']}")
    print(f"{len(records)} pair(s) with similarity >= threshold among {index.count} rows")


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.search import describe_hits, embed_queries, find_duplicates, load_index_model, open_index

    queries = _queries(args, parser)
    index = open_index(args.index)
    if args.duplicates is not None:
        if not -1.0 <= args.duplicates <= 1.0:
            parser.error(f"argument --duplicates: a cosine similarity in [-1, 1], got {args.duplicates}")
        _print_duplicates(index, find_duplicates(index, args.duplicates), args.json)
        return 0
    model = load_index_model(index, args.checkpoint, device=resolve_device(args.device), precision=args.precision,
                             batch_size=args.batch_size)
    results = []
    for modality, query in queries:
        try:
            vector = embed_queries(model, modality, [query if modality == "text" else Path(query)])
        except (ValueError, TypeError, OSError) as error:
            what = f"--{modality} {query}" if modality != "text" else f"--text {query!r}"
            raise ValueError(f"{what}: {str(error).split(': ', 1)[-1]}") from None
        hits = index.search(vector, args.top_k, nprobe=args.nprobe)[0]
        results.append({"query": {"modality": modality, "input": query}, "hits": describe_hits(hits)})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        query = result["query"]
        print(f"{query['modality']} {query['input']!r}: {len(result['hits'])} hit(s) among {index.count} "
              f"{index.modality} row(s)")
        for hit in result["hits"]:
            shown = hit["source"] if hit["source"] and hit["source"] != hit["key"] else ""
            caption = f"  \"{hit['caption']}\"" if hit["caption"] else ""
            print(f"  {hit['rank']:>3}  {hit['score']:.4f}  {hit['key']}{'  ' + shown if shown else ''}{caption}")
    return 0
