"""`multimodal shards` end to end on a folder shaped like a real collection nobody prepared for us.

The folder mimics a package of drawing stamps: PNGs with and without transparency,
same-name captions of several lines in several languages (with a byte-order mark and
CRLF line ends), same-name sounds at sample rates that do not reduce against 16 kHz,
stray same-name files of unknown types, SVG drawings, hidden files, sub-folders,
sounds without captions and a damaged image. The shards it writes must load in the
training pipeline.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from multimodal.cli import main
from multimodal.data.preprocess.audio_features import num_frames, resampled_length
from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig, ImagePreprocessConfig
from multimodal.data.preprocess.image_transforms import decode_image
from multimodal.data import SourceSpec, make_loader

CAT_CAPTION = "A black cat.\nde.utf8=Eine schwarze Katze.\n\nja.utf8=黒い猫。\n"
TREE_CAPTION = "\ufeffA grey tree.\r\n\r\nA tree in winter.\r\n"  # as a Windows editor saves it
SOUND_SECONDS = 1.3
SVG = (  # a size in pt and no viewBox: drawable only at a known dpi
    '<svg xmlns="http://www.w3.org/2000/svg" width="48pt" height="36pt">'
    '<rect x="0" y="0" width="64" height="48" fill="#ff0000"/></svg>'
)


def cat_pixels() -> np.ndarray:
    """A black disc on a transparent page, (16, 16, 4) RGBA; the transparent pixels' colour is black too."""
    rows, columns = np.mgrid[0:16, 0:16]
    disc = (rows - 7.5) ** 2 + (columns - 7.5) ** 2 < 25
    pixels = np.zeros((16, 16, 4), np.uint8)
    pixels[..., 3] = np.where(disc, 255, 0)
    return pixels


def tone(sample_rate: int, format: str) -> bytes:
    time_axis = np.arange(int(SOUND_SECONDS * sample_rate)) / sample_rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.4 * np.sin(2 * np.pi * 440 * time_axis)).astype(np.float32), sample_rate, format=format)
    return buffer.getvalue()


