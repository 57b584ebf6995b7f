"""Reading fields out of raw shard samples: one rule for training, evaluation, embedding and the tokenizer."""
from __future__ import annotations

import io
import json
import random
import tarfile

import pytest
import torch

from multimodal.apps import embedding
from multimodal.cli.tokenizer import _captions
from multimodal.data.preprocess.image_transforms import preprocess_image
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.sample_fields import SampleFields, UnusableSample
from multimodal.data.pipeline.shard_reader import read_shard
from multimodal.data.pipeline.source_spec import SourceSpec
from tests.data.pipeline.test_pipeline import IMAGE, jpeg


def raw(**members) -> dict:
    sample = {"__key__": "k", "__url__": "x.tar"}
    for name, value in members.items():
        sample[name] = json.dumps(value).encode() if name == "json" and not isinstance(value, bytes) else value
    return sample


def reason_of(call) -> str:
    with pytest.raises(UnusableSample) as caught:
        call()
    return caught.value.reason


def test_captions_follow_one_rule():
    fields = SampleFields()
    listed = raw(json={"text": ["", "  ", " second ", "third"]})
    assert fields.caption(listed) == "second"  # evaluation and embedding: the first non-empty entry
    chosen = {fields.caption(listed, random.Random(seed)) for seed in range(50)}
    assert chosen == {"second", "third"}  # training: a non-empty entry at random
    assert fields.caption(raw(txt=b" a txt caption\n", json={"text": "not this"})) == "a txt caption"
    assert fields.caption(raw(json={"caption": "json only"})) == "json only"
    assert fields.caption(raw(txt=b"   ", json={"text": [], "caption": "falls through"})) == "falls through"
    assert reason_of(lambda: fields.caption(raw(txt=b"  "))) == "missing_caption"
    assert reason_of(lambda: fields.caption(raw(jpg=b""))) == "missing_caption"
    assert reason_of(lambda: fields.caption(raw(json={"text": 5}))) == "bad_caption"
    assert reason_of(lambda: fields.caption(raw(json={"text": ["ok", 3]}))) == "bad_caption"
    assert reason_of(lambda: fields.caption(raw(txt=b"\xff\xfe"))) == "bad_caption"
    assert reason_of(lambda: fields.caption(raw(json=b"{not json"))) == "bad_caption"


def test_members_labels_and_messages():
    fields = SampleFields(caption_keys="json:title;txt", label_key="json:label;cls")
    sample = raw(png=b"png bytes", webp=b"webp bytes", cls=b" 3\n", txt=b"t", json={"title": "json first"})
    assert fields.member(sample, "image") == b"png bytes"  # the first of jpg;jpeg;png;webp;gif present
    assert fields.caption(sample) == "json first"
    assert fields.label(sample) == 3
    assert fields.label(raw(json={"label": 2.0})) == 2
    with pytest.raises(UnusableSample, match=r"none of \['flac', 'wav', 'ogg', 'mp3'\] in the sample \(it has \['cls'"):
        fields.member(sample, "audio")
    assert reason_of(lambda: fields.label(raw(json={"label": "seven"}))) == "bad_label"
    assert reason_of(lambda: fields.label(raw(json={"label": True}))) == "bad_label"
    assert reason_of(lambda: fields.label(raw(txt=b"x"))) == "missing_label"
    assert fields.members_read(["image", "text"]) == {"jpg", "jpeg", "png", "webp", "gif", "json", "txt", "cls"}
    assert SampleFields().members_read(["audio"]) == {"flac", "wav", "ogg", "mp3"}
    with pytest.raises(ValueError, match="caption_keys is empty"):
        SampleFields(caption_keys=" ; ")
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        fields.raw_input(sample, "video")


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_messy_shard(path) -> None:
    """Captions where the copies of this rule used to disagree, upper-case extensions, broken samples."""
    samples = {
        "list-first-empty": {"jpg": jpeg(0), "json": json.dumps({"text": ["", "the second caption", "third"]})},
        "json-caption-only": {"jpg": jpeg(1), "json": json.dumps({"caption": "json caption"})},
        "upper-case": {"JPG": jpeg(2), "TXT": b"an upper-case txt"},
        "txt-and-json": {"jpeg": jpeg(3), "txt": b" the txt wins ", "json": json.dumps({"text": "not this"})},
        "empty-txt": {"png": jpeg(4), "txt": b"  ", "json": json.dumps({"text": "from the json"})},
        "no-caption": {"jpg": jpeg(5), "json": json.dumps({"url": "http://example.com"})},
        "not-utf8": {"jpg": jpeg(6), "txt": b"\xff\xfe caption"},
        "no-image": {"txt": b"a caption without an image"},
    }
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for extension, data in members.items():
                _member(tar, f"{key}.{extension}", data if isinstance(data, bytes) else data.encode())


