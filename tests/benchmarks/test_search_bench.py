"""The search benchmark's quick run: the pipeline it measures still runs end to end and prints every figure."""
from bench import bench_search


def test_quick_search_benchmark_prints_every_figure(capsys):
    assert bench_search.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for figure in ("build", "index size", "open (memory-mapped) median", "query k=10 one at a time: p50",
                   "recall@10", "flat index (exhaustive) on 2000 vectors: p50"):
        assert figure in out, figure
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("search 10000 x 32: build")
    recall = float(summary.split("recall@10 ")[1].split(";")[0])
    assert recall >= 0.9  # 10,000 clustered vectors, nprobe and re-ranking tuned at build time


def test_synthetic_collection_is_clustered_unit_vectors():
    import numpy as np

    vectors = bench_search.synthetic_embeddings(2000, 64, seed=0, clusters=20)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    nearest = np.sort(vectors @ vectors.T, axis=1)[:, -2]  # the nearest other row
    assert np.median(nearest) > 0.8  # neighbours close, as in real embedding collections
    assert np.array_equal(vectors, bench_search.synthetic_embeddings(2000, 64, seed=0, clusters=20))
