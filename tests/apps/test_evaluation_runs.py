"""Evaluation sets run as training runs them (data.eval -> data_sources.prepare -> run_evaluations), on a tiny model."""
import io
import json

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from multimodal.training import data_sources
from multimodal.apps.api import EmbeddingModel
from multimodal.checkpoint import load_model, load_tokenizer
from multimodal.eval import evaluate_linear_probe, retrieval_metrics
from multimodal.apps.evaluation import EvalSetConfig, run_evaluations
from tests.apps.test_api import tiny_checkpoint


def png(seed: int, brightness: float) -> bytes:
    """A noisy image around ``brightness`` (0..1): the classes differ, so a probe has something to find."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(brightness * 255 + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_labelled(path, count: int, seed: int) -> list[tuple[bytes, int]]:
    """Images of 3 classes with json labels (and caption lists of 1 to 3 entries); returns (image, label) in order."""
    items = []
    with webdataset.TarWriter(str(path)) as writer:
        for index in range(count):
            label = index % 3
            image = png(seed * 1000 + index, 0.2 + 0.3 * label)
            captions = [f"item {index} caption {n}" for n in range(1 + index % 3)]
            writer.write({"__key__": f"s{seed}-{index:03d}", "png": image,
                          "json": json.dumps({"label": label, "caption": captions})})
            items.append((image, label))
    return items


@pytest.fixture(scope="module")
def tiny():
    checkpoint = tiny_checkpoint()
    return load_model(checkpoint), load_tokenizer(checkpoint)


def test_training_runs_linear_probe_and_every_caption_retrieval_sets(tiny, tmp_path):
    model, tokenizer = tiny
    train_items = write_labelled(tmp_path / "train.tar", 18, seed=1)
    test_items = write_labelled(tmp_path / "test.tar", 9, seed=2)
    eval_sets = [
        EvalSetConfig(name="probe", shards=str(tmp_path / "test.tar"), task="linear_probe", modality="image",
                      train_shards=str(tmp_path / "train.tar"), fewshot_k=4, seed=3),
        EvalSetConfig(name="pairs", shards=str(tmp_path / "test.tar"), task="retrieval", modality="image"),
    ]
    config = data_sources.DataConfig(eval=eval_sets, eval_batch_size=4)
    resolved = data_sources.ResolvedSources(train=[], eval_sets=eval_sets)
    data = data_sources.prepare(config, model.config, tokenizer, resolved)
    results = run_evaluations(model, data.eval_sets, tokenizer)

    # The probe: the same as fitting on the API's embeddings of the same images.
    api = EmbeddingModel(load_model(tiny_checkpoint()), tokenizer, precision="fp32")
    train_features = api.embed_images([image for image, _ in train_items])
    test_features = api.embed_images([image for image, _ in test_items])
    expected = evaluate_linear_probe(train_features, torch.tensor([label for _, label in train_items]),
                                     test_features, torch.tensor([label for _, label in test_items]),
                                     fewshot_k=4, seed=3).metrics
    assert results["probe/num_train_samples"] == 12 and results["probe/num_samples"] == 9
    for key, value in expected.items():
        assert results[f"probe/{key}"] == pytest.approx(value, abs=1e-6), key

    # Retrieval reads every caption: 9 images with 1, 2, 3, 1, 2, 3 ... captions.
    captions = [f"item {index} caption {n}" for index in range(9) for n in range(1 + index % 3)]
    owners = torch.tensor([index for index in range(9) for _ in range(1 + index % 3)])
    caption_features = api.embed_texts(captions)
    assert results["pairs/text_to_image/num_queries"] == 18 and results["pairs/num_samples"] == 9
    by_caption = retrieval_metrics(caption_features, test_features, query_to_gallery=owners)
    by_image = retrieval_metrics(test_features, caption_features, query_labels=torch.arange(9), gallery_labels=owners)
    for key in ("recall@1", "recall@5", "map@10"):
        assert results[f"pairs/text_to_image/{key}"] == pytest.approx(by_caption[key], abs=1e-6)
        assert results[f"pairs/image_to_text/{key}"] == pytest.approx(by_image[key], abs=1e-6)
