"""Search: build time, index size, memory-mapped open, query latency and recall@10 against exact search.

The collection is synthetic, since no data set of a million real embeddings ships
with a package: unit vectors of 512 dimensions in 1,000 clusters, each point its
cluster's centre plus a displacement in a 16-dimensional subspace of its own and a
little isotropic noise. Real CLIP-style embeddings are likewise clustered with a low
local dimension; uniformly random vectors would be the worst case for any
approximate index (every point about equally far from every other) and say little
about real collections. It is written as ten ``multimodal embed`` parts (``.npy`` +
``.keys.json``) and indexed as ``multimodal index`` does (:func:`build_index`).

Queries are 1,000 held-out points of the same distribution, searched one at a time
(``k=10``), after the index is opened memory-mapped; recall@10 is measured against
exact search (FAISS ``knn`` over every vector). Exact search on 50,000 vectors is
timed the same way. Side by side, alternating query by query: the ``ivfpq`` index
and exact search over the whole collection.

With ``--demo CHECKPOINT`` (a checkpoint trained by ``train.py`` on the built-in demo),
the held-out MNIST images (``image-val``) are embedded and indexed as ``multimodal embed``
and ``multimodal index`` do, and each digit word is searched for: as text ("seven", and
"a handwritten seven" as the demo's captions phrase it),
spoken by each held-out synthetic voice (``audio-val``: mean over its clips) and by
the human recordings (``audio-real``). Printed: precision@10, the fraction of the top
10 images that show the digit. Speech was never trained against images.

Run: ``python -m bench.bench_search [--quick] [--size N] [--demo CHECKPOINT]``. Targets
(2 cores): build <= 10 min, query p50 <= 5 ms and p99 <= 20 ms, recall@10 >= 0.95, open
<= 1 s at 1,000,000 x 512; exact p50 <= 5 ms at 50,000; on the demo, 9 of the top 10
for text "seven" and for a spoken "three".
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import machine_summary

FULL = {"size": 1_000_000, "dim": 512, "exact_size": 50_000, "queries": 1000, "parts": 10}
QUICK = {"size": 10_000, "dim": 32, "exact_size": 2_000, "queries": 50, "parts": 2}
CLUSTERS = 1000
LOCAL_DIM = 16
SPREAD = 0.6  # length of a point's displacement from its centre (the centre has length 1)
NOISE = 0.05  # length of the isotropic noise
TARGETS = {"build_s": 600.0, "p50_ms": 5.0, "p99_ms": 20.0, "recall": 0.95, "open_s": 1.0, "exact_p50_ms": 5.0}


def synthetic_embeddings(count: int, dim: int, seed: int, clusters: int = CLUSTERS) -> np.ndarray:
    """Unit vectors float32 (count, dim): cluster centre + a 16-dimensional local displacement + noise (see above)."""
    rng = np.random.default_rng(seed)
    structure = np.random.default_rng(1234)  # the same clusters for the collection and its queries
    centres = structure.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = structure.standard_normal((clusters, LOCAL_DIM, dim)).astype(np.float32) / np.sqrt(dim)  # rows of norm ~1
    labels = rng.integers(0, clusters, count)
    order = np.argsort(labels, kind="stable")
    ends = np.cumsum(np.bincount(labels, minlength=clusters))
    out = np.empty((count, dim), dtype=np.float32)
    for cluster in range(clusters):
        rows = order[ends[cluster] - (ends[cluster] - (ends[cluster - 1] if cluster else 0)) : ends[cluster]]
        local = rng.standard_normal((rows.size, LOCAL_DIM)).astype(np.float32)  # (n, 16)
        noise = rng.standard_normal((rows.size, dim)).astype(np.float32) * (NOISE / np.sqrt(dim))
        out[rows] = centres[cluster] + SPREAD * (local @ bases[cluster]) / np.sqrt(LOCAL_DIM) + noise  # (n, dim)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def write_parts(vectors: np.ndarray, folder: Path, parts: int) -> list[Path]:
    """The collection as ``multimodal embed`` writes shard parts: part-NNNNNN.npy + .keys.json."""
    from multimodal.apps.embedding_outputs import write_embeddings

    paths = []
    for number, rows in enumerate(np.array_split(np.arange(len(vectors)), parts)):
        keys = [f"{number:06d}/{row:09d}" for row in rows]
        paths.append(write_embeddings(folder / f"part-{number:06d}.npy", vectors[rows], keys))
    return paths


def bench_checkpoint(folder: Path, dim: int) -> Path:
    """A tiny random checkpoint embedding into ``dim`` dimensions: the index records its id, nothing is embedded."""
    import dataclasses

    import torch

    from multimodal.checkpoint import save_checkpoint
    from multimodal.model import MultimodalModel
    from multimodal.presets import tiny

    torch.manual_seed(0)
    config = dataclasses.replace(tiny(["image"]), embed_dim=dim)
    return save_checkpoint(MultimodalModel(config), folder / "checkpoint")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def timed_queries(search, queries: np.ndarray) -> list[float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None])
        times.append(time.perf_counter() - start)
    return times


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def exact_small_collection(vectors: np.ndarray, queries: np.ndarray, folder: Path, checkpoint: Path):
    """Our flat index (``multimodal index --index-type flat``) against FAISS's float32 IndexFlatIP, alternating per query."""
    import faiss

    from multimodal.apps.embedding_outputs import write_embeddings
    from multimodal.apps.search import build_index

    vectors = np.ascontiguousarray(vectors)
    write_embeddings(folder / "small.npy", vectors, [str(i) for i in range(len(vectors))])
    ours = build_index([folder / "small.npy"], folder / "small-index", checkpoint=checkpoint, modality="image",
                       index_type="flat")
    theirs = faiss.IndexFlatIP(vectors.shape[1])
    theirs.add(vectors)
    ours_times, theirs_times = [], []
    for row, query in enumerate(queries):
        pair = [(ours_times, lambda q=query: ours.search_vectors(q[None], 10)), (theirs_times, lambda q=query: theirs.search(q[None], 10))]
        for times, call in pair if row % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return ours_times, theirs_times


