"""``multimodal classify``: zero-shot labels for image or audio files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multimodal.cli.common import (
    add_label_options,
    add_model_options,
    load_model,
    modality_of_files,
    parse_labels,
    parse_templates,
    positive_int,
)


def add_command(commands) -> None:
    classify = commands.add_parser(
        "classify", help="zero-shot classify image or audio files among labels",
        description=(
            "Print the most probable labels of each file (softmax of the model's learned logit scale times cosine "
            "similarity with the labels' prompts). The modality comes from the file extensions unless --modality "
            "is given. Files that cannot be read are reported and the exit status is 1."
        ),
    )
    add_model_options(classify)
    add_label_options(classify, required=True)
    classify.add_argument("--modality", choices=("image", "audio"), help="what the files are (default: from extensions)")
    classify.add_argument("--top-k", type=positive_int, default=5, help="labels shown per file (default 5)")
    classify.add_argument("--json", action="store_true",
                          help='print a JSON list, one object per file in input order: {"path", "labels", "scores"}')
    classify.add_argument("files", nargs="+", metavar="FILE", help="image or audio files")
    classify.set_defaults(run=run, command_parser=classify)


def run(args, parser: argparse.ArgumentParser) -> int:
    import torch
    from multimodal.eval import zero_shot_probabilities
    from multimodal.api import ZeroShotClassifier

    labels = parse_labels(args, parser)
    templates = parse_templates(args, parser)
    modality = args.modality or modality_of_files(args.files, parser, "the files")
    model = load_model(args)
    if modality not in model.modalities or "text" not in model.modalities:
        parser.error(f"argument --checkpoint: this checkpoint encodes {model.modalities}; "
                     f"classifying {modality} needs text and {modality}")
    classifier = ZeroShotClassifier(model, labels, templates, modality=modality)
    prepared, errors = {}, {}
    for index, name in enumerate(args.files):
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
    return 1 if errors else 0
