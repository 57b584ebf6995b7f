"""``multimodal eval``: zero-shot, retrieval or linear-probe metrics on folders of class folders or tar shards."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from multimodal.data.config import MODALITIES
from multimodal.data.files import write_text_atomically
from multimodal.data.sample_fields import CAPTION_KEYS
from multimodal.eval.linear_probe import DEFAULT_VAL_FRACTION
from multimodal.data.listing import class_folder_files, class_name_in_words
from multimodal.data.modalities import get_modality
from multimodal.embed import file_modality, is_shard_spec, modality_of_file_name
from multimodal.modalities import CLASSIFIED_MODALITIES
from multimodal.cli.common import (
    EXIT_STATUS_HELP,
    add_label_options,
    add_model_options,
    checked,
    exit_status,
    load_model_for,
    non_negative_int,
    one_line,
    parse_labels,
    parse_templates,
    print_templates,
    positive_int,
    progress_bar,
    single_modality,
)
from multimodal.evaluation import DEFAULT_PROBE_SEED, TASKS


def add_command(commands) -> None:
    evaluate = commands.add_parser(
        "eval", help="zero-shot, retrieval or linear-probe evaluation on a folder or tar shards",
        description=(
            "Evaluate a checkpoint and print a table of metrics. --data is a shard spec (labels from each sample's "
            "json 'label' or its .cls member, class names from --labels/--labels-file or the json 'class_name' fields), or, for "
            "--task zeroshot and linear_probe, a folder with one sub-folder per class (class names from the sub-folders, labels by "
            "their sorted order). Zero-shot prompts: --templates, else those the checkpoint's training evaluated "
            "the modality with (recorded in its config.json), else the built-in ones; stderr and the JSON report "
            "say which. Retrieval reads every caption of a sample (--caption-keys): text -> image finds a caption's "
            "own item, image -> text any of the item's captions. A linear probe fits logistic regression (L-BFGS) on "
            "the embeddings of --train-data and scores it on --data; its weight decay is chosen by validation accuracy "
            "on --val-fraction of each class of the training set (stratified, drawn under --seed), then the probe is "
            "refit on the whole training set; --weight-decay fixes it instead. --fewshot-k K trains on K samples per "
            "class (drawn under --seed), validated within them. Inputs that cannot be read are reported on stderr and skipped; "
            "shard samples without the modality (a picture-only sample when evaluating audio) are counted on stderr "
            "and passed over (exit 0)."
        ),
        epilog=EXIT_STATUS_HELP,
    )
    add_model_options(evaluate)
    evaluate.add_argument("--task", required=True, choices=TASKS, help="what to measure")
    evaluate.add_argument("--data", required=True, metavar="SPEC|FOLDER",
                          help="shard spec, or a folder of class folders; the test set of a linear probe")
    evaluate.add_argument("--modality", choices=CLASSIFIED_MODALITIES,
                          help="the inputs classified or used as queries (default: what the folder's files or the shards' "
                               "first sample hold)")
    evaluate.add_argument("--gallery-modality", choices=MODALITIES, default="text",
                          help="retrieval: the other modality of each sample (default text)")
    evaluate.add_argument("--caption-keys", metavar="KEYS",
                          help=f"retrieval: where a sample's captions are, ';'-separated, tried in order: member "
                               f"extensions, json:FIELD (a string or a list of captions), lines:EXT (one caption "
                               f"per line, as CLIP_benchmark's retrieval shards hold them: lines:txt) (default "
                               f"{CAPTION_KEYS})")
    add_label_options(evaluate, required=False)
    probe = evaluate.add_argument_group("linear probe (--task linear_probe)")
    probe.add_argument("--train-data", metavar="SPEC|FOLDER",
                       help="the labelled training set: a shard spec, or a folder of the same class folders as --data")
    probe.add_argument("--fewshot-k", type=positive_int, metavar="K",
                       help="train on exactly K samples of every class, drawn under --seed (default: all)")
    probe.add_argument("--val-fraction", type=open_fraction, metavar="F",
                       help=f"share of each class of the training set held out to choose the weight decay "
                            f"(default {DEFAULT_VAL_FRACTION})")
    probe.add_argument("--weight-decay", type=non_negative_float, metavar="W",
                       help="a fixed L2 weight decay instead of the validation search (needed with --fewshot-k 1)")
    probe.add_argument("--seed", type=non_negative_int, metavar="N",
                       help=f"seeds the few-shot draw and the validation split (default {DEFAULT_PROBE_SEED})")
    evaluate.add_argument("--name", default="eval", help="prefix of the metric names (default eval)")
    evaluate.add_argument("--output", metavar="FILE.json", help="also write the results as JSON")
    evaluate.add_argument("--no-pictures", action="store_true",
                          help="with --output, skip FILE.confusion.png and FILE.gallery.html (they embed the data once "
                               "more; a linear probe writes none)")
    evaluate.add_argument("--num-workers", type=non_negative_int, default=0,
                          help="data loader processes for shards (default 0)")
    evaluate.set_defaults(run=run, command_parser=evaluate)


PROBE_OPTIONS = ("train_data", "fewshot_k", "val_fraction", "weight_decay", "seed")
open_fraction = checked(float, lambda value: 0.0 < value < 1.0, "a number in (0, 1)")
non_negative_float = checked(float, lambda value: value >= 0.0 and value != float("inf"), "a number >= 0")


def _is_class_folder(data: str) -> bool:
    path = Path(data)
    return path.is_dir() and not any(child.name.endswith((".tar", ".tar.gz", ".tgz")) for child in path.iterdir())


def _class_folder_items(root: Path, modality: str | None, parser) -> tuple[str, list[str], list[tuple[Path, int]]]:
    # Labelled by the rule `multimodal shards` writes class folders with, so the two agree.
    classes, files = class_folder_files(root)
    if not classes:
        parser.error(f"argument --data: folder {root} has no class sub-folders holding files (and no .tar shards)")
    media = [(path, label) for path, label in files if modality_of_file_name(path) in CLASSIFIED_MODALITIES]
    if not media:
        parser.error(f"argument --data: the class folders of {root} hold no {' or '.join(CLASSIFIED_MODALITIES)} file")
    if modality is None:
        modality = single_modality({path: file_modality(path) for path, _ in media}, parser, f"the files of {root}")
    items = [(path, label) for path, label in media if modality_of_file_name(path) == modality]
    return modality, [class_name_in_words(name) for name in classes], items


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


def _shard_modality(spec: str, gallery_modality: str, parser: argparse.ArgumentParser) -> str:
    """The modality of shards given without --modality: what the first sample holding an image or audio holds.

    A sample holding both is ambiguous unless the gallery (retrieval) takes one of them.
    """
    from multimodal.data.shards import expand_shards, read_shard

    members = {modality: set(get_modality(modality).extensions) for modality in CLASSIFIED_MODALITIES}
    problems = []
    for url in expand_shards(spec):
        for sample in read_shard(url, problems):
            held = [modality for modality, extensions in members.items()
                    if extensions & sample.keys() and modality != gallery_modality]
            if len(held) == 1:
                return held[0]
            if held:
                parser.error(f"argument --modality: the samples of {spec} hold "
                             f"{' and '.join(get_modality(m).many for m in held)} (e.g. {sample['__key__']}); "
                             f"say which to evaluate: --modality {' or '.join(held)}")
    unread = f"; {problems[0].url}: {problems[0].message}" if problems else ""
    held = " or ".join(f"{get_modality(m).one} ({get_modality(m).default_keys})" for m in CLASSIFIED_MODALITIES)
    parser.error(f"argument --data: no sample of {spec} holds {held}{unread}")


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


def _check_task_options(args, parser: argparse.ArgumentParser, templates) -> None:
    if templates and args.task != "zeroshot":
        parser.error("argument --templates: only --task zeroshot builds prompts; retrieval and linear probes use none")
    if args.caption_keys is not None and args.task != "retrieval":
        parser.error("argument --caption-keys: only --task retrieval reads captions")
    if args.task != "linear_probe":
        for option in PROBE_OPTIONS:
            if getattr(args, option) is not None:
                parser.error(f"argument --{option.replace('_', '-')}: only --task linear_probe trains a probe")
    elif args.train_data is None:
        parser.error("argument --train-data: --task linear_probe needs a labelled training set")


def _check_data(data: str, option: str, task: str, parser) -> bool:
    """Whether ``data`` is a class folder (else a shard spec); refuses anything else."""
    folder = _is_class_folder(data)
    if folder and task == "retrieval":
        parser.error(f"argument {option}: a class folder is a classification data set; retrieval needs shards with captions")
    if not folder and not is_shard_spec(data) and not Path(data).is_dir():
        parser.error(f"argument {option}: {data} is neither a folder nor a shard spec (.tar, {{..}} or pipe:)")
    return folder


def _same_classes(test_classes: list[str], train_classes: list[str], parser) -> None:
    if test_classes != train_classes:
        only_test = sorted(set(test_classes) - set(train_classes))
        only_train = sorted(set(train_classes) - set(test_classes))
        parser.error(f"argument --train-data: its class folders must be those of --data (label i is the i-th folder "
                     f"of each); only in --data: {only_test[:10]}, only in --train-data: {only_train[:10]}")


@dataclass
class _Inputs:
    """What is read, settled before the model loads (loading is slow; a bad option should fail first)."""

    folder: bool  # class folders, else shards
    modality: str
    class_names: list[str]
    items: list[tuple[Path, int]] = field(default_factory=list)  # class folders only
    train_items: list[tuple[Path, int]] = field(default_factory=list)  # class folders of a linear probe only


def _settle_inputs(args, parser: argparse.ArgumentParser, labels: list[str] | None, probe: bool) -> _Inputs:
    """The data's kind, modality and class names (and the files of class folders); parser errors for bad ones."""
    folder = _check_data(args.data, "--data", args.task, parser)
    if probe and _check_data(args.train_data, "--train-data", args.task, parser) != folder:
        parser.error("argument --train-data: give the training and test sets alike, both class folders or both shards")
    if folder:
        return _folder_inputs(args, parser, labels, probe)
    class_names: list[str] = labels or []
    modality = args.modality or _shard_modality(str(args.data), args.gallery_modality, parser)
    if args.task == "retrieval" and args.gallery_modality == modality:
        parser.error(f"argument --gallery-modality: must differ from --modality ({modality})")
    if args.task == "zeroshot":
        class_names = labels or _class_names_from_shards(args.data)
    return _Inputs(folder=False, modality=modality, class_names=class_names)


