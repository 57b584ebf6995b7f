"""Evaluation loops with a tiny deterministic model and a list of batches as the loader."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multimodal.eval.loops import Encoder, collect_embeddings, evaluate_retrieval, evaluate_zero_shot, move_batch
from multimodal.eval.metrics import bidirectional_retrieval_metrics, classification_metrics


class TinyModel(nn.Module):
    """Embeds each modality by a fixed rule into 3-D, through a dropout that is only harmless in eval mode.

    image (B, 3, 1, 1): its 3 pixel values; audio (B, T, 3): the mean frame over valid frames;
    text (B, L) ids: one-hot of the first token.
    """

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.dropout = nn.Dropout(p=0.9)
        self.training_seen = []

    def encode(self, modality, batch):
        self.training_seen.append(self.training)
        if modality == "image":
            features = batch["image"].flatten(1)  # (B, 3)
        elif modality == "audio":
            mask = batch.get("audio_padding_mask")
            valid = torch.ones(batch["audio"].shape[:2]) if mask is None else (~mask).float()  # (B, T)
            features = (batch["audio"] * valid[..., None]).sum(dim=1) / valid.sum(dim=1, keepdim=True)  # (B, 3)
        else:
            features = F.one_hot(batch["text"][:, 0], 3).float()  # (B, 3)
        return F.normalize(self.dropout(features) * self.scale, dim=-1)


def images(*rows):
    return torch.tensor(rows, dtype=torch.float32)[:, :, None, None]  # (B, 3, 1, 1)


# ----------------------------------------------------------------------------- zero-shot


def zero_shot_batches():
    return [
        {"image": images([1, 0, 0], [1, 0, 0], [0, 1, 0]), "label": torch.tensor([0, 0, 1]), "__key__": ["a", "b", "c"]},
        # sample 3: looks like class 2 but is class 1 (rank 3); sample 5: ties classes 0 and 1 (rank 2).
        {"image": images([0, 0, 1], [0, 0, 1], [1, 1, 0]), "label": torch.tensor([1, 2, 1]), "__key__": ["d", "e", "f"]},
    ]


def test_zero_shot_loop_hand_worked():
    model = TinyModel()
    metrics = evaluate_zero_shot(model, zero_shot_batches(), "image", torch.eye(3), top_k=(1, 2, 5))
    assert metrics["accuracy@1"] == pytest.approx(4 / 6)
    assert metrics["accuracy@2"] == pytest.approx(5 / 6)
    assert metrics["accuracy@5"] == 1.0  # clipped to 3 classes
    assert metrics["mean_per_class_recall"] == pytest.approx((2 / 2 + 1 / 3 + 1 / 1) / 3)
    assert metrics["num_samples"] == 6


def test_zero_shot_loop_agrees_with_metrics_on_all_logits():
    model = TinyModel()
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn(5, 3, 1, 1, generator=generator), "label": torch.randint(0, 4, (5,), generator=generator)}
        for _ in range(4)
    ]
    weights = F.normalize(torch.randn(4, 3, generator=generator), dim=-1)
    metrics = evaluate_zero_shot(model, batches, "image", weights)
    model.eval()
    embeddings = torch.cat([model.encode("image", batch) for batch in batches])
    labels = torch.cat([batch["label"] for batch in batches])
    assert metrics == classification_metrics(embeddings @ weights.T, labels, top_k=(1, 5))


def test_loops_use_eval_mode_and_restore_each_modules_mode():
    model = TinyModel()
    model.train()
    model.dropout.eval()  # a mixed state must come back exactly as it was
    evaluate_zero_shot(model, zero_shot_batches(), "image", torch.eye(3))
    assert model.training_seen == [False, False]
    assert model.training and not model.dropout.training


def test_zero_shot_loop_errors():
    model = TinyModel()
    batches = zero_shot_batches()
    with pytest.raises(ValueError, match="batch 0 has no 'label' entry"):
        evaluate_zero_shot(model, [{"image": images([1, 0, 0])}], "image", torch.eye(3))
    with pytest.raises(ValueError, match="batch 0 has no 'audio' entry"):
        evaluate_zero_shot(model, batches, "audio", torch.eye(3))
    with pytest.raises(ValueError, match="no batches"):
        evaluate_zero_shot(model, [], "image", torch.eye(3))
    with pytest.raises(ValueError, match=r"batch 1: labels range over \[1, 2\] but there are 2 classes"):
        evaluate_zero_shot(model, batches, "image", torch.eye(2, 3))
    with pytest.raises(ValueError, match="build the weights with the same model"):
        evaluate_zero_shot(model, batches, "image", torch.eye(3, 4))
    with pytest.raises(ValueError, match=r"'label' is \(2,\)"):
        evaluate_zero_shot(model, [{"image": images([1, 0, 0]), "label": torch.tensor([0, 1])}], "image", torch.eye(3))


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_loop_paired_image_text():
    batches = [
        {"image": images([1, 0, 0], [0, 1, 0]), "text": torch.tensor([[0, 5], [1, 5]])},
        # image 2 is as close to text 0 as to its own text 2.
        {"image": images([1, 0, 1]), "text": torch.tensor([[2, 5]])},
    ]
    metrics = evaluate_retrieval(TinyModel(), batches, "image", "text", recall_ks=(1, 2))
    assert metrics["image_to_text/recall@1"] == pytest.approx(2 / 3)
    assert metrics["image_to_text/recall@2"] == 1.0
    assert metrics["image_to_text/map@10"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert metrics["text_to_image/recall@1"] == 1.0
    assert metrics["num_samples"] == 3


def test_retrieval_loop_label_relevance_audio_to_image():
    # Spoken digits (audio) and handwritten digits (image) share labels; audio 3 (a "2") sounds like a "1".
    audio = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32)[:, None, :].repeat(1, 2, 1)
    audio[:, 1] = 7.0  # a padded frame: must be ignored
    padding = torch.tensor([[False, True]] * 4)
    batch = {
        "audio": audio,
        "audio_padding_mask": padding,
        "image": images([1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]),
        "label": torch.tensor([0, 1, 0, 2]),
    }
    batches = [{name: value[:2] for name, value in batch.items()}, {name: value[2:] for name, value in batch.items()}]
    metrics = evaluate_retrieval(TinyModel(), batches, "audio", "image", relevance="label", recall_ks=(1, 5))
    # audio -> image: audio 0, 2 find both images of 0 first; audio 1 finds image 1; audio 3 ranks image 3 last.
    assert metrics["audio_to_image/recall@1"] == pytest.approx(3 / 4)
    assert metrics["audio_to_image/map@10"] == pytest.approx((1 + 1 + 1 + 1 / 4) / 4)
    # image -> audio: image 1 ties its audio with audio 3 (rank 2); image 3 ties everything (rank 4).
    assert metrics["image_to_audio/recall@1"] == pytest.approx(2 / 4)
    assert metrics["image_to_audio/recall@5"] == 1.0
    assert metrics["image_to_audio/map@10"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 4) / 4)


def test_retrieval_loop_matches_metrics_on_collected_embeddings():
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn(6, 3, 1, 1, generator=generator), "text": torch.randint(0, 3, (6, 4), generator=generator)}
        for _ in range(3)
    ]
    model = TinyModel()
    metrics = evaluate_retrieval(model, batches, "text", "image", chunk_size=5)
    collected = collect_embeddings(model, batches, ["text", "image"])
    assert not collected["text"].requires_grad  # evaluation builds no autograd graph
    expected = bidirectional_retrieval_metrics(
        collected["text"], collected["image"], first_name="text", second_name="image"
    )
    assert metrics == {**expected, "num_samples": 18}


def test_retrieval_loop_errors():
    batches = [{"image": images([1, 0, 0]), "text": torch.tensor([[0]])}]
    with pytest.raises(ValueError, match="relevance must be one of"):
        evaluate_retrieval(TinyModel(), batches, "image", "text", relevance="class")
    with pytest.raises(ValueError, match="both 'image'"):
        evaluate_retrieval(TinyModel(), batches, "image", "image")
    with pytest.raises(ValueError, match="batch 0 has no 'label' entry"):
        evaluate_retrieval(TinyModel(), batches, "image", "text", relevance="label")
    with pytest.raises(ValueError, match="no batches"):
        evaluate_retrieval(TinyModel(), [], "image", "text")


# ----------------------------------------------------------------------------- protocol and devices


class KeyedEncoder:
    """Not a Module: returns fixed embeddings looked up by "__key__", recording the device of the inputs."""

    def __init__(self, table):
        self.table = table
        self.devices = []

    def encode(self, modality, batch):
        self.devices.append(batch[modality].device)
        return torch.stack([self.table[modality][key] for key in batch["__key__"]])


def test_encoder_protocol():
    assert isinstance(TinyModel(), Encoder)
    assert isinstance(KeyedEncoder({}), Encoder)
    assert not isinstance(nn.Linear(2, 2), Encoder)


def test_move_batch_moves_tensors_only():
    batch = {"image": torch.zeros(2, 3, 1, 1), "label": torch.tensor([0, 1]), "__key__": ["a", "b"]}
    moved = move_batch(batch, "meta")
    assert moved["image"].device.type == "meta" and moved["label"].device.type == "meta"
    assert moved["__key__"] is batch["__key__"]
    assert batch["image"].device.type == "cpu"  # the input dict is left as it was


def test_batches_go_to_the_given_device_and_the_model_stays():
    table = {"image": {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])},
             "text": {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])}}
    encoder = KeyedEncoder(table)
    batches = [{"image": torch.zeros(2, 3, 1, 1), "text": torch.zeros(2, 4, dtype=torch.long), "__key__": ["a", "b"]}]
    metrics = evaluate_retrieval(encoder, batches, "image", "text", device="meta")
    assert [device.type for device in encoder.devices] == ["meta", "meta"]
    assert metrics["image_to_text/recall@1"] == 1.0


def test_batches_follow_a_module_models_parameters_by_default():
    class KeyedModule(nn.Module, KeyedEncoder):
        def __init__(self, table):
            nn.Module.__init__(self)
            KeyedEncoder.__init__(self, table)
            self.weight = nn.Parameter(torch.zeros(1, device="meta"))

    table = {"image": {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])},
             "text": {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([1.0, 0.0])}}
    model = KeyedModule(table)
    batches = [{"image": torch.zeros(2, 3, 1, 1), "text": torch.zeros(2, 4, dtype=torch.long), "__key__": ["a", "b"]}]
    metrics = evaluate_retrieval(model, batches, "image", "text")
    assert [device.type for device in model.devices] == ["meta", "meta"]
    assert model.weight.device.type == "meta"
    assert metrics["image_to_text/recall@1"] == 0.0  # the table pairs each image with the other text


# ----------------------------------------------------------------------------- several captions per item


class GivenEmbeddings:
    """Not a Module: each modality's batch entry already holds its embeddings (rows of floats)."""

    def encode(self, modality, batch):
        return F.normalize(batch[modality].flatten(1).float(), dim=-1)


