"""The ``multimodal`` command line: embed, classify, eval, shards, tokenizer, convert, demo.

Every command is a function of its parsed arguments; ``main(argv)`` returns the exit
status (0 done, 1 some inputs failed or the job failed, 2 bad arguments), so tests
call it directly. Results go to standard output; progress bars, skipped inputs and
errors to standard error.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from multimodal.data.config import MODALITIES
from multimodal.embed import AUDIO_FILE_EXTENSIONS, IMAGE_FILE_EXTENSIONS, is_shard_spec

PROGRAM = "multimodal"
DEVICE_HELP = "where the model runs: auto (this process's GPU, else cuda if available, else cpu), cpu, cuda, cuda:N"
PRECISION_HELP = (
    "weights' precision: auto (bf16 on CPUs with AVX512-BF16/AMX and on bf16 GPUs, fp32 otherwise), bf16, fp32; "
    "embeddings are returned in float32 either way"
)


def _checked(convert, accepts, expected: str):
    """An argparse ``type``: ``convert(text)``, refused with "expected {expected}" unless ``accepts(value)``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _checked(int, lambda value: value >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda value: value >= 0, "an integer >= 0")
_fraction = _checked(float, lambda value: 0.0 <= value < 1.0, "a number in [0, 1)")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _byte_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 500000000, 500M or 1G, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def _checkpoint_dir(text: str) -> Path:
    path = Path(text)
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a checkpoint directory (it has no config.json)")
    return path


def _add_model_options(parser: argparse.ArgumentParser, batch_size: int = 32) -> None:
    parser.add_argument("--checkpoint", required=True, type=_checkpoint_dir, metavar="DIR",
                        help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--batch-size", type=_positive_int, default=batch_size,
                        help=f"inputs encoded together (audio: windows) (default {batch_size})")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help=PRECISION_HELP)