def _folder_inputs(args, parser: argparse.ArgumentParser, labels: list[str] | None, probe: bool) -> _Inputs:
    """The inputs of class folders: their files, and the class names from the folders unless labels are given."""
    modality, folder_classes, items = _class_folder_items(Path(args.data), args.modality, parser)
    train_items: list[tuple[Path, int]] = []
    if probe:
        _, train_classes, train_items = _class_folder_items(Path(args.train_data), modality, parser)
        _same_classes(folder_classes, train_classes, parser)
    if labels is not None and len(labels) != len(folder_classes):
        parser.error(f"argument --labels: {len(labels)} names for {len(folder_classes)} class folders")
    return _Inputs(folder=True, modality=modality, class_names=labels or folder_classes, items=items,
                   train_items=train_items)


def _eval_set_config(args, parser: argparse.ArgumentParser, inputs: _Inputs, templates, probe: bool):
    """The EvalSetConfig of the options; a parser error for settings it refuses."""
    from multimodal.evaluation import EvalSetConfig

    probe_settings = {option: getattr(args, option) for option in ("fewshot_k", "weight_decay", "val_fraction", "seed")
                      if getattr(args, option) is not None}
    try:
        return EvalSetConfig(name=args.name, shards=str(args.data), task=args.task, modality=inputs.modality,
                             class_names=list(inputs.class_names) if args.task == "zeroshot" else [],
                             templates=templates or [], gallery_modality=args.gallery_modality,
                             caption_keys=args.caption_keys or CAPTION_KEYS,
                             train_shards=str(args.train_data) if probe else None, **probe_settings)
    except ValueError as error:
        parser.error(one_line(error))