def run(settings: dict, folder: Path) -> dict:
    import faiss

    from multimodal.apps.search import build_index, index_size, open_index

    size, dim = settings["size"], settings["dim"]
    started = time.perf_counter()
    vectors = synthetic_embeddings(size, dim, seed=0)
    queries = synthetic_embeddings(settings["queries"], dim, seed=1)
    parts = write_parts(vectors, folder / "parts", settings["parts"])
    checkpoint = bench_checkpoint(folder, dim)
    print(f"collection: {size} x {dim} synthetic unit vectors in {len(parts)} parts "
          f"(generated and written in {time.perf_counter() - started:.1f} s)", flush=True)

    start = time.perf_counter()
    index_type = "auto" if size > 100_000 else "ivfpq"  # the quick run forces the approximate path
    build_index([folder / "parts"], folder / "index", checkpoint=checkpoint, modality="image", index_type=index_type,
                progress=lambda line: print(f"  {time.perf_counter() - start:7.1f} s  {line}", flush=True))
    build_seconds = time.perf_counter() - start
    sizes = index_size(folder / "index")

    open_times = []
    for _ in range(5):
        start = time.perf_counter()
        index = open_index(folder / "index")
        open_times.append(time.perf_counter() - start)
    plan = index.plan
    print(f"index: {plan.factory}, nprobe {plan.nprobe}, refine x{plan.refine_factor}, trained on {plan.training['sample']} "
          f"vectors in {plan.training['seconds']} s; tuning recall@10 {plan.tuning['recall@10']}", flush=True)

    vectors_mapped = np.load(folder / "index" / index.manifest["chunks"][0]["vectors"], mmap_mode="r")
    _, truth = faiss.knn(queries, np.ascontiguousarray(vectors_mapped), 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_full = faiss.IndexFlatIP(dim)
    exact_full.add(np.ascontiguousarray(vectors_mapped))

    # Side by side, alternating query by query: the index and exact search over the same collection.
    index_times, exact_times = [], []
    found = np.empty((len(queries), 10), dtype=np.int64)
    for row, query in enumerate(queries):
        pair = [("index", lambda q=query: index.search_vectors(q[None], 10)), ("exact", lambda q=query: exact_full.search(q[None], 10))]
        for name, call in pair if row % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            _, ids = call()
            (index_times if name == "index" else exact_times).append(time.perf_counter() - start)
            if name == "index":
                found[row] = ids[0]
    del exact_full

    small_times, flat32_times = exact_small_collection(vectors_mapped[: settings["exact_size"]], queries, folder, checkpoint)
    return {
        "build_s": build_seconds, "sizes": sizes, "open_s": statistics.median(open_times), "open_first_s": open_times[0],
        "p50_ms": 1e3 * percentile(index_times, 50), "p99_ms": 1e3 * percentile(index_times, 99),
        "exact_full_p50_ms": 1e3 * percentile(exact_times, 50),
        "speedup": statistics.median(e / i for e, i in zip(exact_times, index_times)),
        "recall": recall_at_10(found, truth),
        "exact_p50_ms": 1e3 * percentile(small_times, 50), "exact_p99_ms": 1e3 * percentile(small_times, 99),
        "flat32_p50_ms": 1e3 * percentile(flat32_times, 50),
        "plan": plan,
    }


def report(settings: dict, results: dict) -> list[str]:
    sizes = results["sizes"]
    mib = 1 << 20
    return [
        f"build {results['build_s']:.1f} s (target <= {TARGETS['build_s']:.0f} s)",
        f"index size {sizes['total'] / mib:.1f} MiB: FAISS {sizes['index'] / mib:.1f} MiB, exact vectors "
        f"{sizes['vectors'] / mib:.1f} MiB, keys and captions {sizes['items'] / mib:.1f} MiB",
        f"open (memory-mapped) median {results['open_s'] * 1e3:.1f} ms, first {results['open_first_s'] * 1e3:.1f} ms "
        f"(target <= {TARGETS['open_s'] * 1e3:.0f} ms)",
        f"query k=10 one at a time: p50 {results['p50_ms']:.2f} ms, p99 {results['p99_ms']:.2f} ms "
        f"(targets <= {TARGETS['p50_ms']:.0f} / {TARGETS['p99_ms']:.0f} ms); recall@10 {results['recall']:.3f} "
        f"(target >= {TARGETS['recall']})",
        f"exact search over all {settings['size']} vectors, alternating with the index: p50 "
        f"{results['exact_full_p50_ms']:.2f} ms; the index is {results['speedup']:.1f}x faster (median per query)",
        f"flat index (exhaustive) on {settings['exact_size']} vectors: p50 {results['exact_p50_ms']:.2f} ms, p99 "
        f"{results['exact_p99_ms']:.2f} ms (target p50 <= {TARGETS['exact_p50_ms']:.0f} ms); FAISS float32 IndexFlatIP "
        f"alternating with it: p50 {results['flat32_p50_ms']:.2f} ms",
    ]


def demo_precision(checkpoint: Path, folder: Path) -> dict[str, dict[str, float]]:
    """Precision@10 of each digit word against the held-out demo images: {"text" | "spoken" | "human": {word: p}}."""
    import json

    from multimodal.apps.api import load_embedding_model
    from multimodal.data.demo.dataset import build_demo
    from multimodal.data.pipeline.shard_reader import expand_shards, read_shard
    from multimodal.apps.embedding import embed_shards, shard_sample_input
    from multimodal.apps.search import build_index, search

    paths = build_demo(None)
    model = load_embedding_model(checkpoint)
    images = paths.shards("image-val")
    embed_shards(model, "image", images, folder / "image-parts")
    index = build_index([folder / "image-parts"], folder / "demo-index", checkpoint=checkpoint, modality="image",
                        shards=images)
    label_of = {sample["__key__"]: json.loads(sample["json"])["label"]
                for url in expand_shards(images) for sample in read_shard(url, [])}

    def precision(hits, label: int) -> float:
        return sum(label_of[hit.key] == label for hit in hits) / len(hits)

    results: dict[str, dict[str, float]] = {"text": {}, "caption": {}, "spoken": {}, "human": {}}
    for label, word in enumerate(paths.class_names):
        results["text"][word] = precision(search(index, model, word, modality="text", k=10)[0], label)
        caption = f"a handwritten {word}"  # as the demo's training captions read
        results["caption"][word] = precision(search(index, model, caption, modality="text", k=10)[0], label)
    for name, split in (("spoken", "audio-val"), ("human", "audio-real")):
        clips = {label: [] for label in range(len(paths.class_names))}
        for url in expand_shards(paths.shards(split)):
            for sample in read_shard(url, []):
                clips[json.loads(sample["json"])["label"]].append(shard_sample_input(sample, "audio"))
        for label, word in enumerate(paths.class_names):
            if clips[label]:
                hits = search(index, model, clips[label], modality="audio", k=10)
                results[name][word] = float(np.mean([precision(row, label) for row in hits]))
    return results


def demo_report(results: dict[str, dict[str, float]]) -> list[str]:
    words = list(results["text"])
    lines = ["precision@10 against the 1,000 held-out MNIST images (fraction of the top 10 showing the digit):",
             f"{'query':<34}" + "".join(f"{word:>7}" for word in words) + "   mean"]
    for name, title in (("text", "text (the word)"), ("caption", "text \"a handwritten <word>\""),
                        ("spoken", "spoken, held-out voices (mean)"),
                        ("human", "spoken, human recordings")):
        row = results[name]
        lines.append(f"{title:<34}" + "".join(f"{row.get(word, float('nan')):>7.2f}" for word in words)
                     + f"{np.mean(list(row.values())):>7.2f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['size']} x {QUICK['dim']} instead of "
                                                             f"{FULL['size']} x {FULL['dim']}")
    parser.add_argument("--rounds", type=int, default=None, help="accepted for `python -m bench`; unused")
    parser.add_argument("--size", type=int, default=None, help="vectors in the collection")
    parser.add_argument("--demo", type=Path, metavar="CHECKPOINT",
                        help="also search the held-out demo images with this demo-trained checkpoint")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.size:
        settings["size"] = args.size
        settings["exact_size"] = min(settings["exact_size"], args.size)
    print(machine_summary(), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        demo = demo_precision(args.demo, folder) if args.demo else None
        results = run(settings, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if demo is not None:
        for line in demo_report(demo):
            print(line)
    for line in report(settings, results):
        print(line)
    print(f"search {settings['size']} x {settings['dim']}: build {results['build_s']:.0f} s, "
          f"{results['sizes']['total'] / (1 << 20):.0f} MiB, open {results['open_s'] * 1e3:.0f} ms, "
          f"p50 {results['p50_ms']:.2f} ms, p99 {results['p99_ms']:.2f} ms, recall@10 {results['recall']:.3f}; "
          f"flat on {settings['exact_size']}: p50 {results['exact_p50_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