def _add_label_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--labels", metavar="A,B,C", help="class names, comma-separated, in label order")
    group.add_argument("--labels-file", metavar="FILE", help="a text file with one class name per line, in label order")
    parser.add_argument("--templates", action="append", metavar="TEMPLATE",
                        help="a prompt template with one {} for the class name, e.g. 'a photo of a {}.'; repeat "
                             "the option for several (default: the built-in templates of the modality)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (``multimodal COMMAND --help`` describes each)."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Train-free uses of a multimodal checkpoint, and data preparation.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    embed = commands.add_parser(
        "embed", help="embed files, folders, caption files or tar shards into .npy or .safetensors",
        description=(
            "Embed many inputs. Files and folders (searched recursively by extension) or caption files "
            "(--modality text: one caption per line) go into one OUTPUT file: .npy (keys in OUTPUT's .keys.json "
            "sidecar, e.g. emb.npy -> emb.keys.json) or .safetensors (keys in its metadata). Shard inputs "
            "(anything with .tar, {..} braces or pipe:) go into the folder OUTPUT, one part per shard "
            "(OUTPUT/part-<shard>.npy + .keys.json); a second run skips the parts already written. Under "
            "accelerate launch (or with RANK/WORLD_SIZE set) each process takes its own shards. Inputs that "
            "cannot be read are reported on stderr and skipped."
        ),
    )
    _add_model_options(embed)
    embed.add_argument("--modality", required=True, choices=("image", "audio", "text"), help="what the inputs are")
    embed.add_argument("--input", required=True, nargs="+", metavar="PATH",
                       help="files, folders, caption files (text), or shard specs")
    embed.add_argument("--output", required=True, metavar="PATH",
                       help="output file (.npy, .safetensors or .parquet) for file inputs; output folder for shard inputs")
    embed.add_argument("--format", choices=("npy", "safetensors", "parquet"), default="npy",
                       help="format of the parts written for shard inputs (default npy)")
    embed.add_argument("--num-workers", type=_non_negative_int, default=0,
                       help="processes that read and preprocess inputs (default 0: the main process)")
    embed.set_defaults(run=run_embed, command_parser=embed)

    classify = commands.add_parser(
        "classify", help="zero-shot classify image or audio files among labels",
        description=(
            "Print the most probable labels of each file (softmax of the model's learned logit scale times cosine "
            "similarity with the labels' prompts). The modality comes from the file extensions unless --modality "
            "is given. Files that cannot be read are reported and the exit status is 1."
        ),
    )
    _add_model_options(classify)
    _add_label_options(classify, required=True)
    classify.add_argument("--modality", choices=("image", "audio"), help="what the files are (default: from extensions)")
    classify.add_argument("--top-k", type=_positive_int, default=5, help="labels shown per file (default 5)")
    classify.add_argument("--json", action="store_true",
                          help='print a JSON list, one object per file in input order: {"path", "labels", "scores"}')
    classify.add_argument("files", nargs="+", metavar="FILE", help="image or audio files")
    classify.set_defaults(run=run_classify, command_parser=classify)

    evaluate = commands.add_parser(
        "eval", help="zero-shot or retrieval evaluation on a folder or tar shards",
        description=(
            "Evaluate a checkpoint and print a table of metrics. --data is a shard spec (labels from each sample's "
            "json 'label' or its .cls member, class names from --labels/--labels-file or the json 'class_name' fields), or, for "
            "--task zeroshot, a folder with one sub-folder per class (class names from the sub-folders, labels by "
            "their sorted order)."
        ),
    )
    _add_model_options(evaluate)
    evaluate.add_argument("--task", required=True, choices=("zeroshot", "retrieval"), help="what to measure")
    evaluate.add_argument("--data", required=True, metavar="SPEC|FOLDER", help="shard spec, or a folder of class folders")
    evaluate.add_argument("--modality", choices=("image", "audio"),
                          help="the inputs classified or used as queries (default: from the folder's files, else image)")
    evaluate.add_argument("--gallery-modality", choices=MODALITIES, default="text",
                          help="retrieval: the other modality of each sample (default text)")
    _add_label_options(evaluate, required=False)
    evaluate.add_argument("--name", default="eval", help="prefix of the metric names (default eval)")
    evaluate.add_argument("--output", metavar="FILE.json", help="also write the results as JSON")
    evaluate.add_argument("--num-workers", type=_non_negative_int, default=0,
                          help="data loader processes for shards (default 0)")
    evaluate.set_defaults(run=run_eval, command_parser=evaluate)

    shards = commands.add_parser(
        "shards", help="write webdataset tar shards from a folder or a manifest",
        description=(
            "Write tar shards ({prefix}-000000.tar ... and sizes.json) from a folder (media with same-stem .txt "
            "captions, or one sub-folder per class) or a .csv/.jsonl manifest (path, caption, other columns kept "
            "in .json). Every media file is decoded first; what fails is skipped and listed with its reason."
        ),
    )
    shards.add_argument("--input", required=True, metavar="FOLDER|MANIFEST", help="a folder, or a .csv / .jsonl manifest")
    shards.add_argument("--output", required=True, metavar="DIR", help="where the shards go")
    shards.add_argument("--max-samples", type=_positive_int, default=10_000, help="samples per shard at most (default 10000)")
    shards.add_argument("--max-bytes", type=_byte_size, default=1 << 30,
                        help="bytes per shard at most, e.g. 500M or 1G (default 1G)")
    shards.add_argument("--validation-fraction", type=_fraction, default=0.0,
                        help="share of samples written to OUTPUT/val (the rest to OUTPUT/train), in [0, 1) (default 0)")
    shards.add_argument("--seed", type=int, default=0, help="seeds the shuffle and the validation split (default 0)")
    shards.add_argument("--prefix", default="shard", help="shard file name prefix (default shard)")
    shards.add_argument("--layout", choices=("auto", "captions", "classes"), default="auto",
                        help="folder layout (default auto: captions when .txt files exist)")
    shards.add_argument("--caption-template", help="classes layout: caption with {} for the class name")
    shards.add_argument("--overwrite", action="store_true", help="replace shards with the same prefix in OUTPUT")
    shards.set_defaults(run=run_shards, command_parser=shards)

    tokenizer = commands.add_parser(
        "tokenizer", help="train the byte-level BPE caption tokenizer",
        description="Train our byte-level BPE tokenizer on captions: text files (one caption per line) or tar shards "
                    "(their .txt or json text/caption).",
    )
    tokenizer.add_argument("--captions", required=True, nargs="+", metavar="FILE_OR_SHARDS",
                           help="caption files or shard specs")
    tokenizer.add_argument("--vocab-size", required=True, type=_positive_int, help="largest vocabulary (>= 259)")
    tokenizer.add_argument("--min-frequency", type=_positive_int, default=2,
                           help="merge a pair only if it occurs this often (default 2)")
    tokenizer.add_argument("--output", required=True, metavar="tokenizer.json", help="where to write it")
    tokenizer.set_defaults(run=run_tokenizer, command_parser=tokenizer)

    convert = commands.add_parser(
        "convert", help="convert open_clip / Hugging Face CLIP / Hugging Face AST weights into a checkpoint",
        description="Convert another project's weights (a file or a directory; nothing is downloaded) into a "
                    "checkpoint directory of ours.",
    )
    convert.add_argument("--from", dest="source_kind", required=True, choices=("open_clip", "hf-clip", "hf-ast"),
                         help="what SOURCE is")
    convert.add_argument("source", metavar="SOURCE", help="weights file or directory")
    convert.add_argument("--output", required=True, metavar="DIR", help="the checkpoint directory to write")
    convert.add_argument("--activation", choices=("gelu", "quick_gelu"),
                         help="open_clip: the MLP activation (quick_gelu for OpenAI weights and *-quickgelu models)")
    convert.add_argument("--model-config", metavar="JSON", help="open_clip: the model config (e.g. ViT-B-32.json)")
    convert.add_argument("--config", metavar="JSON", help="hf-clip / hf-ast: config.json of a bare weights file")
    convert.add_argument("--vocab-path", metavar="FILE", help="CLIP's bpe_simple_vocab_16e6.txt.gz "
                                                              "(default: the one in the installed open_clip)")
    convert.set_defaults(run=run_convert, command_parser=convert)

    demo = commands.add_parser(
        "demo", help="build the spoken and handwritten digits demo dataset and print where it is",
        description="Build (once; later calls reuse it) the demo dataset of handwritten digit images and spoken "
                    "digits, and print its shard specs.",
    )
    demo.add_argument("--cache", metavar="DIR", help="where it lives (default $MULTIMODAL_CACHE or ~/.cache/multimodal)")
    demo.add_argument("--scale", type=float, default=1.0, help="fraction of the data, in (0, 1] (default 1)")
    demo.add_argument("--seed", type=int, default=0, help="seeds every random choice (default 0)")
    demo.add_argument("--force", action="store_true", help="rebuild even when a complete build exists")
    demo.set_defaults(run=run_demo, command_parser=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status (argparse exits with 2 on bad arguments)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Checks made after parsing report through the command's parser: usage line, status 2.
        return args.run(args, args.command_parser)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"{PROGRAM} {args.command}: error: {error}", file=sys.stderr)
        return 1


# Shared pieces -----------------------------------------------------------------------------


def _progress_bar(total: int | None, unit: str, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=description, file=sys.stderr, dynamic_ncols=True)


def _device(text: str, process_device=None):
    import torch

    if text != "auto":
        try:
            return torch.device(text)
        except RuntimeError as error:
            raise ValueError(f"--device {text!r} is not a device ({error})") from None
    if process_device is not None:
        return process_device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_model(args, process_device=None):
    from multimodal.api import load

    return load(args.checkpoint, device=_device(args.device, process_device), precision=args.precision,
                batch_size=args.batch_size)


def _labels(args, parser: argparse.ArgumentParser) -> list[str] | None:
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",")]
        option = "--labels"
    elif args.labels_file is not None:
        path = Path(args.labels_file)
        if not path.is_file():
            parser.error(f"argument --labels-file: {path} does not exist")
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        option = "--labels-file"
    else:
        return None
    if not labels or any(not label for label in labels):
        parser.error(f"argument {option}: expected non-empty class names separated by commas (or one per line), "
                     f"got {labels!r}")
    if len(set(labels)) != len(labels):
        parser.error(f"argument {option}: class names must be distinct, got {labels!r}")
    return labels


