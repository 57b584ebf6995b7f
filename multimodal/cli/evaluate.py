"""``multimodal eval``: zero-shot or retrieval metrics on a folder of class folders or tar shards."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multimodal.data.config import MODALITIES
from multimodal.data.files import write_text_atomically
from multimodal.embed import AUDIO_FILE_EXTENSIONS, IMAGE_FILE_EXTENSIONS, file_modality, is_shard_spec
from multimodal.cli.common import (
    EXIT_STATUS_HELP,
    add_label_options,
    add_model_options,
    exit_status,
    load_model,
    non_negative_int,
    parse_labels,
    parse_templates,
    print_templates,
    progress_bar,
    single_modality,
)


def add_command(commands) -> None:
    evaluate = commands.add_parser(
        "eval", help="zero-shot or retrieval evaluation on a folder or tar shards",
        description=(
            "Evaluate a checkpoint and print a table of metrics. --data is a shard spec (labels from each sample's "
            "json 'label' or its .cls member, class names from --labels/--labels-file or the json 'class_name' fields), or, for "
            "--task zeroshot, a folder with one sub-folder per class (class names from the sub-folders, labels by "
            "their sorted order). Zero-shot prompts: --templates, else those the checkpoint's training evaluated "
            "the modality with (recorded in its config.json), else the built-in ones; stderr and the JSON report "
            "say which. Inputs that cannot be read are reported on stderr and skipped."
        ),
        epilog=EXIT_STATUS_HELP,
    )
    add_model_options(evaluate)
    evaluate.add_argument("--task", required=True, choices=("zeroshot", "retrieval"), help="what to measure")
    evaluate.add_argument("--data", required=True, metavar="SPEC|FOLDER", help="shard spec, or a folder of class folders")
    evaluate.add_argument("--modality", choices=("image", "audio"),
                          help="the inputs classified or used as queries (default: from the folder's files, else image)")
    evaluate.add_argument("--gallery-modality", choices=MODALITIES, default="text",
                          help="retrieval: the other modality of each sample (default text)")
    add_label_options(evaluate, required=False)
    evaluate.add_argument("--name", default="eval", help="prefix of the metric names (default eval)")
    evaluate.add_argument("--output", metavar="FILE.json", help="also write the results as JSON")
    evaluate.add_argument("--no-pictures", action="store_true",
                          help="with --output, skip FILE.confusion.png and FILE.gallery.html (they embed the data once more)")
    evaluate.add_argument("--num-workers", type=non_negative_int, default=0,
                          help="data loader processes for shards (default 0)")
    evaluate.set_defaults(run=run, command_parser=evaluate)


def _is_class_folder(data: str) -> bool:
    path = Path(data)
    return path.is_dir() and not any(child.name.endswith((".tar", ".tar.gz", ".tgz")) for child in path.iterdir())


def _class_folder_items(root: Path, modality: str | None, parser) -> tuple[str, list[str], list[tuple[Path, int]]]:
    classes = sorted(child.name for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not classes:
        parser.error(f"argument --data: folder {root} has no class sub-folders (and no .tar shards)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                files.append((path, label))
    media = [(path, label) for path, label in files
             if path.suffix.lower().lstrip(".") in IMAGE_FILE_EXTENSIONS + AUDIO_FILE_EXTENSIONS]
    if not media:
        parser.error(f"argument --data: the class folders of {root} hold no image or audio file")
    if modality is None:
        modality = single_modality({path: file_modality(path) for path, _ in media}, parser, f"the files of {root}")
    extensions = IMAGE_FILE_EXTENSIONS if modality == "image" else AUDIO_FILE_EXTENSIONS
    items = [(path, label) for path, label in media if path.suffix.lower().lstrip(".") in extensions]
    return modality, [name.replace("_", " ") for name in classes], items


class _FolderBatches:
    """Batches of prepared items with labels from class folders; unreadable files reported and skipped."""

    def __init__(self, model, modality: str, items: list[tuple[Path, int]], batch_size: int) -> None:
        self.model, self.modality, self.items, self.batch_size = model, modality, items, batch_size
        self.skipped: list[tuple[str, str]] = []

    def __iter__(self):
        import torch

        self.skipped = []
        bar = progress_bar(len(self.items), "file", f"eval {self.modality}")
        batch, labels, keys = [], [], []
        try:
            for path, label in self.items:
                try:
                    batch.append(self.model.prepare(self.modality, path))
                except (ValueError, TypeError, OSError) as error:
                    self.skipped.append((str(path), f"{type(error).__name__}: {error}"))
                    print(f"skipped {path}: {error}", file=sys.stderr)
                else:
                    labels.append(label)
                    keys.append(str(path))
                bar.update(1)
                if len(batch) == self.batch_size:
                    yield {self.modality: batch, "label": torch.tensor(labels), "__key__": keys}
                    batch, labels, keys = [], [], []
            if batch:
                yield {self.modality: batch, "label": torch.tensor(labels), "__key__": keys}
        finally:
            bar.close()


def _class_names_from_shards(spec: str) -> list[str]:
    """Class names from the json ``label`` / ``class_name`` fields of every sample (one pass over the shards)."""
    from multimodal.data.shards import expand_shards, read_shard

    names: dict[int, str] = {}
    for url in expand_shards(spec):
        for sample in read_shard(url, []):
            try:
                fields = json.loads(sample.get("json", b"{}"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(fields, dict) and isinstance(fields.get("label"), int) and isinstance(fields.get("class_name"), str):
                names.setdefault(fields["label"], fields["class_name"])
    if not names:
        raise ValueError(f"the samples of {spec} have no json 'label' + 'class_name'; give --labels or --labels-file")
    missing = [label for label in range(max(names) + 1) if label not in names]
    if missing:
        raise ValueError(f"no sample of {spec} names class(es) {missing[:10]}; give --labels or --labels-file")
    return [names[label] for label in range(max(names) + 1)]


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.loader import make_loader
    from multimodal.data.source_spec import SourceSpec
    from multimodal.evaluation import EvalSetConfig, run_evaluation, zero_shot_templates
    from multimodal.report import format_results

    labels = parse_labels(args, parser)
    templates = parse_templates(args, parser)
    if templates and args.task != "zeroshot":
        parser.error("argument --templates: only --task zeroshot builds prompts; retrieval uses none")
    folder = _is_class_folder(args.data)
    if folder and args.task != "zeroshot":
        parser.error("argument --data: a class folder is a zero-shot data set; retrieval needs shards with captions")
    if not folder and not is_shard_spec(args.data) and not Path(args.data).is_dir():
        parser.error(f"argument --data: {args.data} is neither a folder nor a shard spec (.tar, {{..}} or pipe:)")
    model = load_model(args)
    skipped: object = None
    if folder:
        modality, class_names, items = _class_folder_items(Path(args.data), args.modality, parser)
        if labels is not None:
            if len(labels) != len(class_names):
                parser.error(f"argument --labels: {len(labels)} names for {len(class_names)} class folders")
            class_names = labels
        loader = _FolderBatches(model, modality, items, args.batch_size)
    else:
        modality = args.modality or "image"
        if args.task == "zeroshot":
            class_names = labels or _class_names_from_shards(args.data)
            source = SourceSpec(args.data, modalities=[modality], name=args.name, label_key="json:label;cls")
            tokenize = None
        else:
            class_names = []
            if args.gallery_modality == modality:
                parser.error(f"argument --gallery-modality: must differ from --modality ({modality})")
            source = SourceSpec(args.data, modalities=[modality, args.gallery_modality], name=args.name)
            tokenize = model.tokenize if args.gallery_modality == "text" else None
        loader = make_loader([source], batch_size=args.batch_size, train=False, tokenize=tokenize,
                             image_config=model.config.image_preprocess, audio_config=model.config.audio_preprocess,
                             num_workers=args.num_workers)
    for needed in {modality, "text" if args.task == "zeroshot" else args.gallery_modality}:
        if needed not in model.modalities:
            parser.error(f"argument --checkpoint: this checkpoint encodes {model.modalities}; the task needs {needed}")
    prompts: dict = {}
    if args.task == "zeroshot":
        templates, origin = zero_shot_templates(modality, templates, model.eval_sets)
        print_templates(templates, origin)
        prompts = {"templates": templates, "templates_from": origin}
    config = EvalSetConfig(name=args.name, shards=str(args.data), task=args.task, modality=modality,
                           class_names=list(class_names), templates=templates or [],
                           gallery_modality=args.gallery_modality)
    metrics = run_evaluation(model, config, loader, model.tokenizer, device=model.device)
    results = {f"{args.name}/{key}": value for key, value in metrics.items()}
    skipped = loader.skipped if folder else loader.stats.summary()
    num_skipped = len(loader.skipped) if folder else loader.stats.total_skipped()
    print(format_results(results))
    if args.output:
        report = {"checkpoint": str(args.checkpoint), "task": args.task, "data": args.data, "modality": modality,
                  "class_names": list(class_names), **prompts, "results": results, "skipped": skipped}
        write_text_atomically(args.output, json.dumps(report, indent=2) + "\n")
        if not args.no_pictures:
            from multimodal.eval_pictures import write_pictures

            for picture in write_pictures(model, config, loader, Path(args.output)):
                print(f"wrote {picture}", file=sys.stderr)
    return exit_status(num_skipped, "input(s)")
