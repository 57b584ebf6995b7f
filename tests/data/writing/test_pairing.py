"""One sample per name in every layout: caption files, class folders, manifests; both files of one modality kept."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from multimodal.data.writing.listing import choose_layout, class_folder_files, list_folder, samples_from_folder, visible_files
from multimodal.data.writing.writer import samples_from_manifest, write_shards
from tests.folder_fixtures import skipped_lines, write_picture, write_sound, written_members


def media_by_key(samples) -> dict[str, list[str]]:
    return {sample.key: sorted(Path(path).name for path in sample.media.values()) for sample in samples}


def test_caption_files_pair_modalities_and_keep_both_pictures_of_one_name(tmp_path):
    pytest.importorskip("resvg_py")
    root = tmp_path / "folder"
    write_picture(root / "guitar.svg", 10, "SVG")
    write_sound(root / "guitar.ogg", 300, "OGG")
    write_picture(root / "cow.svg", 20, "SVG")
    write_picture(root / "cow.webp", 30, "WEBP")
    write_sound(root / "cow.ogg", 400, "OGG")
    write_picture(root / "bird.png", 40, "PNG")
    write_picture(root / "bird.PNG", 50, "PNG")  # one format in two spellings: once, one was silently lost
    for name in ("guitar", "cow", "bird"):
        (root / f"{name}.txt").write_text(f"a {name}", encoding="utf-8")
    if len(list(root.iterdir())) != 10:
        pytest.skip("this file system folds case in names")
    samples = samples_from_folder(root)
    # The first picture (raster before SVG) takes the name and the sound; each further one is a sample of its own.
    assert media_by_key(samples) == {
        "bird": ["bird.PNG"], "bird_png": ["bird.png"], "cow": ["cow.ogg", "cow.webp"], "cow_svg": ["cow.svg"],
        "guitar": ["guitar.ogg", "guitar.svg"],
    }
    result = write_shards(samples, tmp_path / "shards")
    assert result.skipped == [] and result.unused_files == [] and result.ignored_files == {}
    members = written_members(result.shards)
    assert {key: sorted(sample) for key, sample in members.items()} == {
        "bird": ["png", "txt"], "bird_png": ["png", "txt"], "cow": ["ogg", "txt", "webp"], "cow_svg": ["png", "txt"],
        "guitar": ["ogg", "png", "txt"],
    }
    assert members["cow_svg"]["txt"] == members["cow"]["txt"] == b"a cow"


def test_class_folders_pair_a_picture_and_a_sound_of_one_name(tmp_path):
    root = tmp_path / "classes"
    write_picture(root / "instruments" / "guitar.svg", 10, "SVG")
    write_sound(root / "instruments" / "guitar.ogg", 300, "OGG")
    write_picture(root / "animals" / "cow.webp", 30, "WEBP")
    write_picture(root / "animals" / "cow.svg", 20, "SVG")
    write_sound(root / "animals" / "cow.ogg", 400, "OGG")
    samples = {sample.key: sample for sample in samples_from_folder(root, layout="classes")}
    assert media_by_key(samples.values()) == {
        "animals__cow": ["cow.ogg", "cow.webp"], "animals__cow_svg": ["cow.svg"],
        "instruments__guitar": ["guitar.ogg", "guitar.svg"],
    }
    # A picture and its sound: one caption, the picture's template.
    assert samples["instruments__guitar"].caption == "a photo of instruments."
    assert samples["instruments__guitar"].extra == {"label": 1, "class_name": "instruments"}
    assert samples["animals__cow_svg"].extra == {"label": 0, "class_name": "animals"}
    assert samples["animals__cow_svg"].origin == str(root / "animals" / "cow.svg")


def test_manifest_rows_of_one_name_are_one_sample(tmp_path):
    media = tmp_path / "media"
    write_picture(media / "guitar.svg", 10, "SVG")
    write_sound(media / "guitar.ogg", 300, "OGG")
    write_picture(media / "cow.webp", 30, "WEBP")
    write_picture(media / "cow.svg", 20, "SVG")
    write_picture(media / "sun.png", 40, "PNG")
    rows = [
        {"path": "media/guitar.svg", "caption": "a guitar", "source": "game"},
        {"path": "media/guitar.ogg", "caption": "a guitar"},
        {"path": "media/cow.webp", "caption": "a cow"},
        {"path": "media/cow.svg", "caption": "a drawing of a cow"},
        {"path": "media/sun.png", "caption": "the sun"},
        {"path": "media/sun.png", "caption": "a bright sun"},  # a second caption of one picture
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    samples = {sample.key: sample for sample in samples_from_manifest(manifest)}
    assert media_by_key(samples.values()) == {
        "media__guitar": ["guitar.ogg", "guitar.svg"], "media__cow": ["cow.webp"], "media__cow_svg": ["cow.svg"],
        "media__sun": ["sun.png"],
    }
    assert samples["media__guitar"].caption == "a guitar" and samples["media__guitar"].extra == {"source": "game"}
    # Two pictures of one name: two samples, each with its own row's caption.
    assert (samples["media__cow"].caption, samples["media__cow_svg"].caption) == ("a cow", "a drawing of a cow")
    assert samples["media__sun"].origin == f"{manifest}:5,6 ({media / 'sun.png'})"
    result = write_shards(samples.values(), tmp_path / "shards", validate=False)
    assert result.skipped == [] and result.num_written == 4
    members = written_members(result.shards)
    assert json.loads(members["media__sun"]["json"]) == {"caption": ["the sun", "a bright sun"]}
    # The same pairing from a CSV manifest.
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["path", "caption"])
        writer.writeheader()
        writer.writerows({"path": row["path"], "caption": row["caption"]} for row in rows[:2])
    assert media_by_key(samples_from_manifest(tmp_path / "manifest.csv")) == {"media__guitar": ["guitar.ogg", "guitar.svg"]}


def test_every_file_is_written_or_named(tmp_path):
    """Samples skipped, files of types not read, caption files no sample reads: each named in skipped.jsonl."""
    root = tmp_path / "folder"
    write_picture(root / "a.png", 10, "PNG")
    (root / "a.txt").write_text("a", encoding="utf-8")
    (root / "a.TXT").write_text("a again", encoding="utf-8")
    write_sound(root / "b.ogg", 300, "OGG")  # no caption
    (root / "notes.xcf").write_bytes(b"gimp")
    (root / "c.txt").write_text("no picture", encoding="utf-8")
    if len(list(root.iterdir())) != 6:
        pytest.skip("this file system folds case in names")
    result = write_shards(samples_from_folder(root), tmp_path / "shards")
    named = {Path(entry["origin"].removesuffix(".*")).name: entry["reason"] for entry in skipped_lines(result.skipped_file)}
    assert named == {"b": "no_caption", "c": "no_media", "notes.xcf": "type_not_read", "a.txt": "same_name_twice"}
    assert result.ignored_files == {"xcf": 1} and result.num_written == 1


def test_the_automatic_layout_follows_the_share_of_captioned_files(tmp_path):
    classes = tmp_path / "classes"
    for index, name in enumerate(["cat", "dog"]):
        write_picture(classes / name / f"{index}.png", index, "PNG")
        write_picture(classes / name / f"{index + 2}.png", index, "PNG")
    (classes / "Licence.txt").write_text("CC-BY 4.0\n", encoding="utf-8")
    (classes / "cat" / "README.txt").write_text("photos of cats\n", encoding="utf-8")
    listing = list_folder(classes)
    assert (listing.layout, listing.decision) == (
        "classes", "classes: only 0 of 4 pictures have a same-name .txt caption, fewer than half of any kind; 2 class "
        "folders name the rest (2 classes: cat, dog)")
    # Half or more captioned: caption files.
    captions = tmp_path / "captions"
    for index in range(4):
        write_picture(captions / f"{index}.png", index, "PNG")
    for index in range(2):
        (captions / f"{index}.txt").write_text("x", encoding="utf-8")
    assert choose_layout(captions, visible_files(captions), "auto", "auto") == (
        "captions", "captions: 2 of 4 pictures have a same-name .txt caption")
    # Captioned pictures beside many spoken descriptions without captions (a stamps package): still captions.
    stamps = tmp_path / "stamps"
    write_picture(stamps / "animals" / "cat.png", 1, "PNG")
    (stamps / "animals" / "cat.txt").write_text("A cat.", encoding="utf-8")
    for language in ("de", "fr", "ja"):
        write_sound(stamps / "animals" / f"cat_desc_{language}.ogg", 300, "OGG")
    assert choose_layout(stamps, visible_files(stamps), "auto", "auto") == (
        "captions", "captions: 1 of 1 pictures and 0 of 3 sounds have a same-name .txt caption")
    # Nothing captioned and no class folders: a stray text file is not a reason to read captions.
    (captions / "0.txt").unlink()
    (captions / "1.txt").rename(captions / "Licence.txt")
    with pytest.raises(ValueError, match=r"has neither caption files \(.*0 of 4 pictures have.*pass --captions names"):
        list_folder(captions)


def test_a_folder_that_only_wraps_the_classes_is_not_a_class(tmp_path):
    """`root/categorization/{fruit,animals}/...`: the classes are fruit and animals, not 'categorization'."""
    from multimodal.cli.evaluate import _read_class_folder

    root = tmp_path / "game"
    write_picture(root / "categorization" / "fruit" / "apple.png", 10, "PNG")
    write_picture(root / "categorization" / "animals" / "cow.png", 20, "PNG")
    write_picture(root / "categorization" / "animals" / "farm" / "pig.png", 30, "PNG")
    assert class_folder_files(root)[0] == ["animals", "fruit"]
    listing = list_folder(root, layout="classes")
    assert {sample.key: sample.caption for sample in listing.samples} == {
        "categorization__animals__cow": "a photo of animals.", "categorization__animals__farm__pig": "a photo of animals.",
        "categorization__fruit__apple": "a photo of fruit.",
    }
    assert listing.decision == (
        "classes (--layout classes); 0 of 3 pictures have a same-name .txt caption (2 classes inside "
        "categorization/ (the one folder at the top): animals, fruit; 1 media files lie in sub-folders of their class "
        "folder, labelled by the class folder (animals/farm/pig.png: animals); if folder names are not classes, "
        "--captions names captions each file by its name)"
    )
    # Evaluation labels class folders by the same rule.
    import argparse

    folder = _read_class_folder(root, None, argparse.ArgumentParser())
    classes, items = folder.class_names, folder.files
    assert classes == ["animals", "fruit"] and sorted(label for _, label in items) == [0, 0, 1]
