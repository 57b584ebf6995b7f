"""Shards from a remote store: read beside local disk, and training beside shards that stall, fail and are cut.

Throughput: JPEG shards of 224 px images (smooth random fields with noise, quality 90,
as ``bench data`` writes them, 200 of them repeated; 1,000 images and about 23 MB a shard) are read as
training reads them (:func:`multimodal.data.pipeline.loader.make_loader`, training transforms,
2 workers, a whole pass over the shards: decode, random resized crop, collation, the
batch normalised) once from local disk and once over HTTP from a loopback server
(:class:`bench.shard_server.ShardServer`) that waits 100 ms before the first byte of
each response and sends at most 20 MB/s on each connection. The two alternate, round
by round; it prints images/s of each and remote / local (target: at least 0.9).

Faults: the demo recipe (tiny preset, image-text, the demo's augmentation and label
positives, its tokenizer) trains 100 steps from the demo's 13 image shards served over
HTTP, once all healthy and once with one shard that stalls for ever (half of it sent,
then nothing), one that answers 404 and one cut half-way. It prints both wall times,
their ratio (target: at most 1.5), the exit status and the line naming each faulty
shard. The runs use ``--data.remote.stall_timeout 5 --data.remote.retries 1``: the
defaults (30 s, 3 retries) give a stalled shard up after about two minutes, longer than
the whole run, which would go on beside it all the same but never name it.

Run: ``python -m bench remote [--quick] [--rounds N] [--part throughput|faults]``.
Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import webdataset

from bench.bench_data import write_image_shards
from bench.common import alternate, machine_summary, noise_note
from bench.shard_server import ShardServer
from multimodal.config_parser import to_dict
from multimodal.data.preprocess.preprocess_config import ImagePreprocessConfig
from multimodal.data.demo.dataset import build_demo
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.shard_reader import expand_shards, read_shard
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.training.demo_sources import demo_augment, demo_tokenizer

FIRST_BYTE_DELAY = 0.1  # seconds
BANDWIDTH = 20e6  # bytes per second, per connection
THROUGHPUT_TARGET = 0.9  # remote / local
FAULT_TARGET = 1.5  # faulty / healthy
FAULTS = {3: "stall", 7: "404", 10: "cut"}  # demo image shard index -> fault
EXPECTED = {"stall": "no data for 5 s", "404": "HTTP 404 Not Found", "cut": "connection cut after 0.8 of 1.5 MB"}
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller shards, 30 training steps, one round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timed rounds per comparison")
    parser.add_argument("--part", choices=("throughput", "faults", "both"), default="both")
    return parser.parse_args(argv)


# Throughput ----------------------------------------------------------------------------------


def write_shards(folder: Path, num_shards: int, per_shard: int, distinct: int = 200) -> list[str]:
    """``num_shards`` shards of ``per_shard`` JPEGs, ``distinct`` different images (as ``bench data`` makes them) repeated.

    Decoding costs what it costs for any image of this kind; repeating them spares
    minutes of encoding on a busy machine.
    """
    [pool] = write_image_shards(folder / "pool", distinct, 1, size=224)
    jpegs = [sample["jpg"] for sample in read_shard(pool, [])]
    urls = []
    for shard in range(num_shards):
        url = str(folder / f"images-{shard:03d}.tar")
        with webdataset.TarWriter(url) as writer:
            for index in range(shard * per_shard, (shard + 1) * per_shard):
                writer.write({"__key__": f"{index:06d}", "jpg": jpegs[index % distinct], "txt": f"image number {index}"})
        urls.append(url)
    return urls


def read_pass(urls: list[str]) -> int:
    """One pass over the shards as training reads them; the number of images."""
    loader = make_loader([SourceSpec(urls, ["image", "text"])], batch_size=64, train=True, resampled=False,
                         num_workers=2, preprocess={"image": ImagePreprocessConfig(image_size=224)})
    return sum(len(batch["__key__"]) for batch in loader)


def throughput(quick: bool, rounds: int) -> str:
    num_shards, per_shard = (4, 250) if quick else (8, 1000)
    with tempfile.TemporaryDirectory() as folder:
        local = write_shards(Path(folder), num_shards, per_shard)
        megabytes = sum(Path(url).stat().st_size for url in local) / 1e6
        print(f"{num_shards} shards of {per_shard} JPEGs of 224 px, {megabytes / num_shards:.1f} MB a shard; "
              f"server: {FIRST_BYTE_DELAY * 1e3:.0f} ms before the first byte, {BANDWIDTH / 1e6:.0f} MB/s a connection",
              flush=True)
        with ShardServer(folder, first_byte_delay=FIRST_BYTE_DELAY, bandwidth=BANDWIDTH) as server:
            remote = [server.url(Path(url).name) for url in local]
            images = num_shards * per_shard
            comparison = alternate({"local disk": lambda: read_pass(local), "http": lambda: read_pass(remote)},
                                   rounds=rounds, warmup=0 if quick else 1)
    for name in ("local disk", "http"):
        print(comparison.describe(name, images, "images/s"))
    ratio = comparison.ratio("local disk", "http")  # time from disk / time over http: the speed ratio
    print(noise_note(comparison))
    return f"remote: http {ratio:.2f}x local disk (target >= {THROUGHPUT_TARGET}) at {images} images per pass"


# Faults --------------------------------------------------------------------------------------


def train_command(urls: list[str], tokenizer: Path, output_dir: Path, name: str, steps: int) -> list[str]:
    source = {"shards": urls, "modalities": ["image", "text"], "label_key": "json:label",
              "augment": {"image": to_dict(demo_augment().image)}}
    return [sys.executable, str(REPO / "train.py"), "--optim.steps", str(steps), "--run_name", name,
            "--output_dir", str(output_dir), "--data.train", json.dumps([source]), "--data.tokenizer", str(tokenizer),
            "--plot", "false", "--data.remote.stall_timeout", "5", "--data.remote.retries", "1"]


def train_once(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, exit status, everything printed) of one training run."""
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - start, finished.returncode, finished.stdout + finished.stderr