def _check_model_modalities(model, config, parser: argparse.ArgumentParser) -> None:
    for needed in config.model_modalities:
        if needed not in model.modalities:
            parser.error(f"argument --checkpoint: this checkpoint encodes {model.modalities}; the task needs {needed}")


def _loaders(args, model, config, inputs: _Inputs, probe: bool):
    """The batches of the test set and, for a linear probe, of the training set (else None)."""
    from multimodal.data.loader import make_loader

    if inputs.folder:
        loader = _FolderBatches(model, inputs.modality, inputs.items, args.batch_size)
        train_loader = _FolderBatches(model, inputs.modality, inputs.train_items, args.batch_size) if probe else None
        return loader, train_loader

    def shard_loader(spec):
        return make_loader([spec], batch_size=args.batch_size, train=False,
                           tokenize=model.tokenize if "text" in spec.modalities else None,
                           preprocess=model.config.preprocess,
                           num_workers=args.num_workers)

    specs = config.source_specs()
    return shard_loader(specs["shards"]), (shard_loader(specs["train_shards"]) if probe else None)


def _zero_shot_prompts(model, config, modality: str, templates) -> dict:
    """Settles the prompt templates into ``config``, says them on stderr; what the JSON report says of them."""
    from multimodal.evaluation import zero_shot_templates

    templates, origin = zero_shot_templates(modality, templates, model.eval_sets)
    print_templates(templates, origin)
    config.templates = templates
    return {"templates": templates, "templates_from": origin}


