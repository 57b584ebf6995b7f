"""Search indexes: exact and IVF-PQ results against numpy, adding parts, the manifest, damaged files, the plan."""
import json
import shutil

import numpy as np
import pytest

from multimodal.apps.embedding_outputs import write_embeddings
from multimodal.errors import ArgumentNeeded
from multimodal.apps.search import (
    IndexFileError,
    add_to_index,
    build_index,
    find_duplicates,
    index_size,
    open_index,
    plan_index,
    read_manifest,
)
from multimodal.apps.search.plan import default_nlist, default_pq_m
from bench.bench_search import bench_checkpoint, synthetic_embeddings
from tests.apps.test_api import tiny_checkpoint

DIM = 128  # the tiny preset's embedding width


def unit_rows(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ vectors.T  # (Q, N)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint()


def write_parts(folder, vectors, sizes, format="npy"):
    paths, start = [], 0
    for number, size in enumerate(sizes):
        keys = [f"shard{number}/{row:05d}" for row in range(start, start + size)]
        paths.append(write_embeddings(folder / f"part-{number:03d}.{format}", vectors[start : start + size], keys))
        start += size
    return paths


def test_flat_index_returns_the_exact_top_k_with_keys(checkpoint, tmp_path):
    vectors = unit_rows(700)
    write_parts(tmp_path / "parts", vectors, [300, 0, 400])  # an empty part, as an empty shard gives
    index = build_index([tmp_path / "parts"], tmp_path / "index", checkpoint=checkpoint, modality="image")
    assert (index.plan.type, index.count, index.dim, index.modality) == ("flat", 700, DIM, "image")
    queries = unit_rows(5, seed=1) * 3.0  # not unit length: normalised, scores are cosines
    scores, ids = index.search_vectors(queries, 7)
    expected_scores, expected_ids = exact_top(vectors, queries, 7)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)  # re-scored in float32, not the float16 copies
    hits = index.search(queries[:1], 3)[0]
    assert [hit.id for hit in hits] == expected_ids[0, :3].tolist()
    best = int(expected_ids[0, 0])
    assert hits[0].key == f"shard{0 if best < 300 else 2}/{best:05d}" and hits[0].source is None
    np.testing.assert_array_equal(index.vectors([699, 0, 350]), vectors[[699, 0, 350]])
    # k beyond the collection: every row, once.
    assert sorted(index.search_vectors(queries[:1], 10_000)[1][0].tolist()) == list(range(700))


def test_manifest_records_the_checkpoint_modality_and_plan(checkpoint, tmp_path):
    from multimodal.checkpoint import checkpoint_id

    write_parts(tmp_path / "parts", unit_rows(50), [50], format="safetensors")
    build_index([tmp_path / "parts"], tmp_path / "index", checkpoint=checkpoint, modality="text")
    manifest = read_manifest(tmp_path / "index")
    assert manifest["checkpoint"] == {"id": checkpoint_id(checkpoint), "path": str(checkpoint.resolve())}
    assert (manifest["modality"], manifest["dim"], manifest["count"]) == ("text", DIM, 50)
    assert manifest["index"]["type"] == "flat" and manifest["index"]["factory"] == "SQfp16"
    assert manifest["inputs"][0]["rows"] == 50 and len(manifest["inputs"][0]["sha256"]) == 64
    sizes = index_size(tmp_path / "index")
    assert sizes["vectors"] > 50 * DIM * 4 and sizes["total"] > sizes["index"] + sizes["vectors"]


@pytest.fixture(scope="module")
def ivfpq_index(tmp_path_factory):
    """10,000 clustered vectors of 32 dimensions in an IVF-PQ index (a few seconds to train)."""
    root = tmp_path_factory.mktemp("ivfpq")
    vectors = synthetic_embeddings(10_000, 32, seed=0, clusters=50)
    write_parts(root / "parts", vectors, [6_000, 4_000])
    index = build_index([root / "parts"], root / "index", checkpoint=bench_checkpoint(root, 32), modality="image",
                        index_type="ivfpq", nlist=64)
    return index, vectors


