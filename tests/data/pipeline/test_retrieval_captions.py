"""Retrieval with every caption of an item, end to end: shards whose json holds caption lists -> loader -> metrics."""
import json

import pytest
import torch
import webdataset

from multimodal.data.pipeline.batches import collate_samples
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.eval import evaluate_retrieval, retrieval_metrics
from tests.data.pipeline.test_pipeline import IMAGE, jpeg

CONTEXT = 32

# Messy on purpose: a plain string, a list with blank entries, img2dataset's txt of str(list) beside its json,
# CLAP-style json "text", a sample whose list is empty (skipped) and one without an image (dropped).
CAPTIONS = {
    "one": ["a single caption"],
    "two": ["first of two", "second of two"],
    "three": ["c one", "c two", "c three"],
    "four": ["clap a", "clap b"],
}


def tokenize(captions):
    """Character codes, padded with 0: reversible, so a test can read back the caption of every row."""
    ids = torch.zeros(len(captions), CONTEXT, dtype=torch.int64)
    for row, caption in enumerate(captions):
        codes = [ord(c) for c in caption[:CONTEXT]]
        ids[row, : len(codes)] = torch.tensor(codes)
    return ids, ids == 0


def detokenize(ids):
    return ["".join(chr(c) for c in row.tolist() if c) for row in ids]


def write_caption_shards(directory) -> str:
    with webdataset.TarWriter(str(directory / "coco-000.tar")) as writer:
        writer.write({"__key__": "one", "jpg": jpeg(0), "json": json.dumps({"caption": "a single caption"})})
        writer.write({"__key__": "two", "jpg": jpeg(1),
                      "json": json.dumps({"caption": [" first of two", "", "second of two ", "  "]})})
        writer.write({"__key__": "empty", "jpg": jpeg(2), "json": json.dumps({"caption": []})})
    with webdataset.TarWriter(str(directory / "coco-001.tar")) as writer:
        writer.write({"__key__": "three", "jpg": jpeg(3), "txt": str(CAPTIONS["three"]),
                      "json": json.dumps({"caption": CAPTIONS["three"], "url": "http://example.com/3.jpg"})})
        writer.write({"__key__": "no-image", "json": json.dumps({"caption": ["lost"]})})
        writer.write({"__key__": "four", "png": jpeg(4), "json": json.dumps({"text": CAPTIONS["four"]})})
    return str(directory / "coco-{000..001}.tar")


def test_collate_flattens_every_caption_with_its_item():
    samples = [{"__key__": "a", "text": ["x", "y"]}, {"__key__": "b", "text": ["z"]}, {"__key__": "c", "text": ["u", "v", "w"]}]
    batch = collate_samples(samples, tokenize, "s")
    assert detokenize(batch["text"]) == ["x", "y", "z", "u", "v", "w"]
    assert batch["text_item"].tolist() == [0, 0, 1, 2, 2, 2] and batch["text_item"].dtype == torch.int64
    assert batch["text_padding_mask"].shape == (6, 1)  # cut to the longest caption (one character)
    assert "text_item" not in collate_samples([{"__key__": "a", "text": "x"}], tokenize, "s")


def test_the_evaluation_loader_yields_every_caption(tmp_path):
    spec = write_caption_shards(tmp_path)
    source = SourceSpec(spec, ["image", "text"], name="coco", all_captions=True)
    loader = make_loader([source], batch_size=2, train=False, tokenize=tokenize, preprocess={"image": IMAGE})
    batches = list(loader)
    keys = [key for batch in batches for key in batch["__key__"]]
    assert keys == ["one", "two", "three", "four"]
    read = {}
    for batch in batches:
        captions = detokenize(batch["text"])
        assert batch["image"].shape[0] == len(batch["__key__"])
        for row, item in enumerate(batch["text_item"].tolist()):
            read.setdefault(batch["__key__"][item], []).append(captions[row])
    assert read == CAPTIONS
    assert loader.stats.skipped["coco"] == {"missing_caption": 1, "missing_image": 1}
    # One caption per sample, as before, without all_captions.
    single = make_loader([SourceSpec(spec, ["image", "text"])], batch_size=8, train=False, tokenize=tokenize,
                         preprocess={"image": IMAGE})
    batch = next(iter(single))
    assert "text_item" not in batch and detokenize(batch["text"]) == [c[0] for c in CAPTIONS.values()]
    with pytest.raises(ValueError, match="source 'coco': all_captions is for evaluation"):
        make_loader([source], batch_size=2, train=True, tokenize=tokenize, preprocess={"image": IMAGE})


class CaptionTable:
    """Fixed embeddings looked up by image key and by caption text (read back from the token ids)."""

    def __init__(self, images, captions):
        self.images, self.captions = images, captions

    def encode(self, modality, batch):
        if modality == "image":
            return torch.stack([self.images[key] for key in batch["__key__"]])
        return torch.stack([self.captions[caption] for caption in detokenize(batch["text"])])


def test_retrieval_from_shards_ranks_every_caption(tmp_path):
    spec = write_caption_shards(tmp_path)
    generator = torch.Generator().manual_seed(0)
    keys = list(CAPTIONS)
    all_captions = [caption for key in keys for caption in CAPTIONS[key]]
    image_vectors = torch.nn.functional.normalize(torch.randn(len(keys), 4, generator=generator), dim=-1)
    caption_vectors = torch.nn.functional.normalize(torch.randn(len(all_captions), 4, generator=generator), dim=-1)
    table = CaptionTable(dict(zip(keys, image_vectors)), dict(zip(all_captions, caption_vectors)))
    source = SourceSpec(spec, ["image", "text"], name="coco", all_captions=True)
    loader = make_loader([source], batch_size=3, train=False, tokenize=tokenize, preprocess={"image": IMAGE})
    metrics = evaluate_retrieval(table, loader, "image", "text", recall_ks=(1, 2, 5))
    owners = torch.tensor([index for index, key in enumerate(keys) for _ in CAPTIONS[key]])  # (8,)
    items = torch.arange(len(keys))
    expected_i2t = retrieval_metrics(image_vectors, caption_vectors, query_labels=items, gallery_labels=owners,
                                     recall_ks=(1, 2, 5))
    expected_t2i = retrieval_metrics(caption_vectors, image_vectors, query_to_gallery=owners, recall_ks=(1, 2, 5))
    assert {k: metrics[f"image_to_text/{k}"] for k in expected_i2t} == expected_i2t
    assert {k: metrics[f"text_to_image/{k}"] for k in expected_t2i} == expected_t2i
    assert metrics["num_samples"] == 4 and metrics["text_to_image/num_queries"] == 8