def test_training_evaluation_embedding_and_the_tokenizer_read_the_same_fields(tmp_path):
    shard = tmp_path / "messy-000.tar"
    write_messy_shard(shard)
    samples = list(read_shard(str(shard), []))

    def embedded(modality: str) -> dict:
        found = {}
        for sample in samples:
            try:
                found[sample["__key__"]] = embedding.shard_sample_input(sample, modality)
            except UnusableSample:
                pass
        return found

    embed_captions, embed_images = embedded("text"), embedded("image")
    assert embed_captions == {
        "list-first-empty": "the second caption",
        "json-caption-only": "json caption",
        "upper-case": "an upper-case txt",
        "txt-and-json": "the txt wins",
        "empty-txt": "from the json",
        "no-image": "a caption without an image",
    }
    assert set(embed_images) == set(embed_captions) - {"no-image"} | {"no-caption", "not-utf8"}

    def loaded(modalities: list[str]) -> dict:
        source = SourceSpec(str(shard), modalities, name="messy")
        stream = make_loader([source], batch_size=16, train=False, preprocess={"image": IMAGE})
        batches = list(stream)
        return {key: {m: batch[m][row] for m in modalities}
                for batch in batches for row, key in enumerate(batch["__key__"])}

    captions = {key: fields["text"] for key, fields in loaded(["text"]).items()}
    assert captions == embed_captions  # evaluation: the first non-empty caption, as embedding reads it
    paired = loaded(["image", "text"])
    assert set(paired) == set(embed_captions) & set(embed_images)
    for key, fields in paired.items():
        assert fields["text"] == embed_captions[key]
        torch.testing.assert_close(fields["image"], preprocess_image(embed_images[key], IMAGE), rtol=0, atol=1e-6)
    assert list(_captions([str(shard)])) == list(embed_captions.values())  # `multimodal tokenizer --captions`

    # Training takes a random non-empty entry of the same field: never the empty first one.
    source = SourceSpec(str(shard), ["image", "text"], name="messy")
    trained = make_loader([source], batch_size=5, train=True, samples_per_epoch=100, preprocess={"image": IMAGE}, seed=1)
    chosen = {}
    for batch in trained:
        for key, caption in zip(batch["__key__"], batch["text"]):
            chosen.setdefault(key, set()).add(caption)
    assert set(chosen) == set(paired)
    assert chosen["list-first-empty"] == {"the second caption", "third"}
    assert all(chosen[key] == {embed_captions[key]} for key in chosen if key != "list-first-empty")
    assert trained.stats.skipped["messy"].keys() == {"missing_caption", "bad_caption", "missing_image"}


def test_every_caption_of_a_sample_for_retrieval():
    fields = SampleFields()
    coco = raw(json={"caption": [" a dog on grass ", "", "a brown dog", "  "], "image_id": 7})
    assert fields.captions(coco) == ["a dog on grass", "a brown dog"]
    assert fields.caption(coco) == "a dog on grass"  # evaluation's one caption is the first of them
    clotho = raw(json={"text": ["rain on a roof", "water dripping"]})
    assert fields.captions(clotho) == ["rain on a roof", "water dripping"]
    assert fields.captions(raw(txt=b"a single caption")) == ["a single caption"]
    # img2dataset writes str(caption) to .txt: a caption column that held a list arrives as its repr.
    img2dataset = raw(txt=str(["a red bus", "a bus on a street"]).encode(), json={"caption": ["a red bus", "x"]})
    assert fields.captions(img2dataset) == ["a red bus", "a bus on a street"]
    assert fields.captions(raw(txt=b"[a bracketed caption]")) == ["[a bracketed caption]"]  # not a literal: as it is
    assert fields.captions(raw(txt=b"['a', 3]")) == ["['a', 3]"]  # not a list of strings: as it is
    assert reason_of(lambda: fields.captions(raw(txt=b"[]"))) == "missing_caption"  # str([]): no caption
    # CLIP_benchmark's retrieval shards: one caption per line of .txt, read with lines:txt.
    lines = SampleFields(caption_keys="lines:txt;json:caption")
    clip_benchmark = raw(txt=b"two dogs play\r\n\ntwo dogs playing in snow\n")
    assert lines.captions(clip_benchmark) == ["two dogs play", "two dogs playing in snow"]
    assert fields.captions(clip_benchmark) == ["two dogs play\r\n\ntwo dogs playing in snow"]  # txt: one caption
    assert lines.captions(raw(txt=b"\n \n", json={"caption": "the json"})) == ["the json"]
    assert lines.members_read(["text"]) == {"txt", "json"}
    with pytest.raises(ValueError, match="image_keys: 'lines:' entries are for caption_keys"):
        SampleFields(image_keys="lines:jpg")