def test_ivfpq_scores_are_exact_and_recall_is_high(ivfpq_index):
    index, vectors = ivfpq_index
    plan = index.plan
    assert (plan.type, plan.nlist, plan.pq_m) == ("ivfpq", 64, 4)
    assert plan.tuning["recall@10"] >= 0.97 and plan.training["sample"] == 10_000
    queries = synthetic_embeddings(100, 32, seed=1, clusters=50)
    scores, ids = index.search_vectors(queries, 10)
    # Every score is the exact cosine of the row it names (re-ranked from the stored vectors).
    np.testing.assert_allclose(scores, np.einsum("qe,qke->qk", queries, vectors[ids]), atol=1e-5)
    _, truth = exact_top(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist())])
    assert recall >= 0.95
    # More probes never find less: with every list probed the candidates are ranked by PQ alone.
    _, all_lists = index.search_vectors(queries, 10, nprobe=64)
    recall_all = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(all_lists.tolist(), truth.tolist())])
    assert recall_all >= recall


def test_adding_parts_keeps_earlier_ids_and_skips_what_is_indexed(checkpoint, tmp_path):
    vectors = unit_rows(500)
    first, second, third = write_parts(tmp_path / "parts", vectors, [200, 200, 100])
    build_index([first], tmp_path / "index", checkpoint=checkpoint, modality="image")
    old_file = read_manifest(tmp_path / "index")["index"]["file"]
    result = add_to_index(tmp_path / "index", [tmp_path / "parts"])  # the folder again: the first part is known
    assert result.added == [second, third] and result.already_indexed == [first] and result.rows_added == 300
    index = open_index(tmp_path / "index")
    assert index.count == 500 and not (tmp_path / "index" / old_file).exists()
    _, ids = index.search_vectors(vectors[[10, 250, 450]], 1)
    assert ids[:, 0].tolist() == [10, 250, 450]
    assert index.item(450)[0] == "shard2/00450"
    again = add_to_index(tmp_path / "index", [tmp_path / "parts"])
    assert again.added == [] and again.rows_added == 0
    # A part rewritten after it was indexed is refused rather than indexed twice.
    write_embeddings(first, vectors[:200] * -1, [f"x{i}" for i in range(200)])
    with pytest.raises(ValueError, match="changed since it was indexed"):
        add_to_index(tmp_path / "index", [first])


def test_adding_to_an_ivfpq_index_encodes_with_its_quantisers(ivfpq_index, tmp_path):
    index, vectors = ivfpq_index
    shutil.copytree(index.path, tmp_path / "index")
    extra = synthetic_embeddings(500, 32, seed=7, clusters=50)
    write_embeddings(tmp_path / "more.npy", extra, [f"new{i}" for i in range(500)])
    add_to_index(tmp_path / "index", [tmp_path / "more.npy"], modality="image")
    grown = open_index(tmp_path / "index")
    assert grown.count == 10_500 and grown.plan.nprobe == index.plan.nprobe
    scores, ids = grown.search_vectors(extra[:20], 1)
    assert ids[:, 0].tolist() == list(range(10_000, 10_020))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_nothing_is_written_when_a_build_fails(checkpoint, tmp_path):
    good = write_embeddings(tmp_path / "good.npy", unit_rows(10), [str(i) for i in range(10)])
    wrong_width = write_embeddings(tmp_path / "wide.npy", unit_rows(10, dim=64), [str(i) for i in range(10)])
    with pytest.raises(ValueError, match="64-dimensional vectors; checkpoint .* embeds into 128"):
        build_index([good, wrong_width], tmp_path / "index", checkpoint=checkpoint, modality="image")
    assert not (tmp_path / "index").exists() and not list(tmp_path.glob(".index*"))
    empty = write_embeddings(tmp_path / "empty.npy", np.zeros((0, DIM), np.float32), [])
    with pytest.raises(ValueError, match="the collection is empty: there is nothing to index"):
        build_index([empty], tmp_path / "index", checkpoint=checkpoint, modality="image")
    with pytest.raises(ArgumentNeeded) as error:
        build_index([good], tmp_path / "index", checkpoint=checkpoint)
    assert error.value.for_command_line() == (
        f"{good} does not record the modality (.npy outputs of earlier versions do not): give it with --modality")
    nan = unit_rows(3)
    nan[1, 5] = np.nan
    bad = write_embeddings(tmp_path / "nan.npy", nan, ["a", "b", "c"])
    with pytest.raises(ValueError, match="1 row\\(s\\) hold NaN"):
        build_index([bad], tmp_path / "index", checkpoint=checkpoint, modality="image")
    with pytest.raises(ValueError, match="is given twice"):
        build_index([good, good], tmp_path / "index", checkpoint=checkpoint, modality="image")
    assert not (tmp_path / "index").exists()


