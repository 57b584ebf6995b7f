"""Metrics against hand-worked examples (ties included), a full-sort reference, and chunking."""
import pytest
import torch

from multimodal.eval.metrics import (
    bidirectional_retrieval_metrics,
    classification_metrics,
    mean_per_class_recall,
    retrieval_metrics,
    top_k_accuracy,
    true_class_rank,
)


# ----------------------------------------------------------------------------- classification


def test_true_class_rank_counts_ties_against_the_true_class():
    logits = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([0, 0, 2, 0])
    # row 1: class 1 ties the true class 0 -> rank 2; row 2: class 1 ties class 2 -> rank 2.
    assert true_class_rank(logits, labels).tolist() == [1, 2, 2, 3]


def test_top_k_accuracy_hand_worked_and_clipped_to_the_number_of_classes():
    logits = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([0, 0, 2, 0])
    accuracy = top_k_accuracy(logits, labels, top_k=(1, 2, 3, 5))
    assert accuracy == {"accuracy@1": 0.25, "accuracy@2": 0.75, "accuracy@3": 1.0, "accuracy@5": 1.0}


def test_all_equal_logits_score_zero_not_chance():
    logits = torch.zeros(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    metrics = classification_metrics(logits, labels, top_k=(1, 3, 4))
    assert metrics["accuracy@1"] == 0.0 and metrics["accuracy@3"] == 0.0
    assert metrics["accuracy@4"] == 1.0  # clipped k = C: every class is in the top C
    assert metrics["mean_per_class_recall"] == 0.0


def test_mean_per_class_recall_weights_classes_equally_and_skips_absent_ones():
    # Four samples of class 0, one of class 1, none of class 2; the model always says class 0.
    labels = torch.tensor([0, 0, 0, 0, 1])
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(5, 1)
    metrics = classification_metrics(logits, labels, top_k=(1,))
    assert metrics["accuracy@1"] == pytest.approx(0.8)
    assert metrics["mean_per_class_recall"] == pytest.approx(0.5)  # (4/4 + 0/1) / 2 classes present
    assert metrics["num_samples"] == 5
    assert mean_per_class_recall(logits, labels) == pytest.approx(0.5)


def test_mean_per_class_recall_unbalanced_partial():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 1, 0, 1, 1, 0])  # class 0: 2/3, class 1: 2/2, class 2: 0/1
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    assert mean_per_class_recall(logits, labels) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_classification_input_errors():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        true_class_rank(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer"):
        true_class_rank(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        true_class_rank(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"must be \(2,\)"):
        true_class_rank(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- retrieval, hand-worked


def scores_as_embeddings(scores):
    """Queries and gallery whose dot products are exactly ``scores`` (Q, G): the gallery is the identity."""
    scores = torch.tensor(scores)
    return scores, torch.eye(scores.shape[1])


def test_retrieval_single_relevant_item_with_ties():
    queries, gallery = scores_as_embeddings([
        [0.9, 0.5, 0.1, 0.0],  # relevant 0: best -> rank 1
        [0.7, 0.7, 0.2, 0.1],  # relevant 1: tied with item 0 -> rank 2 (pessimistic)
        [0.3, 0.8, 0.3, 0.9],  # relevant 2: behind 3, 1 and the tied 0 -> rank 4
    ])
    targets = torch.tensor([0, 1, 2])
    metrics = retrieval_metrics(queries, gallery, query_to_gallery=targets, recall_ks=(1, 2, 3, 4), map_k=10)
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["recall@3"] == pytest.approx(2 / 3)
    assert metrics["recall@4"] == pytest.approx(1.0)
    assert metrics["map@10"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)  # one relevant item: AP = 1 / rank
    assert metrics["num_queries"] == 3


def test_map_with_several_relevant_items_and_a_tie_against_an_irrelevant_one():
    # Relevant (label 0): items 0, 2, 4. Item 2 ties irrelevant item 1 and goes after it.
    # Order: 0(rel) 1 2(rel) 3 4(rel) 5 -> relevant ranks 1, 3, 5.
    queries, gallery = scores_as_embeddings([[0.9, 0.8, 0.8, 0.7, 0.6, 0.5]])
    labels = dict(query_labels=torch.tensor([0]), gallery_labels=torch.tensor([0, 1, 0, 1, 0, 1]))
    at_10 = retrieval_metrics(queries, gallery, **labels, map_k=10)
    assert at_10["recall@1"] == 1.0
    assert at_10["map@10"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 3)
    at_3 = retrieval_metrics(queries, gallery, **labels, recall_ks=(1,), map_k=3)
    assert at_3["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    at_2 = retrieval_metrics(queries, gallery, **labels, recall_ks=(1,), map_k=2)
    assert at_2["map@2"] == pytest.approx(1 / 2)  # one hit in the top 2, normalised by min(R=3, K=2)


def test_relevant_items_tied_with_each_other_and_with_an_irrelevant_one():
    # Items 0, 1 relevant, 2 irrelevant, all three tied: order 2, 0, 1 -> relevant ranks 2, 3.
    queries, gallery = scores_as_embeddings([[0.6, 0.6, 0.6, 0.1, 0.1]])
    metrics = retrieval_metrics(
        queries, gallery, query_labels=torch.tensor([7]), gallery_labels=torch.tensor([7, 7, 3, 3, 3]), recall_ks=(1, 2)
    )
    assert metrics["recall@1"] == 0.0
    assert metrics["recall@2"] == 1.0
    assert metrics["map@10"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_perfect_ranking_scores_one_whether_relevant_count_is_below_or_above_k():
    queries, gallery = scores_as_embeddings([[float(12 - index) for index in range(12)]])
    for num_relevant in (3, 12):
        gallery_labels = torch.tensor([0] * num_relevant + [1] * (12 - num_relevant))
        metrics = retrieval_metrics(queries, gallery, query_labels=torch.tensor([0]), gallery_labels=gallery_labels)
        assert metrics["map@10"] == pytest.approx(1.0)


def test_collapsed_embeddings_retrieve_nothing():
    embeddings = torch.ones(5, 4) / 2
    metrics = retrieval_metrics(embeddings, embeddings, query_to_gallery=torch.arange(5), recall_ks=(1, 4, 5))
    assert metrics["recall@1"] == 0.0 and metrics["recall@4"] == 0.0
    assert metrics["recall@5"] == 1.0  # k >= G: everything is retrieved
    assert metrics["map@10"] == pytest.approx(1 / 5)


def test_bidirectional_paired_hand_worked():
    similarity = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.5, 0.6], [0.3, 0.4, 0.5]])  # (image, text)
    images, texts = torch.eye(3), similarity.T.contiguous()  # images @ texts.T == similarity
    metrics = bidirectional_retrieval_metrics(images, texts, first_name="image", second_name="text", recall_ks=(1, 2))
    # image -> text (rows): true text ranks 1, 2, 1.   text -> image (columns): true image ranks 1, 1, 3.
    assert metrics["image_to_text/recall@1"] == pytest.approx(2 / 3)
    assert metrics["image_to_text/recall@2"] == pytest.approx(1.0)
    assert metrics["image_to_text/map@10"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert metrics["text_to_image/recall@1"] == pytest.approx(2 / 3)
    assert metrics["text_to_image/recall@2"] == pytest.approx(2 / 3)
    assert metrics["text_to_image/map@10"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert metrics["image_to_text/num_queries"] == 3 and metrics["text_to_image/num_queries"] == 3


def test_bidirectional_several_captions_per_image():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])  # of images 0, 0, 1, 1
    caption_image = torch.tensor([0, 0, 1, 1])
    metrics = bidirectional_retrieval_metrics(
        images, captions, first_name="image", second_name="text", first_labels=torch.tensor([0, 1]), second_labels=caption_image, recall_ks=(1,), map_k=4
    )
    # image 0 scores captions 0.9, 0.2, 0.3, 0.6 -> own captions at ranks 1, 4: AP = (1 + 2/4) / 2
    # image 1 scores captions 0.1, 0.8, 0.7, 0.4 -> own captions at ranks 2, 3: AP = (1/2 + 2/3) / 2
    assert metrics["image_to_text/recall@1"] == pytest.approx(0.5)
    assert metrics["image_to_text/map@4"] == pytest.approx(((1 + 2 / 4) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    # caption -> image: captions 0, 2 pick their own image first; captions 1, 3 the other one.
    assert metrics["text_to_image/recall@1"] == pytest.approx(0.5)
    assert metrics["text_to_image/map@4"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 2) / 4)


def test_retrieval_input_errors():
    embeddings = torch.eye(3)
    with pytest.raises(ValueError, match="query 1 has no relevant gallery item"):
        retrieval_metrics(
            embeddings, embeddings, query_labels=torch.tensor([0, 5, 1]), gallery_labels=torch.tensor([0, 1, 1])
        )
    with pytest.raises(ValueError, match="either as query_to_gallery"):
        retrieval_metrics(embeddings, embeddings)
    with pytest.raises(ValueError, match="either as query_to_gallery"):
        retrieval_metrics(embeddings, embeddings, query_to_gallery=torch.arange(3), query_labels=torch.arange(3),
                          gallery_labels=torch.arange(3))
    with pytest.raises(ValueError, match="either as query_to_gallery"):
        retrieval_metrics(embeddings, embeddings, query_labels=torch.arange(3))
    with pytest.raises(ValueError, match=r"indices must be in \[0, 2\]"):
        retrieval_metrics(embeddings, embeddings, query_to_gallery=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="same E"):
        retrieval_metrics(embeddings, torch.eye(4), query_to_gallery=torch.arange(3))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(embeddings * float("nan"), embeddings, query_to_gallery=torch.arange(3))
    with pytest.raises(ValueError, match="as many image as text"):
        bidirectional_retrieval_metrics(embeddings, torch.eye(4, 3), first_name="image", second_name="text")


# ----------------------------------------------------------------------------- retrieval, reference and chunking


def reference_retrieval(scores, relevant, recall_ks, map_k):
    """Full sort of every query's gallery, irrelevant items first among equal scores (pessimistic)."""
    # Irrelevant items first, then a stable sort by score keeps them first among equal scores.
    by_relevance = relevant.long().argsort(dim=1, stable=True)  # (Q, G)
    by_score = scores.gather(1, by_relevance).argsort(dim=1, descending=True, stable=True)  # (Q, G)
    order = by_relevance.gather(1, by_score)  # (Q, G) gallery indices, best first
    ranked_relevant = relevant.gather(1, order).double()  # (Q, G) in ranked order
    positions = torch.arange(1, scores.shape[1] + 1, dtype=torch.float64)
    precision = ranked_relevant.cumsum(dim=1) / positions
    num_relevant = relevant.sum(dim=1).double()
    metrics = {f"recall@{k}": float((ranked_relevant[:, :k].sum(dim=1) > 0).double().mean()) for k in recall_ks}
    average_precision = (precision * ranked_relevant)[:, :map_k].sum(dim=1) / num_relevant.clamp(max=map_k)
    metrics[f"map@{map_k}"] = float(average_precision.mean())
    return metrics


@pytest.mark.parametrize("relevance", ["pair", "label"])
def test_chunked_equals_unchunked_and_a_full_sort_reference(relevance):
    generator = torch.Generator().manual_seed(0)
    # Small integer coordinates: every dot product is an exact integer whatever the summation
    # order, and many scores tie, which exercises the tie rule at scale.
    queries = torch.randint(-2, 3, (1000, 8), generator=generator).float()
    gallery = torch.randint(-2, 3, (700, 8), generator=generator).float()
    if relevance == "pair":
        target = torch.randint(0, 700, (1000,), generator=generator)
        options = dict(query_to_gallery=target)
        relevant = torch.nn.functional.one_hot(target, 700).bool()
    else:
        query_labels = torch.randint(0, 20, (1000,), generator=generator)
        gallery_labels = torch.arange(700) % 20  # every label present
        options = dict(query_labels=query_labels, gallery_labels=gallery_labels)
        relevant = query_labels[:, None] == gallery_labels[None, :]
    recall_ks = (1, 5, 10, 50)
    chunked = retrieval_metrics(queries, gallery, **options, recall_ks=recall_ks, map_k=10, chunk_size=64)
    whole = retrieval_metrics(queries, gallery, **options, recall_ks=recall_ks, map_k=10, chunk_size=1000)
    assert chunked == whole
    reference = reference_retrieval((queries @ gallery.T).double(), relevant, recall_ks, 10)
    for name, value in reference.items():
        assert chunked[name] == pytest.approx(value, abs=1e-12), name
    assert 0.0 < chunked["recall@1"] < chunked["recall@50"] < 1.0  # not a degenerate case


def test_chunked_equals_unchunked_on_continuous_embeddings():
    generator = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(300, 16, generator=generator), dim=-1)
    gallery = torch.nn.functional.normalize(queries[:200] + 0.8 * torch.randn(200, 16, generator=generator), dim=-1)
    target = torch.arange(300) % 200
    results = [retrieval_metrics(queries, gallery, query_to_gallery=target, chunk_size=size) for size in (7, 64, 300)]
    assert results[0] == results[1] == results[2]
    reference = reference_retrieval(queries @ gallery.T, torch.nn.functional.one_hot(target, 200).bool(),
                                    (1, 5, 10), 10)
    for name, value in reference.items():
        assert results[0][name] == pytest.approx(value, abs=1e-12), name