def _write_report(args, model, config, loader, inputs: _Inputs, details: dict, results: dict, skipped) -> None:
    """Writes the JSON report to ``--output`` and, unless ``--no-pictures``, the pictures beside it."""
    report = {"checkpoint": str(args.checkpoint), "task": args.task, "data": args.data, "modality": inputs.modality,
              "class_names": list(inputs.class_names), **details, "results": results, "skipped": skipped}
    if args.task == "retrieval":
        report["caption_keys"] = config.caption_keys
    write_text_atomically(args.output, json.dumps(report, indent=2) + "\n")
    if not args.no_pictures and args.task != "linear_probe":
        from multimodal.eval_pictures import write_pictures

        for picture in write_pictures(model, config, loader, Path(args.output)):
            print(f"wrote {picture}", file=sys.stderr)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.evaluation import run_evaluation, run_linear_probe
    from multimodal.report import format_results

    labels = parse_labels(args, parser)
    templates = parse_templates(args, parser)
    _check_task_options(args, parser, templates)
    probe = args.task == "linear_probe"
    inputs = _settle_inputs(args, parser, labels, probe)
    config = _eval_set_config(args, parser, inputs, templates, probe)

    model = load_model_for(args)
    _check_model_modalities(model, config, parser)
    loader, train_loader = _loaders(args, model, config, inputs, probe)
    prompts = _zero_shot_prompts(model, config, inputs.modality, templates) if args.task == "zeroshot" else {}
    probe_details: dict = {}
    if probe:
        result = run_linear_probe(model, config, loader, train_loader, device=model.device)
        metrics = result.metrics
        probe_details = _probe_report(config, result)
    else:
        metrics = run_evaluation(model, config, loader, model.tokenizer, device=model.device)
    results = {f"{args.name}/{key}": value for key, value in metrics.items()}
    skipped = {"data": _skipped(loader, config, inputs.folder)}
    num_skipped = _num_skipped(loader, inputs.folder) - _say_not_evaluated(loader, config, args.data, inputs.folder)
    if probe:
        skipped["train_data"] = _skipped(train_loader, config, inputs.folder)
        num_skipped += (_num_skipped(train_loader, inputs.folder)
                        - _say_not_evaluated(train_loader, config, args.train_data, inputs.folder))
    print(format_results(results))
    if args.output:
        _write_report(args, model, config, loader, inputs, {**prompts, **probe_details}, results,
                      skipped if probe else skipped["data"])
    return exit_status(num_skipped, "input(s)")


def _probe_report(config, result) -> dict:
    """What the JSON report says of a probe beside its metrics; the weight decay said on stderr too."""
    tried = result.validation_accuracy
    chosen = result.probe.weight_decay
    if tried:
        print(f"weight decay {chosen:g}: the best validation accuracy ({tried[chosen]:.1%}) of the {len(tried)} "
              f"values tried on {config.val_fraction:g} of each class", file=sys.stderr)
    else:
        print(f"weight decay {chosen:g} (given)", file=sys.stderr)
    return {"train_data": config.train_shards, "fewshot_k": config.fewshot_k, "val_fraction": config.val_fraction,
            "seed": config.seed, "weight_decay": chosen, "weight_decay_from": "validation" if tried else "given",
            "validation_accuracy": {f"{wd:g}": accuracy for wd, accuracy in tried.items()}}


def _skipped(loader, config, folder: bool):
    """What the JSON report says of the inputs not used: files skipped, or the shards' counts with those that
    lack the modality (``not_evaluated``, also among ``skipped``) apart."""
    if folder:
        return loader.skipped
    return {**loader.stats.summary(), "not_evaluated": _without_the_modality(loader, config, folder)}


def _without_the_modality(loader, config, folder: bool) -> dict[str, int]:
    """``{"missing_audio": n}``: shard samples passed over because they lack a file modality the set reads.

    On shards that mix pictures and sounds, a sample without the modality evaluated
    is not an input of the evaluation (as ``multimodal embed`` passes it over), so not
    a failure; a sample that has it and does not decode still is.
    """
    if folder:
        return {}
    absent = {f"missing_{name}" for name in config.modalities if get_modality(name).reads_files}
    counts: dict[str, int] = {}
    for reasons in loader.stats.skipped.values():
        for reason, count in reasons.items():
            if reason in absent:
                counts[reason] = counts.get(reason, 0) + count
    return counts


def _say_not_evaluated(loader, config, data: str, folder: bool) -> int:
    """Says on stderr how many samples of ``data`` lack the modality (not evaluated); returns that count."""
    counts = _without_the_modality(loader, config, folder)
    for reason, count in sorted(counts.items()):
        print(f"{count} sample(s) of {data} hold no {reason[len('missing_'):]} ({reason}): not evaluated",
              file=sys.stderr)
    return sum(counts.values())


def _num_skipped(loader, folder: bool) -> int:
    return len(loader.skipped) if folder else loader.stats.total_skipped()