def test_parts_embedded_by_another_checkpoint_are_refused(checkpoint, tmp_path):
    other = bench_checkpoint(tmp_path, DIM)  # same width, other weights
    write_embeddings(tmp_path / "part.safetensors", unit_rows(4), list("abcd"),
                     metadata={"modality": "image", "checkpoint_id": "0123456789abcdef"})
    with pytest.raises(ValueError, match="was embedded by checkpoint 0123456789abcdef, not by"):
        build_index([tmp_path / "part.safetensors"], tmp_path / "index", checkpoint=checkpoint)
    write_embeddings(tmp_path / "ok.npy", unit_rows(4), list("abcd"))
    build_index([tmp_path / "ok.npy"], tmp_path / "index", checkpoint=checkpoint, modality="image")
    write_embeddings(tmp_path / "more.npy", unit_rows(4, seed=3), list("efgh"))
    with pytest.raises(ValueError, match="their embedding spaces differ"):
        add_to_index(tmp_path / "index", [tmp_path / "more.npy"], checkpoint=other)
    assert open_index(tmp_path / "index").count == 4


def test_the_modality_comes_from_the_inputs_and_is_checked(checkpoint, tmp_path):
    """.npy outputs record their modality in .meta.json; a given one, or the index's, must agree with it."""
    image = write_embeddings(tmp_path / "image.npy", unit_rows(4), list("abcd"), metadata={"modality": "image"})
    audio = write_embeddings(tmp_path / "audio.npy", unit_rows(4, seed=1), list("efgh"), metadata={"modality": "audio"})
    old = write_embeddings(tmp_path / "old.npy", unit_rows(4, seed=2), list("ijkl"))
    (tmp_path / "old.meta.json").unlink()  # as earlier versions wrote it
    with pytest.raises(ValueError) as error:
        build_index([image, audio], tmp_path / "index", checkpoint=checkpoint)
    assert str(error.value) == (f"the inputs hold embeddings of several modalities ({audio} holds audio, {image} holds "
                                "image); index one modality at a time")
    with pytest.raises(ArgumentNeeded) as error:
        build_index([old, image], tmp_path / "index", checkpoint=checkpoint, modality="text")
    assert str(error.value) == (f"modality='text', but {image} records image embeddings: leave it out (the inputs "
                                "record their modality) or give image")
    # One input that records it speaks for an earlier one that does not.
    assert build_index([old, image], tmp_path / "index", checkpoint=checkpoint).modality == "image"
    with pytest.raises(ValueError) as error:
        add_to_index(tmp_path / "index", [audio])
    assert str(error.value) == (f"the index holds image embeddings, the inputs are audio ({audio} records it): add "
                                "them to an index of audio embeddings")
    # An earlier .npy added without a modality takes the index's.
    more = write_embeddings(tmp_path / "more.npy", unit_rows(2, seed=3), ["m", "n"])
    assert add_to_index(tmp_path / "index", [more]).rows_added == 2 and open_index(tmp_path / "index").count == 10