def captioned_batches():
    """3 images with 1, 2 and 3 captions, over two batches; every vector is unit-norm, so scores are dot products.

    image 0 = e0, image 1 = e1, image 2 = e2; captions (item): c0 (0), c1, c2 (1), c3, c4, c5 (2).
    """
    captions = torch.tensor([
        [0.6, 0.8, 0.0],    # c0, item 0: image 1 scores 0.8, its own 0.6 -> rank 2
        [0.0, 0.6, 0.8],    # c1, item 1: image 2 first -> rank 2
        [0.0, 1.0, 0.0],    # c2, item 1: rank 1
        [0.0, 0.0, 1.0],    # c3, item 2: rank 1
        [0.8, 0.0, 0.6],    # c4, item 2: image 0 first -> rank 2
        [0.48, 0.64, 0.6],  # c5, item 2: image 1 first -> rank 2
    ])
    return [
        {"image": torch.eye(3)[:2], "text": captions[:3], "text_item": torch.tensor([0, 1, 1]), "__key__": ["i0", "i1"]},
        {"image": torch.eye(3)[2:], "text": captions[3:], "text_item": torch.tensor([0, 0, 0]), "__key__": ["i2"]},
    ]


def test_retrieval_with_several_captions_per_item_hand_worked():
    metrics = evaluate_retrieval(GivenEmbeddings(), captioned_batches(), "image", "text", recall_ks=(1, 2))
    # text -> image: each caption's own image; ranks [2, 2, 1, 1, 2, 2].
    assert metrics["text_to_image/recall@1"] == pytest.approx(2 / 6)
    assert metrics["text_to_image/recall@2"] == 1.0
    assert metrics["text_to_image/map@10"] == pytest.approx((4 * 1 / 2 + 2 * 1) / 6)
    assert metrics["text_to_image/num_queries"] == 6
    # image -> text: any of its captions. Image 0 scores c4 .8 > c0 .6: rank 2.
    # Image 1 scores c2 1 > c0 .8 > c5 .64 > c1 .6: its captions rank 1 and 4, AP = (1 + 2/4) / 2.
    # Image 2 scores c3 1 > c1 .8 > c4 = c5 .6: its captions rank 1, 3, 4, AP = (1 + 2/3 + 3/4) / 3.
    assert metrics["image_to_text/recall@1"] == pytest.approx(2 / 3)
    assert metrics["image_to_text/recall@2"] == 1.0
    assert metrics["image_to_text/map@10"] == pytest.approx((1 / 2 + 3 / 4 + 29 / 36) / 3)
    assert metrics["image_to_text/num_queries"] == 3 and metrics["num_samples"] == 3
    # The same from the other side: the query modality may be the one with several rows.
    flipped = evaluate_retrieval(GivenEmbeddings(), captioned_batches(), "text", "image", recall_ks=(1, 2))
    assert flipped == metrics