def save_png(path: Path, image: Image.Image, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", **options)


@pytest.fixture
def stamps(tmp_path) -> Path:
    root = tmp_path / "stamps"
    animals, plants, symbols = root / "animals", root / "plants" / "trees", root / "symbols"
    save_png(animals / "cat.png", Image.fromarray(cat_pixels(), "RGBA"))
    (animals / "cat.txt").write_text(CAT_CAPTION, encoding="utf-8")
    (animals / "cat.dat").write_text("nomirror\nnoflip\n")
    (animals / "cat.ogg").write_bytes(tone(11127, "OGG"))
    (animals / "cat_desc_de.ogg").write_bytes(tone(11127, "OGG"))  # a spoken description, no caption of its own
    save_png(animals / "dog.png", Image.fromarray(np.full((12, 20, 3), (150, 90, 30), np.uint8), "RGB"))
    (animals / "dog.txt").write_text("A brown dog.", encoding="utf-8")
    (animals / "dog.wav").write_bytes(tone(22254, "WAV"))
    grey = np.stack([np.full((10, 10), 80, np.uint8), np.full((10, 10), 64, np.uint8)], axis=-1)
    save_png(plants / "tree.png", Image.fromarray(grey, "LA"))
    (plants / "tree.txt").write_bytes(TREE_CAPTION.encode("utf-8"))
    palette = Image.new("P", (8, 8))
    palette.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    for x in range(2, 6):
        for y in range(2, 6):
            palette.putpixel((x, y), 1)
    save_png(plants / "flower.png", palette, transparency=0)
    (plants / "flower.txt").write_text("A red flower.", encoding="utf-8")
    (plants / "flower.dat").write_text("colorable\n")
    symbols.mkdir(parents=True)
    (symbols / "star.svg").write_text(SVG, encoding="utf-8")
    (symbols / "star.txt").write_text("A red square drawing.", encoding="utf-8")
    (symbols / "sun.svg").write_text(SVG, encoding="utf-8")  # the drawing a raster twin was made from
    save_png(symbols / "sun.png", Image.fromarray(np.full((9, 9, 3), 250, np.uint8), "RGB"))
    (symbols / "sun.txt").write_text("The sun.", encoding="utf-8")
    (symbols / "moon.txt").write_text("The moon.", encoding="utf-8")  # its picture was never added
    (symbols / "moon.dat").write_text("nomirror\n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "broken.txt").write_text("Broken.", encoding="utf-8")
    (root / "notes.md").write_text("# how these were drawn\n")
    (root / "README").write_text("stamps\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    save_png(root / ".thumbnails" / "cat.png", Image.fromarray(cat_pixels(), "RGBA"))
    return root


def shard_members(directory: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def test_messy_folder_end_to_end(stamps, tmp_path, capsys):
    pytest.importorskip("resvg_py")
    output = tmp_path / "shards"
    status = main(["shards", "--input", str(stamps), "--output", str(output)])
    out, err = capsys.readouterr()
    # 10 samples listed (cat, cat_desc_de, dog, tree, flower, star, sun.png, sun.svg, moon, broken); 3 skipped is
    # past 10%.
    assert status == 1
    error_line = err.strip().splitlines()[-1]
    assert error_line == (
        f"multimodal shards: error: skipped 3 of 10 samples (30.0%), more than --max-skip-fraction 0.1; the 7 written "
        f"are in {output}. Reasons above, one line per sample in {output / 'skipped.jsonl'}; fix the input or pass "
        "--max-skip-fraction 1 to accept"
    )
    summary = [line.strip() for line in err.splitlines()]
    assert summary[0] == "layout: captions: 8 of 8 pictures and 2 of 3 sounds have a same-name .txt caption"
    assert f"skipped 3 of 10 samples (one line per sample in {output / 'skipped.jsonl'}):" in summary
    assert any(line.startswith("1 no_caption: no caption") and "cat_desc_de.*" in line for line in summary)
    assert any(line.startswith("1 bad_image: the image does not decode") for line in summary)
    assert any(line.startswith("1 no_media:") and "moon.*" in line for line in summary)
    assert (f"ignored files of types not read: 3 .dat, 1 (no extension), 1 .md (each named in {output / 'skipped.jsonl'})"
            in summary)
    assert any(line.startswith("2 caption files have several lines: each non-empty line is one caption") for line in summary)
    assert "2 SVG drawings rasterised to PNG" in summary
    assert "written 7 of 10 samples, skipped 3" in out.splitlines()
    assert out.splitlines()[-1].strip().startswith("--model.image_preprocess.mean '[")

    skipped = [json.loads(line) for line in (output / "skipped.jsonl").read_text(encoding="utf-8").splitlines()]
    by_name = {Path(entry["origin"].removesuffix(".*")).name: entry for entry in skipped}
    # Every file not used is named: the samples skipped, and the files of types not read.
    assert {name: entry["reason"] for name, entry in by_name.items()} == {
        "cat_desc_de": "no_caption", "broken": "bad_image", "moon": "no_media", "cat.dat": "type_not_read",
        "flower.dat": "type_not_read", "moon.dat": "type_not_read", "notes.md": "type_not_read",
        "README": "type_not_read",
    }
    assert by_name["moon"]["detail"].endswith("(beside it only .dat, not read)")

    # Rerun accepting the skips: status 0, the same shards.
    assert main(["shards", "--input", str(stamps), "--output", str(output), "--overwrite", "--max-skip-fraction", "0.5"]) == 0
    capsys.readouterr()
    members = shard_members(output)
    assert sorted(members) == [
        "animals__cat", "animals__dog", "plants__trees__flower", "plants__trees__tree", "symbols__star", "symbols__sun",
        "symbols__sun_svg",
    ]
    # Captions: several lines become a caption list in the json, one line stays .txt.
    assert "txt" not in members["animals__cat"]
    assert json.loads(members["animals__cat"]["json"]) == {
        "caption": ["A black cat.", "de.utf8=Eine schwarze Katze.", "ja.utf8=黒い猫。"]
    }
    assert json.loads(members["plants__trees__tree"]["json"]) == {"caption": ["A grey tree.", "A tree in winter."]}
    assert members["animals__dog"]["txt"] == b"A brown dog."
    # Stray files never cost a sample its media; the SVG twin of a PNG is a sample of its own with the same
    # caption (two pictures of one name are two samples), a lone SVG becomes a PNG.
    assert set(members["animals__cat"]) == {"png", "ogg", "json"} and set(members["animals__dog"]) == {"png", "wav", "txt"}
    assert set(members["symbols__sun"]) == {"png", "txt"} and set(members["symbols__star"]) == {"png", "txt"}
    assert members["symbols__sun"]["png"] == (stamps / "symbols" / "sun.png").read_bytes()
    assert set(members["symbols__sun_svg"]) == {"png", "txt"} and members["symbols__sun_svg"]["txt"] == b"The sun."
    star = decode_image(members["symbols__star"]["png"])
    assert star.shape == (3, 192, 256) and star[:, 96, 128].tolist() == [255, 0, 0]

    # The image statistics are the means over images of each image's pixel moments.
    stats = json.loads((output / "image_stats.json").read_text())
    images = [decode_image(sample["png"]).double() / 255 for sample in members.values()]
    mean = torch.stack([image.mean(dim=(1, 2)) for image in images]).mean(dim=0)
    squares = torch.stack([image.square().mean(dim=(1, 2)) for image in images]).mean(dim=0)
    assert stats["mean"] == pytest.approx(mean.tolist(), abs=1e-4)
    assert stats["std"] == pytest.approx((squares - mean.square()).sqrt().tolist(), abs=1e-4)
    assert (stats["images_measured"], stats["images_written"], stats["background"]) == (7, 7, [255, 255, 255])

    # Image-text through the training pipeline: transparent pixels are white, the black cat stays black.
    image_config = ImagePreprocessConfig(image_size=16)
    loader = make_loader([SourceSpec(str(output), modalities=["image", "text"], name="stamps")], batch_size=8,
                         train=False, preprocess={"image": image_config}, normalize_images=False)
    batches = list(loader)
    assert len(batches) == 1 and len(batches[0]["__key__"]) == 7
    row = batches[0]["__key__"].index("animals__cat")
    expected_cat = torch.from_numpy(np.where(cat_pixels()[..., 3] == 255, 0, 255).astype(np.uint8)).expand(3, 16, 16)
    assert torch.equal(batches[0]["image"][row], expected_cat)
    captions = dict(zip(batches[0]["__key__"], batches[0]["text"]))
    assert captions["animals__cat"] == "A black cat." and captions["plants__trees__tree"] == "A grey tree."

    # Audio-text: clips at 11,127 and 22,254 Hz come out at 16 kHz with the right number of frames.
    audio_config = AudioPreprocessConfig(num_mel_bins=64, max_frames=400)
    loader = make_loader([SourceSpec(str(output), modalities=["audio", "text"], name="sounds")], batch_size=8,
                         train=False, preprocess={"audio": audio_config})
    batch = next(iter(loader))
    assert sorted(batch["__key__"]) == ["animals__cat", "animals__dog"]
    frames = {key: int((~batch["audio_padding_mask"][row]).sum()) if "audio_padding_mask" in batch else batch["audio"].shape[1]
              for row, key in enumerate(batch["__key__"])}
    for key, rate in (("animals__cat", 11127), ("animals__dog", 22254)):
        samples = resampled_length(int(SOUND_SECONDS * rate), rate, 16000)
        assert abs(frames[key] - num_frames(samples, audio_config)) <= 1  # Vorbis may pad a few samples


def test_image_background_option_sets_the_statistics_and_the_printed_override(tmp_path, capsys):
    import argparse

    from multimodal.cli.shards import colour

    assert colour("white") == (255, 255, 255) and colour("#0a0B0c") == (10, 11, 12) and colour("1, 2,3") == (1, 2, 3)
    with pytest.raises(argparse.ArgumentTypeError, match="expected white, black, grey, #RRGGBB or R,G,B"):
        colour("256,0,0")
    root = tmp_path / "one"
    save_png(root / "cat.png", Image.fromarray(cat_pixels(), "RGBA"))
    (root / "cat.txt").write_text("A black cat.")
    means = {}
    for name in ("white", "black"):
        assert main(["shards", "--input", str(root), "--output", str(tmp_path / name), "--image-background", name]) == 0
        out = capsys.readouterr().out
        means[name] = json.loads((tmp_path / name / "image_stats.json").read_text())["mean"]
        assert ("--model.image_preprocess.background '[0, 0, 0]'" in out) == (name == "black")
    opaque = float((cat_pixels()[..., 3] == 255).mean())  # share of black pixels on white
    assert means["white"] == pytest.approx([1 - opaque] * 3, abs=1e-4) and means["black"] == [0.0, 0.0, 0.0]
    with pytest.raises(SystemExit):
        main(["shards", "--input", str(root), "--output", str(tmp_path / "x"), "--max-skip-fraction", "2"])
    assert "argument --max-skip-fraction: expected a number in [0, 1], got 2.0" in capsys.readouterr().err


def test_shards_and_eval_label_class_folders_by_one_rule(tmp_path):
    """An empty class folder and a hidden folder inside a class: `shards` and `eval` give the same labels."""
    import argparse

    from multimodal.cli.evaluate import _read_class_folder
    from multimodal.data.writing.listing import samples_from_folder

    root = tmp_path / "classes"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        Image.fromarray(cat_pixels()).save(root / name / f"{name}.png")
    (root / "aardvark").mkdir()  # empty: no class of either
    (root / "dog" / ".thumbnails").mkdir()  # hidden: read by neither
    Image.fromarray(cat_pixels()).save(root / "dog" / ".thumbnails" / "small.png")
    (root / "loose.png").write_bytes((root / "cat" / "cat.png").read_bytes())  # beside the folders: no class

    written = {sample.origin: sample.extra["label"] for sample in samples_from_folder(root) if sample.extra}
    folder = _read_class_folder(root, None, argparse.ArgumentParser())
    modality, classes, items = folder.modality, folder.class_names, folder.files
    assert (modality, classes) == ("image", ["cat", "dog"])
    assert {str(path): label for path, label in items} == written == {
        str(root / "cat" / "cat.png"): 0, str(root / "dog" / "dog.png"): 1}


def test_linked_class_folders_are_read_once_and_a_link_back_up_does_not_loop(tmp_path):
    from multimodal.data.writing.listing import class_folder_files

    elsewhere = tmp_path / "elsewhere" / "cats"
    elsewhere.mkdir(parents=True)
    Image.fromarray(cat_pixels()).save(elsewhere / "cat.png")
    root = tmp_path / "classes"
    (root / "dog").mkdir(parents=True)
    Image.fromarray(cat_pixels()).save(root / "dog" / "dog.png")
    (root / "cat").symlink_to(elsewhere)  # a class folder that is a link
    (root / "dog" / "up").symlink_to(root)  # a link back up the tree
    names, files = class_folder_files(root)
    assert names == ["cat", "dog"]
    assert [(path.relative_to(root).as_posix(), label) for path, label in files] == [("cat/cat.png", 0), ("dog/dog.png", 1)]
