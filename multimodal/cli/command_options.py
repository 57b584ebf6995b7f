"""What the commands share: option types, model options, labels and templates, progress bars, devices."""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from multimodal.data.modalities.registry import get_modality
from multimodal.modality_parts import CLASSIFIED_MODALITIES

PROGRAM = "multimodal"
EXIT_STATUS_HELP = (
    "exit status: 0 when every input was processed; 1 when some inputs were skipped (each named on stderr with "
    "its reason, then their count) or the job failed; 2 for bad arguments. `shards` allows up to "
    "--max-skip-fraction of skipped samples (default 0.1) before it exits 1, and lists each in skipped.jsonl"
)
DEVICE_HELP = "where the model runs: auto (this process's GPU, else cuda if available, else cpu), cpu, cuda, cuda:N"
PRECISION_HELP = (
    "weights' precision: auto (bf16 on CPUs with AVX512-BF16/AMX and on bf16 GPUs, fp32 otherwise), bf16, fp32; "
    "embeddings are returned in float32 either way"
)


def checked(convert, accepts, expected: str):
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


positive_int = checked(int, lambda value: value >= 1, "a positive integer")
non_negative_int = checked(int, lambda value: value >= 0, "an integer >= 0")
fraction = checked(float, lambda value: 0.0 <= value < 1.0, "a number in [0, 1)")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 500000000, 500M or 1G, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def checkpoint_dir(text: str) -> Path:
    """An argparse ``type``: a checkpoint directory whose config.json this version reads.

    A training run's folder (which holds a config.json too) is refused with the path of
    its latest checkpoint.
    """
    from multimodal.checkpoint import read_config

    path = Path(text)
    try:
        read_config(path)
    except (ValueError, OSError) as error:  # CheckpointError, broken JSON, unreadable file
        raise argparse.ArgumentTypeError(one_line(error)) from None
    return path


def one_line(error: BaseException | str) -> str:
    """An error message on one line: the lines of a multi-line message joined with "; "."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(error).__name__


def exit_status(skipped: int, what: str) -> int:
    """The exit status of a command that processed inputs: 0, or 1 with the count of ``what`` skipped on stderr."""
    if skipped:
        print(f"{PROGRAM}: skipped {skipped} {what}", file=sys.stderr)
        return 1
    return 0


def add_model_options(parser: argparse.ArgumentParser, batch_size: int = 32) -> None:
    parser.add_argument("--checkpoint", required=True, type=checkpoint_dir, metavar="DIR",
                        help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help=f"inputs encoded together (audio: windows) (default {batch_size})")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help=PRECISION_HELP)


def add_label_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--labels", metavar="A,B,C", help="class names, comma-separated, in label order")
    group.add_argument("--labels-file", metavar="FILE", help="a text file with one class name per line, in label order")
    parser.add_argument("--templates", action="append", metavar="TEMPLATE",
                        help="a prompt template with one {} for the class name, e.g. 'a photo of a {}.'; repeat "
                             "the option for several (default: the templates the checkpoint's training evaluated "
                             "the modality with, recorded in its config.json, else the built-in ones of the "
                             "modality; stderr says which)")


def progress_bar(total: int | None, unit: str, description: str):
    """A progress bar on stderr: live in a terminal, a line every 10 s in a log file."""
    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, unit=unit, desc=description, file=sys.stderr, dynamic_ncols=True, mininterval=interval)


def show_progress(bar, done: int, **postfix) -> None:
    """Moves ``bar`` to ``done``; it redraws at its own pace (not at every item: a log would get a line each)."""
    if postfix:
        bar.set_postfix(postfix, refresh=False)
    bar.update(done - bar.n)


def resolve_device(text: str, process_device=None):
    import torch

    if text != "auto":
        try:
            return torch.device(text)
        except RuntimeError as error:
            raise ValueError(f"--device {text!r} is not a device ({error})") from None
    if process_device is not None:
        return process_device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model_for(args, process_device=None):
    from multimodal.apps.api import load_embedding_model

    return load_embedding_model(args.checkpoint, device=resolve_device(args.device, process_device),
                                precision=args.precision, batch_size=args.batch_size)


def parse_labels(args, parser: argparse.ArgumentParser) -> list[str] | None:
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


def parse_templates(args, parser: argparse.ArgumentParser) -> list[str] | None:
    if not args.templates:
        return None
    from multimodal.eval import validate_templates

    try:
        return list(validate_templates(args.templates))
    except ValueError as error:
        parser.error(f"argument --templates: {error}")


def print_templates(templates: Sequence[str], origin: str) -> None:
    """Says on stderr which prompt templates a zero-shot head was built from."""
    print(f"templates ({origin}): " + " | ".join(templates), file=sys.stderr)


def not_media_reason() -> str:
    """Why a file is not classified: what it is not, and what is read."""
    media = [get_modality(name) for name in CLASSIFIED_MODALITIES]
    # "images are read from .jpg, ... files, audio from .flac, ... files"
    read = [f"{m.many} from {', '.join('.' + e for e in m.folder_extensions)} files" for m in media]
    read[0] = read[0].replace(" from ", " are read from ", 1)
    return (f"not {' or '.join(m.one for m in media)} file (neither by its extension nor by its content); "
            + ", ".join(read))


def single_modality(kinds: dict, parser: argparse.ArgumentParser, option: str) -> str:
    """The one modality of files whose kinds are known (``{file: "image" | "audio"}``); modalities mixed are refused."""
    found = sorted(set(kinds.values()))
    if len(found) != 1:
        mixed = " and ".join(get_modality(m).many for m in CLASSIFIED_MODALITIES if m in found)
        parser.error(f"argument --modality: {option} mix {mixed}; give one modality at a time")
    return found[0]