def _templates(args, parser: argparse.ArgumentParser) -> list[str] | None:
    if not args.templates:
        return None
    from multimodal.eval import validate_templates

    try:
        return list(validate_templates(args.templates))
    except ValueError as error:
        parser.error(f"argument --templates: {error}")


def _modality_of_files(files: Sequence[str], parser: argparse.ArgumentParser, option: str) -> str:
    kinds = set()
    for name in files:
        extension = Path(name).suffix.lower().lstrip(".")
        if extension in IMAGE_FILE_EXTENSIONS:
            kinds.add("image")
        elif extension in AUDIO_FILE_EXTENSIONS:
            kinds.add("audio")
        else:
            parser.error(f"argument --modality: cannot tell whether {name} is an image or audio from its extension; "
                         f"give --modality image or --modality audio")
    if len(kinds) != 1:
        parser.error(f"argument --modality: {option} mix images and audio; classify one modality at a time "
                     "or give --modality")
    return kinds.pop()


# embed -------------------------------------------------------------------------------------


def run_embed(args, parser: argparse.ArgumentParser) -> int:
    from multimodal import embed

    shard_inputs = [is_shard_spec(text) for text in args.input]
    if any(shard_inputs) and not all(shard_inputs):
        parser.error("argument --input: give either shard specs or files/folders, not both")
    if all(shard_inputs):
        if Path(args.output).suffix.lower().lstrip(".") in embed.OUTPUT_FORMATS:
            parser.error(f"argument --output: with shard inputs the output is a folder of parts (one per shard), "
                         f"got the file name {args.output}; give a folder and choose the parts' format with --format")
    else:
        try:
            embed.output_format(args.output)
        except ValueError as error:
            parser.error(f"argument --output: {error}")
        missing = [text for text in args.input if not Path(text).exists()]
        if missing:
            parser.error(f"argument --input: {missing[0]} does not exist (expected files, folders or shard specs)")
    rank, world_size, process_device = embed.process_place()
    if not all(shard_inputs) and world_size > 1:
        parser.error(f"argument --input: files are embedded by one process, but {world_size} were launched; "
                     "give shard inputs to share the work, or run one process")
    model = _load_model(args, process_device)
    if args.modality not in model.modalities:
        parser.error(f"argument --modality: this checkpoint encodes {model.modalities}, not {args.modality}")

    bar = _progress_bar(None, "input", f"embed {args.modality}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""))

    def progress(state) -> None:
        bar.total = None if state.total is None else state.total
        bar.n = state.embedded + state.skipped
        postfix = {"skipped": state.skipped}
        if state.parts_total is not None:
            postfix["parts"] = f"{state.parts_done}/{state.parts_total}"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    try:
        if all(shard_inputs):
            result = embed.embed_shards(model, args.modality, list(args.input), args.output, format=args.format,
                                        rank=rank, world_size=world_size, num_workers=args.num_workers,
                                        progress=progress)
        else:
            result = embed.embed_files(model, args.modality, args.input, args.output,
                                       num_workers=args.num_workers, progress=progress)
    finally:
        bar.close()
    for key, reason in result.skipped:
        print(f"skipped {key}: {reason}", file=sys.stderr)
    written = ", ".join(str(path) for path in result.written) or "nothing new"
    resumed = f"; {len(result.resumed)} part(s) already complete, left as they were" if result.resumed else ""
    print(f"embedded {result.num_embedded} {args.modality} input(s) into {written}{resumed}; "
          f"skipped {len(result.skipped)}")
    return 0


# classify ----------------------------------------------------------------------------------


def run_classify(args, parser: argparse.ArgumentParser) -> int:
    import torch
    from multimodal.eval import zero_shot_probabilities
    from multimodal.api import ZeroShotClassifier

    labels = _labels(args, parser)
    templates = _templates(args, parser)
    modality = args.modality or _modality_of_files(args.files, parser, "the files")
    model = _load_model(args)
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


# eval --------------------------------------------------------------------------------------


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
        modality = _modality_of_files([str(path) for path, _ in media], parser, f"the files of {root}")
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
        bar = _progress_bar(len(self.items), "file", f"eval {self.modality}")
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


def run_eval(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.pipeline import SourceSpec, make_loader
    from multimodal.evaluation import EvalSetConfig, run_evaluation
    from multimodal.report import format_results

    labels = _labels(args, parser)
    templates = _templates(args, parser)
    folder = _is_class_folder(args.data)
    if folder and args.task != "zeroshot":
        parser.error("argument --data: a class folder is a zero-shot data set; retrieval needs shards with captions")
    if not folder and not is_shard_spec(args.data) and not Path(args.data).is_dir():
        parser.error(f"argument --data: {args.data} is neither a folder nor a shard spec (.tar, {{..}} or pipe:)")
    model = _load_model(args)
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
    config = EvalSetConfig(name=args.name, shards=str(args.data), task=args.task, modality=modality,
                           class_names=list(class_names), templates=templates or [],
                           gallery_modality=args.gallery_modality)
    metrics = run_evaluation(model, config, loader, model.tokenizer, device=model.device)
    results = {f"{args.name}/{key}": value for key, value in metrics.items()}
    skipped = loader.skipped if folder else loader.stats.summary()
    print(format_results(results))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": str(args.checkpoint), "task": args.task, "data": args.data, "modality": modality,
                  "class_names": list(class_names), "results": results, "skipped": skipped}
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


# shards ------------------------------------------------------------------------------------


def run_shards(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.writer import samples_from_folder, samples_from_manifest, write_shards

    source = Path(args.input)
    if source.is_dir():
        samples = samples_from_folder(source, layout=args.layout, caption_template=args.caption_template)
    elif source.is_file():
        if source.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
            parser.error(f"argument --input: {source} is a file but not a .csv or .jsonl manifest")
        samples = samples_from_manifest(source)
    else:
        parser.error(f"argument --input: {source} does not exist (expected a folder or a .csv/.jsonl manifest)")
    bar = _progress_bar(len(samples), "sample", "shards")

    def progress(state) -> None:
        bar.n = state.processed
        bar.set_postfix(written=state.written, skipped=state.skipped, refresh=False)
        bar.refresh()

    try:
        result = write_shards(samples, args.output, prefix=args.prefix, max_samples_per_shard=args.max_samples,
                              max_bytes_per_shard=args.max_bytes, validation_fraction=args.validation_fraction,
                              seed=args.seed, overwrite=args.overwrite, progress=progress)
    finally:
        bar.close()
    for origin, reason in result.skipped:
        print(f"skipped {origin}: {reason}", file=sys.stderr)
    for name, split in result.splits.items():
        print(f"{name}: {split.num_samples} samples in {len(split.shards)} shard(s): {split.spec or '(none)'}")
    print(f"written {result.num_written}, skipped {len(result.skipped)}")
    return 0


# tokenizer ---------------------------------------------------------------------------------


def _is_caption_shards(source: str) -> bool:
    """A shard spec, or a folder of .tar shards (as `multimodal shards` writes)."""
    return is_shard_spec(source) or (Path(source).is_dir() and any(Path(source).glob("*.tar")))


def _captions(sources: Sequence[str]):
    from multimodal.data.shards import expand_shards, read_shard
    from multimodal.data.tokenizer import read_caption_files
    from multimodal.embed import shard_sample_input

    for source in sources:
        if _is_caption_shards(source):
            for url in expand_shards(source):
                for sample in read_shard(url, []):
                    try:
                        yield shard_sample_input(sample, "text")
                    except (ValueError, UnicodeDecodeError):
                        continue
        else:
            yield from read_caption_files(source)


def run_tokenizer(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.tokenizer import MIN_VOCAB_SIZE, Tokenizer

    if args.vocab_size < MIN_VOCAB_SIZE:
        parser.error(f"argument --vocab-size: must be at least {MIN_VOCAB_SIZE} (256 bytes + 3 special tokens), "
                     f"got {args.vocab_size}")
    for source in args.captions:
        if not _is_caption_shards(source) and not Path(source).is_file():
            parser.error(f"argument --captions: {source} is neither a caption file, a shard spec nor a folder of shards")
    tokenizer = Tokenizer.train(_captions(args.captions), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    path = tokenizer.save(args.output)
    print(f"tokenizer with {tokenizer.vocab_size} ids written to {path}")
    return 0


# convert -----------------------------------------------------------------------------------


def run_convert(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.interop import convert_checkpoint

    if not Path(args.source).exists():
        parser.error(f"argument SOURCE: {args.source} does not exist (expected a weights file or a directory)")
    options = {"activation": args.activation, "model_config": args.model_config, "config": args.config,
               "vocab_path": args.vocab_path}
    allowed = {"open_clip": {"activation", "model_config", "vocab_path"}, "hf-clip": {"config", "vocab_path"},
               "hf-ast": {"config"}}[args.source_kind]
    for name, value in options.items():
        if value is not None and name not in allowed:
            parser.error(f"argument --{name.replace('_', '-')}: does not apply to --from {args.source_kind}")
    output = convert_checkpoint(args.source_kind, args.source, args.output,
                                **{name: value for name, value in options.items() if value is not None})
    print(f"converted {args.source} ({args.source_kind}) into {output}")
    return 0


# demo --------------------------------------------------------------------------------------


def run_demo(args, parser: argparse.ArgumentParser) -> int:
    from multimodal.data.demo import SPLITS, build_demo

    if not 0 < args.scale <= 1:
        parser.error(f"argument --scale: expected a number in (0, 1], got {args.scale}")
    bars: dict[str, object] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = _progress_bar(total, "item", stage)
        bar = bars[stage]
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        paths = build_demo(args.cache, force=args.force, progress=progress, scale=args.scale, seed=args.seed)
    finally:
        for bar in bars.values():
            bar.close()
    print(f"demo data set in {paths.root}")
    for split in SPLITS:
        print(f"  {split}: {paths.num_samples.get(split, 0)} samples: {paths.shards(split)}")
    print(f"  captions: {paths.captions_file}")
    print(f"  class names: {', '.join(paths.class_names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
