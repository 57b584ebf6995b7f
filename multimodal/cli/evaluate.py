"""``multimodal eval``: zero-shot, retrieval or linear-probe metrics on folders of class folders or tar shards."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from multimodal.data.atomic_files import write_text_atomically
from multimodal.data.pipeline.sample_fields import CAPTION_KEYS
from multimodal.eval.linear_probe import DEFAULT_VAL_FRACTION
from multimodal.data.writing.listing import class_folder_files
from multimodal.data.modalities.registry import CAPTION_MODALITY, MODALITIES, get_modality
from multimodal.apps.embedding import is_shard_spec, modality_of_file_name
from multimodal.apps.evaluation_sources import (
    ClassFolder,
    ClassFolderLoader,
    check_same_class_folders,
    eval_loader,
    is_class_folder,
    not_evaluated,
    not_evaluated_lines,
    read_class_folder,
    recorded_class_names,
)
from multimodal.modality_parts import CLASSIFIED_MODALITIES
from multimodal.cli.command_options import (
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
from multimodal.apps.evaluation import DEFAULT_PROBE_SEED, TASKS


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
    evaluate.add_argument("--gallery-modality", choices=MODALITIES, default=CAPTION_MODALITY,
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
GIVE_LABELS = "give --labels or --labels-file (label i -> name)"  # when the shards name too few classes
open_fraction = checked(float, lambda value: 0.0 < value < 1.0, "a number in (0, 1)")
non_negative_float = checked(float, lambda value: value >= 0.0 and value != float("inf"), "a number >= 0")


def _read_class_folder(root: Path, modality: str | None, parser, option: str = "--data") -> ClassFolder:
    """The class folders of ``root`` as evaluation reads them (:func:`multimodal.apps.evaluation_sources.read_class_folder`,
    labelled by the rule `multimodal shards` writes class folders with); without ``modality``, the one its
    files hold. A parser error naming ``option`` for a folder evaluation cannot read."""
    try:
        return read_class_folder(root, modality or _folder_modality(root, parser, option))
    except ValueError as error:
        parser.error(f"argument {option}: {one_line(error)}")


def _folder_modality(root: Path, parser, option: str) -> str:
    """The one modality that the files of ``root``'s class folders hold, by their names."""
    folders, files = class_folder_files(root)
    media = {path: modality_of_file_name(path) for path, _ in files}
    media = {path: modality for path, modality in media.items() if modality in CLASSIFIED_MODALITIES}
    if folders and not media:
        parser.error(f"argument {option}: the class folders of {root} hold no "
                     f"{' or '.join(CLASSIFIED_MODALITIES)} file")
    # No class folders at all: any modality will do, read_class_folder refuses the folder in its words.
    return single_modality(media, parser, f"the files of {root}") if media else CLASSIFIED_MODALITIES[0]


class _ShownPass:
    """A class-folder loader whose passes draw a progress bar and name on stderr each file skipped, as they come
    (its warning of them is off: every one is named here)."""

    def __init__(self, loader: ClassFolderLoader) -> None:
        self.loader = loader

    @property
    def stats(self):
        return self.loader.stats

    @property
    def skipped(self):
        return self.loader.skipped

    def __iter__(self):
        files = len(self.loader.folder.files)
        bar = progress_bar(files, "file", f"eval {self.loader.folder.modality}")
        named = 0
        try:
            for batch in self.loader:
                named = self._name_skipped(named, bar)
                yield batch
        finally:
            self._name_skipped(named, bar)
            bar.close()

    def _name_skipped(self, named: int, bar) -> int:
        """Names the files skipped since the first ``named``; moves the bar to the files read so far."""
        for skipped in self.loader.skipped[named:]:
            print(f"skipped {skipped.path}: {skipped.message}", file=sys.stderr)
        done = self.loader.stats.samples.get(self.loader.name, 0) + len(self.loader.skipped)
        bar.update(done - bar.n)
        return len(self.loader.skipped)


def _shard_modality(spec: str, gallery_modality: str, parser: argparse.ArgumentParser) -> str:
    """The modality of shards given without --modality: what the first sample holding an image or audio holds.

    A sample holding both is ambiguous unless the gallery (retrieval) takes one of them.
    """
    from multimodal.data.pipeline.shard_reader import expand_shards, read_shard

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
    folder = is_class_folder(str(data))
    if folder and task == "retrieval":
        parser.error(f"argument {option}: a class folder is a classification data set; retrieval needs shards with captions")
    if not folder and not is_shard_spec(data) and not Path(data).is_dir():
        parser.error(f"argument {option}: {data} is neither a folder nor a shard spec (.tar, {{..}} or pipe:)")
    return folder