def test_collected_rows_name_their_items_across_batches():
    collected = collect_embeddings(GivenEmbeddings(), captioned_batches(), ["image", "text"], with_labels=False)
    assert collected["text_item"].tolist() == [0, 1, 1, 2, 2, 2]
    assert "image_item" not in collected and collected["text"].shape == (6, 3)
    # Label relevance: each caption carries its item's label (images 0 and 2 are one class).
    batches = captioned_batches()
    batches[0]["label"], batches[1]["label"] = torch.tensor([5, 6]), torch.tensor([5])
    metrics = evaluate_retrieval(GivenEmbeddings(), batches, "image", "text", relevance="label", recall_ks=(1,))
    assert metrics["text_to_image/num_queries"] == 6 and metrics["num_samples"] == 3
    # c0 (class 5) now finds image 1 (class 6) first: still rank 2; c4 finds image 0 (class 5) first: a hit.
    assert metrics["text_to_image/recall@1"] == pytest.approx(3 / 6)


def test_item_rows_are_checked():
    batches = captioned_batches()
    batches[1]["text_item"] = torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"batch 1 'text_item' ranges over \[0, 1\] but the batch has 1 samples"):
        evaluate_retrieval(GivenEmbeddings(), batches, "image", "text")
    batches[1]["text_item"] = torch.tensor([0, 0])
    with pytest.raises(ValueError, match=r"batch 1 'text_item' is \(2,\); it must be an integer tensor \(3,\)"):
        evaluate_retrieval(GivenEmbeddings(), batches, "image", "text")
    del batches[1]["text_item"]
    with pytest.raises(ValueError, match="batch 1 gave different numbers of embeddings per modality"):
        evaluate_retrieval(GivenEmbeddings(), batches, "image", "text")
