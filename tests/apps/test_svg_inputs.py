"""An SVG drawing is an image wherever an image is taken: the API, embed, classify, eval, search, serve.

It is rasterised as the shard writer rasterises it (``multimodal.data.preprocess.svg``), so its embedding is
that of the PNG a shard of it holds.
"""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("resvg_py")

from multimodal.apps import embedding, embedding_outputs
from multimodal.apps.api import ZeroShotClassifier, load_embedding_model as load
from multimodal.cli import main
from multimodal.data.modalities.image_modality import IMAGE
from multimodal.data.preprocess.svg import is_svg, rasterise_svg
from multimodal.apps.search import build_index, open_index
from multimodal.apps.search.media import MediaReader
from tests.apps.test_api import tiny_checkpoint, write_png

# An Inkscape-style file: BOM, XML declaration, comment and DOCTYPE before the <svg> element.
DRAWING = (
    '\ufeff<?xml version="1.0" encoding="UTF-8"?>\n<!-- Created with a drawing program -->\n'
    '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
    '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48" viewBox="0 0 64 48">'
    '<rect width="64" height="48" fill="#eee"/><circle cx="30" cy="24" r="17" fill="#c33"/>'
    '<path d="M4 44 L60 4" stroke="#036" stroke-width="5"/></svg>\n'
).encode("utf-8")


@pytest.fixture(scope="module")
def model():
    return load(tiny_checkpoint(), precision="fp32", batch_size=4)


@pytest.fixture()
def drawings(tmp_path):
    """The drawing as ``cat.svg`` and as ``drawing`` (no extension), and the PNG the shard writer would store."""
    (tmp_path / "cat.svg").write_bytes(DRAWING)
    (tmp_path / "drawing").write_bytes(DRAWING)
    (tmp_path / "cat.png").write_bytes(rasterise_svg(DRAWING))
    return tmp_path


def test_svg_is_told_by_its_element_not_by_a_name():
    assert is_svg(DRAWING) and is_svg(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert not is_svg(b"<html><body><svg></svg></body></html>") and not is_svg(b'<?xml version="1.0"?><root/>')
    assert not is_svg(b"\x89PNG\r\n\x1a\n") and not is_svg(b"<svgs>")


def test_the_api_embeds_and_classifies_a_drawing_as_its_rasterised_png(model, drawings):
    reference = model.embed_images([drawings / "cat.png"])  # (1, E)
    for given in (drawings / "cat.svg", str(drawings / "drawing"), DRAWING):
        torch.testing.assert_close(model.embed_images([given]), reference, atol=1e-6, rtol=0)
    classifier = ZeroShotClassifier(model, ["cat", "dog"], modality="image")
    torch.testing.assert_close(classifier.predict_proba(drawings / "cat.svg"),
                               classifier.predict_proba(drawings / "cat.png"), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cannot rasterise SVG"):
        model.embed_images([b"<svg xmlns='http://www.w3.org/2000/svg'><rect"])


def test_classify_takes_a_drawing_by_its_name_or_its_content(drawings, capsys):
    status = main(["classify", "--checkpoint", str(tiny_checkpoint()), "--precision", "fp32", "--labels", "cat,dog",
                   "--json", str(drawings / "cat.svg"), str(drawings / "drawing"), str(drawings / "cat.png")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    records = json.loads(captured.out)
    assert [record["labels"] for record in records[:2]] == [records[2]["labels"]] * 2
    np.testing.assert_allclose([record["scores"] for record in records[:2]], [records[2]["scores"]] * 2, atol=1e-5)


def test_embed_eval_search_and_serve_take_drawings(model, drawings, tmp_path, capsys):
    # A folder of images: the drawing is one of them, embedded as its PNG is.
    folder = tmp_path / "folder"
    write_png(folder / "dogs" / "photo.png", seed=3)
    (folder / "cats").mkdir()
    (folder / "cats" / "cat.svg").write_bytes(DRAWING)
    result = embedding.embed_files(model, "image", [folder], tmp_path / "images.npy")
    vectors, keys = embedding_outputs.read_embeddings(tmp_path / "images.npy")
    assert result.skipped == [] and keys == [str(folder / "cats" / "cat.svg"), str(folder / "dogs" / "photo.png")]
    np.testing.assert_allclose(vectors[:1], model.embed_images([drawings / "cat.png"]).numpy(), atol=1e-6)
    # Class folders: the drawing is evaluated with the photo.
    status = main(["eval", "--checkpoint", str(tiny_checkpoint()), "--precision", "fp32", "--task", "zeroshot",
                   "--data", str(folder), "--output", str(tmp_path / "eval.json"), "--no-pictures"])
    assert status == 0 and json.loads((tmp_path / "eval.json").read_text())["results"]["eval/num_samples"] == 2
    # Search: the drawing as a query finds itself.
    build_index([tmp_path / "images.npy"], tmp_path / "index", checkpoint=tiny_checkpoint())
    capsys.readouterr()
    status = main(["search", "--index", str(tmp_path / "index"), "--image", str(drawings / "cat.svg"), "-k", "1",
                   "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    best = json.loads(captured.out)[0]["hits"][0]
    assert best["key"] == str(folder / "cats" / "cat.svg") and best["score"] == pytest.approx(1.0, abs=1e-4)
    # Serving it: shown as a PNG, never as the SVG itself (an SVG may hold scripts).
    data, media_type = MediaReader("image").read(best["key"], best["source"])
    assert media_type == "image/png" and data.startswith(b"\x89PNG") and IMAGE.thumbnail(data, 64) is not None
    from multimodal.apps.search_server import SearchService

    service = SearchService(open_index(tmp_path / "index"), model)
    answer = service.search("image", DRAWING, 1)  # what an upload of the file's bytes is searched with
    assert answer["hits"][0]["key"] == best["key"] and answer["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
