"""``multimodal classify``: zero-shot labels for image or audio files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multimodal.apps.embedding import file_modality
from multimodal.data.modalities.registry import CAPTION_MODALITY
from multimodal.modality_parts import CLASSIFIED_MODALITIES
from multimodal.cli.command_options import (
    EXIT_STATUS_HELP,
    add_label_options,
    add_model_options,
    exit_status,
    load_model_for,
    not_media_reason,
    parse_labels,
    parse_templates,
    positive_int,
    print_templates,
    single_modality,
)


def add_command(commands) -> None:
    classify = commands.add_parser(
        "classify", help="zero-shot classify image or audio files among labels",
        description=(
            "Print the most probable labels of each file (softmax of the model's learned logit scale times cosine "
            "similarity with the labels' prompts). The modality comes from the file extensions (or, for other names, "
            "the files' content) unless --modality is given. Files that cannot be read, or are neither images nor "
            "audio, are reported on stderr and skipped."
        ),
        epilog=EXIT_STATUS_HELP,
    )
    add_model_options(classify)
    add_label_options(classify, required=True)
    classify.add_argument("--modality", choices=CLASSIFIED_MODALITIES, help="what the files are (default: from extensions)")
    classify.add_argument("--top-k", type=positive_int, default=5, help="labels shown per file (default 5)")
    classify.add_argument("--json", action="store_true",
                          help='print a JSON list, one object per file in input order: {"path", "labels", "scores"} '
                               '(and "error" for a file skipped)')
    classify.add_argument("files", nargs="+", metavar="FILE", help="image or audio files")
    classify.set_defaults(run=run, command_parser=classify)


def _kinds(files: list[str]) -> tuple[dict[int, str], dict[int, str]]:
    """({index: "image" | "audio"}, {index: why it is skipped}) of the files, from extensions or content."""
    kinds, errors = {}, {}
    for index, name in enumerate(files):
        try:
            kind = file_modality(name)
        except OSError as error:
            errors[index] = f"{type(error).__name__}: {error}"
            continue
        if kind is None:
            errors[index] = not_media_reason()
        else:
            kinds[index] = kind
    return kinds, errors


def run(args, parser: argparse.ArgumentParser) -> int:
    import torch
    from multimodal.eval import zero_shot_probabilities
    from multimodal.apps.api import ZeroShotClassifier

    labels = parse_labels(args, parser)
    templates = parse_templates(args, parser)
    errors: dict[int, str] = {}
    modality = args.modality
    if modality is None:
        kinds, errors = _kinds(args.files)
        if not kinds:
            first = f"cannot classify {args.files[0]}: {errors[0]}"
            parser.error(f"argument FILE: {first}" if len(args.files) == 1 else
                         f"argument FILE: none of the {len(args.files)} files can be classified; {first}")
        modality = single_modality(kinds, parser, "the files")
    model = load_model_for(args)
    if modality not in model.modalities or CAPTION_MODALITY not in model.modalities:
        parser.error(f"argument --checkpoint: this checkpoint encodes {model.modalities}; "
                     f"classifying {modality} needs text and {modality}")
    classifier = ZeroShotClassifier(model, labels, templates, modality=modality)
    print_templates(classifier.templates, classifier.templates_origin)
    prepared = {}
    for index, name in enumerate(args.files):
        if index in errors:
            continue
        try:
            prepared[index] = model.prepare(modality, Path(name))
        except (ValueError, TypeError, OSError) as error:
            errors[index] = f"{type(error).__name__}: {error}"
    order = sorted(prepared)
    embeddings = model.encode_prepared(modality, [prepared[i] for i in order]).cpu() if order else torch.empty(0, model.embed_dim)
    probabilities = zero_shot_probabilities(embeddings, classifier.class_weights, classifier.logit_scale)
    best = dict(zip(order, classifier.top_labels(probabilities, args.top_k))) if order else {}
    records = []
    for index, name in enumerate(args.files):
        if index in errors:
            print(f"cannot classify {name}: {errors[index]}", file=sys.stderr)
            records.append({"path": name, "labels": [], "scores": [], "error": errors[index]})
        else:
            records.append({"path": name, "labels": [label for label, _ in best[index]],
                            "scores": [score for _, score in best[index]]})
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for record in records:
            if "error" in record:
                continue
            shown = ", ".join(f"{label} {100 * score:.1f}%" for label, score in zip(record["labels"], record["scores"]))
            print(f"{record['path']}: {shown}")
    return exit_status(len(errors), f"of {len(args.files)} file(s)")