def faults(quick: bool, rounds: int) -> str:
    paths = build_demo()
    local = expand_shards(paths.image_train)
    folder = Path(local[0]).parent
    names = [Path(url).name for url in local]
    steps = 30 if quick else 100
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = demo_tokenizer(paths, 512).save(Path(scratch) / "tokenizer.json")
        with ShardServer(folder) as healthy, ShardServer(folder, faults={names[i]: f for i, f in FAULTS.items()}) as faulty:
            runs = {"healthy": healthy, "faulty": faulty}
            times: dict[str, list[float]] = {name: [] for name in runs}
            outputs: dict[str, str] = {}
            for round_index in range(rounds):
                for name in (list(runs) if round_index % 2 == 0 else list(runs)[::-1]):
                    urls = [runs[name].url(n) for n in names]
                    seconds, status, output = train_once(
                        train_command(urls, tokenizer, Path(scratch), f"{name}-{round_index}", steps))
                    print(f"{name}: {seconds:.1f} s, exit status {status}", flush=True)
                    if status != 0:
                        print(output[-3000:])
                    times[name].append(seconds)
                    outputs[name] = output
            named = _named_shards(outputs["faulty"], {faulty.url(names[i]): f for i, f in FAULTS.items()})
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["faulty"] / median["healthy"]
    right = sum(ok for ok, _ in named.values())
    return (f"remote faults: {steps} steps {median['faulty']:.1f} s beside a stalled, a missing and a cut shard, "
            f"{median['healthy']:.1f} s healthy: {ratio:.2f}x (target <= {FAULT_TARGET}); {right} of 3 named rightly")


def _named_shards(output: str, faulty: dict[str, str]) -> dict[str, tuple[bool, str]]:
    """For each faulty URL: (named with the expected reason, the line that names it)."""
    named = {}
    for url, fault in faulty.items():
        lines = [line for line in output.splitlines() if "skipping shard" in line and url in line]
        line = lines[0][lines[0].index("source "):] if lines else "(not named)"  # after any progress bar
        named[url] = (bool(re.search(re.escape(EXPECTED[fault]), line)), line)
        print(f"{fault:>5}: {line.strip()}")
    return named


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(machine_summary(), flush=True)
    summaries = []
    if args.part in ("throughput", "both"):
        summaries.append(throughput(args.quick, args.rounds or (1 if args.quick else 3)))
        print(summaries[-1], flush=True)
    if args.part in ("faults", "both"):
        summaries.append(faults(args.quick, args.rounds or 1))
        print(summaries[-1], flush=True)
    print("; ".join(summaries))


if __name__ == "__main__":
    main()