@pytest.mark.parametrize("damage", ["truncate-index", "garbage-index", "truncate-vectors", "manifest", "missing-items"])
def test_damaged_indexes_give_one_clear_error(checkpoint, tmp_path, damage):
    write_embeddings(tmp_path / "part.npy", unit_rows(40), [str(i) for i in range(40)])
    build_index([tmp_path / "part.npy"], tmp_path / "index", checkpoint=checkpoint, modality="image")
    manifest = read_manifest(tmp_path / "index")
    index_file = tmp_path / "index" / manifest["index"]["file"]
    vectors_file = tmp_path / "index" / manifest["chunks"][0]["vectors"]
    if damage == "truncate-index":
        index_file.write_bytes(index_file.read_bytes()[:100])
        expected = "truncated or was replaced"
    elif damage == "garbage-index":
        index_file.write_bytes(b"\0" * index_file.stat().st_size)  # same size: FAISS itself must refuse it
        expected = "cannot be read by FAISS"
    elif damage == "truncate-vectors":
        vectors_file.write_bytes(vectors_file.read_bytes()[:-16])
        expected = "truncated or was replaced"
    elif damage == "manifest":
        (tmp_path / "index" / "manifest.json").write_text('{"kind": "multimodal-search-index", "format_vers')
        expected = "manifest.json cannot be read"
    else:
        (tmp_path / "index" / manifest["chunks"][0]["items"]).unlink()
        expected = "is missing"
    with pytest.raises(IndexFileError, match=expected) as raised:
        open_index(tmp_path / "index")
    assert "\n" not in str(raised.value) and "multimodal index" in str(raised.value)


def test_opening_what_is_not_an_index(tmp_path):
    with pytest.raises(IndexFileError, match="does not exist"):
        open_index(tmp_path / "nowhere")
    (tmp_path / "folder").mkdir()
    with pytest.raises(IndexFileError, match="is not an index: it has no manifest.json"):
        open_index(tmp_path / "folder")
    manifest = tmp_path / "folder" / "manifest.json"
    manifest.write_text(json.dumps({"kind": "multimodal-search-index", "format_version": 99}))
    with pytest.raises(IndexFileError, match="format version 99 is not supported"):
        open_index(tmp_path / "folder")


def test_opening_does_not_read_the_collection(checkpoint, tmp_path):
    """Memory-mapped: vectors come from the file, not from a copy in memory."""
    vectors = unit_rows(300)
    write_embeddings(tmp_path / "part.npy", vectors, [str(i) for i in range(300)])
    build_index([tmp_path / "part.npy"], tmp_path / "index", checkpoint=checkpoint, modality="audio")
    index = open_index(tmp_path / "index")
    assert isinstance(index._vectors[0], np.memmap)
    in_memory = open_index(tmp_path / "index", mmap=False)
    np.testing.assert_array_equal(index.search_vectors(vectors[:3], 5)[1], in_memory.search_vectors(vectors[:3], 5)[1])


def test_duplicates_are_pairs_above_the_threshold(checkpoint, tmp_path):
    vectors = unit_rows(200)
    vectors[150] = vectors[3]  # an exact copy
    near = vectors[40] + 0.05 * unit_rows(1, seed=9)[0]
    vectors[160] = near / np.linalg.norm(near)
    write_embeddings(tmp_path / "part.npy", vectors, [str(i) for i in range(200)])
    index = build_index([tmp_path / "part.npy"], tmp_path / "index", checkpoint=checkpoint, modality="image")
    pairs = find_duplicates(index, 0.99)
    assert [(a, b) for a, b, _ in pairs] == [(3, 150), (40, 160)]
    assert pairs[0][2] == pytest.approx(1.0, abs=1e-5) and 0.99 <= pairs[1][2] < 1.0
    similarities = vectors @ vectors.T
    np.fill_diagonal(similarities, -1)
    assert len(find_duplicates(index, 0.3)) == int((np.triu(similarities, 1) >= 0.3).sum())


def test_plan_follows_the_collection_size():
    assert plan_index(50_000, 512).type == "flat"
    assert plan_index(100_000, 512).type == "flat"
    big = plan_index(1_000_000, 512)
    assert (big.type, big.nlist, big.pq_m, big.factory) == ("ivfpq", 4096, 64, "IVF4096,PQ64x8")
    assert big.train_size == 262_144
    assert plan_index(50_000, 512, "ivfpq").nlist == 1024
    assert default_nlist(20_000) == 512 and default_pq_m(768) == 96 and default_pq_m(100) == 10
    with pytest.raises(ValueError, match="needs at least 10000 vectors .* use --index-type flat"):
        plan_index(5_000, 512, "ivfpq")
    with pytest.raises(ValueError, match="pq_m=7 must divide the embedding width 512"):
        plan_index(200_000, 512, pq_m=7)
    with pytest.raises(ValueError, match="the collection is empty"):
        plan_index(0, 512)
