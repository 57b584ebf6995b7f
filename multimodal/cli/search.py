"""``multimodal search``: text, image or audio queries against an index; or near-duplicate pairs within it."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multimodal.data.modalities.registry import get_modality
from multimodal.cli.command_options import (
    DEVICE_HELP,
    PRECISION_HELP,
    checkpoint_dir,
    exit_status,
    one_line,
    positive_int,
    resolve_device,
)


class _QueryAction(argparse.Action):
    """``--text`` / ``--image`` / ``--audio``: appended to its own list and, as (modality, value), to
    ``args.queries``, which keeps the order of the command line across the three options."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        # New lists, never the defaults appended to in place: argparse shares those between parses.
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), values])
        namespace.queries = [*namespace.queries, (self.dest, values)]


def add_command(commands) -> None:
    search = commands.add_parser(
        "search", help="search an index with text, image or audio queries, or list its near-duplicates",
        description=(
            "Embed each query with the checkpoint the index was built from (or --checkpoint, which must be the "
            "same checkpoint: another one embeds into another space) and print the best hits: rank, cosine score, "
            "key, source, caption. Any modality the checkpoint encodes may query an index of any modality. "
            "Queries are searched in the order given. A query that cannot be searched (a missing or unreadable "
            "file, a clip with no samples) is named on stderr with its reason and the others are still answered; "
            "the exit status is then 1. --duplicates T lists the pairs of rows of the index whose similarity is at "
            "least T instead."
        ),
        epilog="exit status: 0 when every query was answered; 1 when some query could not be searched (each named "
               "on stderr with its reason, then their count) or the search failed; 2 for bad arguments",
    )
    search.add_argument("--index", required=True, metavar="DIR", help="an index folder written by multimodal index")
    search.add_argument("--text", action=_QueryAction, default=[], metavar="TEXT", help="a text query (repeatable)")
    search.add_argument("--image", action=_QueryAction, default=[], metavar="FILE",
                        help="an image file query (repeatable)")
    search.add_argument("--audio", action=_QueryAction, default=[], metavar="FILE",
                        help="an audio file query (repeatable)")
    search.add_argument("--duplicates", type=float, metavar="THRESHOLD",
                        help="list pairs of rows with cosine similarity >= THRESHOLD instead of searching")
    search.add_argument("-k", "--top-k", type=positive_int, default=10, help="hits per query (default 10)")
    search.add_argument("--nprobe", type=positive_int, help="ivfpq indexes: lists searched (default: the index's tuned value)")
    search.add_argument("--json", action="store_true",
                        help='print JSON: a list with one {"query", "hits": [{"rank", "id", "score", "key", "source", '
                             '"caption"}]} per query in order, with "error" (and no hits) for a query that could not '
                             'be searched (with --duplicates: a list of {"a", "b", "score"})')
    search.add_argument("--checkpoint", type=checkpoint_dir, metavar="DIR",
                        help="the checkpoint the index was built from, when it has moved (default: the path it records)")
    search.add_argument("--batch-size", type=positive_int, default=32, help="queries encoded together (default 32)")
    search.add_argument("--device", default="auto", help=DEVICE_HELP)
    search.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help=PRECISION_HELP)
    search.set_defaults(run=run, command_parser=search, queries=[])


def _queries(args, parser) -> list[tuple[str, str]]:
    # A file that is missing or unreadable is not an argument error: it is reported with
    # its query when searched, and the other queries are still answered.
    queries = list(args.queries)
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


def _describe_query(modality: str, query: str) -> str:
    """How the command line gave a query: ``--text 'seven'``, ``--audio clip.wav``."""
    return f"--{modality} {query}" if get_modality(modality).reads_files else f"--{modality} {query!r}"


def _search_each(index, model, queries, args) -> list[dict]:
    """One record per query, in order: its hits, or (a query that cannot be embedded) its error, reported on stderr."""
    from multimodal.apps.search.query import QUERY_ERRORS, describe_hits, embed_query

    results = []
    for modality, query in queries:
        record = {"query": {"modality": modality, "input": query}, "hits": []}
        try:
            # A file's path, or the caption itself.
            vector = embed_query(model, modality, Path(query) if get_modality(modality).reads_files else query)  # (1, E)
        except QUERY_ERRORS as error:
            # The same words as classify and embed give the same file.
            record["error"] = one_line(f"{type(error).__name__}: {error}")
            print(f"cannot search {_describe_query(modality, query)}: {record['error']}", file=sys.stderr, flush=True)
        else:
            record["hits"] = describe_hits(index.search(vector, args.top_k, nprobe=args.nprobe)[0])
        results.append(record)
    return results


def _print_results(index, results: list[dict]) -> None:
    for result in results:
        if "error" in result:
            continue  # already named on stderr
        query = result["query"]
        print(f"{query['modality']} {query['input']!r}: {len(result['hits'])} hit(s) among {index.count} "
              f"{index.modality} row(s)")
        for hit in result["hits"]:
            shown = hit["source"] if hit["source"] and hit["source"] != hit["key"] else ""
            caption = f"  \"{hit['caption']}\"" if hit["caption"] else ""
            print(f"  {hit['rank']:>3}  {hit['score']:.4f}  {hit['key']}{'  ' + shown if shown else ''}{caption}")


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.apps.search import find_duplicates, load_index_model, open_index

    queries = _queries(args, parser)
    index = open_index(args.index)
    if args.duplicates is not None:
        if not -1.0 <= args.duplicates <= 1.0:
            parser.error(f"argument --duplicates: a cosine similarity in [-1, 1], got {args.duplicates}")
        _print_duplicates(index, find_duplicates(index, args.duplicates), args.json)
        return 0
    model = load_index_model(index, args.checkpoint, device=resolve_device(args.device), precision=args.precision,
                             batch_size=args.batch_size)
    results = _search_each(index, model, queries, args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_results(index, results)
    # Exit 1 after answering the others, as classify and embed do for inputs they skip:
    # a script sees that some query went unanswered without losing the answers it got.
    return exit_status(sum("error" in result for result in results), f"of {len(results)} query(ies)")