def _same_classes(test_classes: list[str], train_classes: list[str], parser) -> None:
    try:
        check_same_class_folders(test_classes, train_classes, "--data", "--train-data")
    except ValueError as error:
        parser.error(f"argument --train-data: {error}")


@dataclass
class _Inputs:
    """What is read, settled before the model loads (loading is slow; a bad option should fail first)."""

    folder: bool  # class folders, else shards
    modality: str
    class_names: list[str]
    folders: dict[str, ClassFolder] = field(default_factory=dict)  # class folders only: "shards", "train_shards"


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
        class_names = labels or recorded_class_names(str(args.data), remedy=GIVE_LABELS)
    return _Inputs(folder=False, modality=modality, class_names=class_names)


def _folder_inputs(args, parser: argparse.ArgumentParser, labels: list[str] | None, probe: bool) -> _Inputs:
    """The inputs of class folders: their files, and the class names from the folders unless labels are given."""
    folders = {"shards": _read_class_folder(Path(args.data), args.modality, parser)}
    modality, folder_classes = folders["shards"].modality, folders["shards"].class_names
    if probe:
        folders["train_shards"] = _read_class_folder(Path(args.train_data), modality, parser, "--train-data")
        _same_classes(folder_classes, folders["train_shards"].class_names, parser)
    if labels is not None and len(labels) != len(folder_classes):
        parser.error(f"argument --labels: {len(labels)} names for {len(folder_classes)} class folders")
    return _Inputs(folder=True, modality=modality, class_names=labels or folder_classes, folders=folders)


def _eval_set_config(args, parser: argparse.ArgumentParser, inputs: _Inputs, templates, probe: bool):
    """The EvalSetConfig of the options; a parser error for settings it refuses."""
    from multimodal.apps.evaluation import EvalSetConfig

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
    """The batches of the test set and, for a linear probe, of the training set (else None): read as training
    reads its evaluation sets (:mod:`multimodal.apps.evaluation_sources`), class folders keyed by their files' paths."""
    specs = config.source_specs()

    def read(field_name: str):
        spec = specs[field_name]
        if inputs.folder:  # read already, when the options were settled
            return _ShownPass(ClassFolderLoader(inputs.folders[field_name], spec.name, batch_size=args.batch_size,
                                                preprocess=model.config.preprocess, path_keys=True, log_skips=False))
        return eval_loader(spec, batch_size=args.batch_size, preprocess=model.config.preprocess,
                           tokenize=model.tokenize if CAPTION_MODALITY in spec.modalities else None,
                           num_workers=args.num_workers)

    return read("shards"), (read("train_shards") if probe else None)


def _zero_shot_prompts(model, config, modality: str, templates) -> dict:
    """Settles the prompt templates into ``config``, says them on stderr; what the JSON report says of them."""
    from multimodal.apps.evaluation import zero_shot_templates

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
        from multimodal.apps.evaluation_pictures import write_pictures

        for picture in write_pictures(model, config, loader, Path(args.output)):
            print(f"wrote {picture}", file=sys.stderr)


def run(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.apps.evaluation import run_evaluation, run_linear_probe
    from multimodal.training.report import format_results

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
    num_skipped = loader.stats.total_skipped() - _say_not_evaluated(loader, config, args.data)
    if probe:
        skipped["train_data"] = _skipped(train_loader, config, inputs.folder)
        num_skipped += train_loader.stats.total_skipped() - _say_not_evaluated(train_loader, config, args.train_data)
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
    """What the JSON report says of the inputs not used: files skipped (path and error), or the shards' counts
    with those that lack the modality (``not_evaluated``, also among ``skipped``) apart."""
    if folder:
        return [[skipped.path, f"{skipped.error}: {skipped.message}"] for skipped in loader.skipped]
    return {**loader.stats.summary(), "not_evaluated": not_evaluated(loader.stats, config.modalities)}


def _say_not_evaluated(loader, config, data: str) -> int:
    """Says on stderr how many samples of ``data`` lack the modality (not evaluated); returns that count.

    On shards that mix pictures and sounds they are not inputs of the evaluation, so not failures.
    """
    counts = not_evaluated(loader.stats, config.modalities)
    for line in not_evaluated_lines(counts, data):
        print(line, file=sys.stderr)
    return sum(counts.values())
