"""Pictures of `multimodal eval`: the confusion matrix's counts, the galleries' hits, inlined media."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.apps.api import ZeroShotClassifier, load_embedding_model as load
from multimodal.cli import main
from multimodal.data.writing.writer import samples_from_folder, write_shards
from multimodal.apps.evaluation_pictures import confusion_matrix
from tests.apps.test_api import tiny_checkpoint, write_png, write_wav


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint()


@pytest.fixture()
def class_folder(tmp_path):
    for name in ("cats", "dogs", "seven"):
        for index in range(3):
            write_png(tmp_path / "classes" / name / f"{index}.png", seed=hash((name, index)) % 1000)
    (tmp_path / "classes" / "dogs" / "broken.png").write_bytes(b"not a png")  # skipped by the evaluation
    return tmp_path / "classes"


def test_confusion_matrix_counts_true_by_predicted():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3), [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_zero_shot_pictures_show_what_the_model_confuses(checkpoint, class_folder, tmp_path, capsys):
    status = main(["eval", "--checkpoint", str(checkpoint), "--precision", "fp32", "--task", "zeroshot",
                   "--data", str(class_folder), "--output", str(tmp_path / "out" / "results.json")])
    err = capsys.readouterr().err
    assert status == 1  # broken.png was skipped
    confusion, gallery = tmp_path / "out" / "results.confusion.png", tmp_path / "out" / "results.gallery.html"
    assert f"wrote {confusion}" in err and f"wrote {gallery}" in err
    assert Image.open(confusion).format == "PNG"
    # The gallery's rankings are the classifier's: for each class name, the images most like its prompts.
    model = load(checkpoint, precision="fp32")
    classifier = ZeroShotClassifier(model, ["cats", "dogs", "seven"], modality="image")
    files = sorted(p for p in class_folder.rglob("*.png") if p.name != "broken.png")
    similarities = model.embed_images(files) @ classifier.class_weights.T  # (N, C)
    page = gallery.read_text(encoding="utf-8")
    rows = page.split('<div class="row">')[1:]
    assert [re.search(r"“(.*?)”", row).group(1) for row in rows] == ["cats", "dogs", "seven"]
    for column, row in enumerate(rows):
        keys = re.findall(r'<div class="key">(.*?)</div>', row)
        expected = [str(files[i]) for i in similarities[:, column].topk(5).indices.tolist()]
        assert keys == expected
        marks = re.findall(r'<div class="cell (right|wrong)">', row)
        assert marks == ["right" if f"/{['cats', 'dogs', 'seven'][column]}/" in key else "wrong" for key in keys]
    assert page.count('<img src="data:image/png;base64,') == 15 and "broken.png" not in page
    accuracy = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["eval/accuracy@1"]
    assert f"Zero-shot accuracy {accuracy:.1%}" in page


def test_retrieval_gallery_on_shards_shows_captions_and_marks_the_pair(checkpoint, tmp_path, capsys):
    words = ["cat", "dog", "seven", "photo", "sound", "someone", "saying", "the", "of"]
    for index in range(9):
        write_png(tmp_path / "pairs" / f"{index}.png", seed=index)
        (tmp_path / "pairs" / f"{index}.txt").write_text(" ".join(words[index:] + words[:index]), encoding="utf-8")
    written = write_shards(samples_from_folder(tmp_path / "pairs"), tmp_path / "shards", max_samples_per_shard=4)
    status = main(["eval", "--checkpoint", str(checkpoint), "--task", "retrieval", "--data", written.splits["all"].spec,
                   "--output", str(tmp_path / "retrieval.json")])
    capsys.readouterr()
    assert status == 0
    page = (tmp_path / "retrieval.gallery.html").read_text(encoding="utf-8")
    rows = page.split('<div class="row">')[1:]
    assert len(rows) == 9  # every query: fewer than the sample size
    assert all(row.count('<div class="caption">') == 5 for row in rows)
    recall_at_5 = json.loads((tmp_path / "retrieval.json").read_text())["results"]["eval/image_to_text/recall@5"]
    found = sum('class="cell right"' in row for row in rows)
    assert found == round(recall_at_5 * 9) and f"({found} of 9 found in the top 5)" in page


def test_audio_galleries_inline_players(checkpoint, tmp_path, capsys):
    for name in ("cat", "dog"):
        for index in range(2):
            write_wav(tmp_path / "sounds" / name / f"{index}.wav", seed=index + 5 * len(name), seconds=0.6)
    status = main(["eval", "--checkpoint", str(checkpoint), "--task", "zeroshot", "--data", str(tmp_path / "sounds"),
                   "--output", str(tmp_path / "audio.json")])
    capsys.readouterr()
    assert status == 0
    page = (tmp_path / "audio.gallery.html").read_text(encoding="utf-8")
    assert page.count('<audio controls preload="none" src="data:audio/wav;base64,') == 2 * 4
    skipped = main(["eval", "--checkpoint", str(checkpoint), "--task", "zeroshot", "--data", str(tmp_path / "sounds"),
                    "--output", str(tmp_path / "plain.json"), "--no-pictures"])
    capsys.readouterr()
    assert skipped == 0 and not (tmp_path / "plain.gallery.html").exists()


def test_gallery_thumbnails_composite_transparency_onto_white_as_training_does():
    import base64
    import io

    from PIL import Image

    from multimodal.apps.evaluation_pictures import _thumbnail

    # A black cat on a transparent background: flattened onto black it would be a black square.
    picture = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    picture.paste((0, 0, 0, 255), (10, 5, 30, 15))
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    url = _thumbnail("image", encoded.getvalue())
    assert url.startswith("data:image/png;base64,")
    thumbnail = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    assert thumbnail.getpixel((0, 0)) == (255, 255, 255)
    centre = thumbnail.getpixel((thumbnail.size[0] // 2, thumbnail.size[1] // 2))
    assert centre == (0, 0, 0)
    assert _thumbnail("image", b"not an image") is None
