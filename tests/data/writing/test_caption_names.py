"""`multimodal shards --captions names`: a folder of well-named files trains as it is, and loses nothing unsaid."""
from __future__ import annotations

from pathlib import Path

import pytest

from multimodal.cli import main
from multimodal.data.writing.listing import caption_from_name, list_folder, name_in_words
from tests.folder_fixtures import game_resources, skipped_lines, written_members


def test_a_name_in_words():
    assert name_in_words("polar_bear") == "polar bear" and name_in_words("snare-drum") == "snare drum"
    assert name_in_words("  a__b - c ") == "a b c" and name_in_words("猫") == "猫"
    assert caption_from_name("animals/arctic/polar_bear") == "polar bear"
    assert caption_from_name("animals/arctic/polar_bear", with_folders=True) == "animals, arctic: polar bear"
    assert caption_from_name("polar_bear", with_folders=True) == "polar bear"


def test_game_resources_with_captions_from_names_lose_nothing_unsaid(tmp_path, capsys):
    """Activities in sub-folders, pictures and sounds sharing stems, two pictures of one stem, stray files:
    every picture and sound is written, every other file is named in skipped.jsonl."""
    pytest.importorskip("resvg_py")
    root = tmp_path / "resources"
    files = game_resources(root)
    output = tmp_path / "shards"
    assert main(["shards", "--input", str(root), "--output", str(output), "--captions", "names"]) == 0
    out, err = capsys.readouterr()
    summary = [line.strip() for line in err.splitlines()]
    assert summary[0] == "layout: captions from each file's name (--captions names)"
    assert f"ignored files of types not read: 2 .qml, 1 (no extension) (each named in {output / 'skipped.jsonl'})" in summary
    assert f"1 other files not used (each named in {output / 'skipped.jsonl'}):" in summary
    assert any(line.startswith("1 captions_from_names: a .txt file where captions come from file names") for line in summary)
    assert "written 9 of 9 samples, skipped 0" in out.splitlines()

    members = written_members(sorted(output.glob("*.tar")))
    listing = list_folder(root, captions="names")
    used = {Path(path).relative_to(root).as_posix() for sample in listing.samples if sample.key in members
            for path in sample.media.values()}
    named = {Path(entry["origin"]).relative_to(root).as_posix(): entry["reason"] for entry in skipped_lines(output / "skipped.jsonl")}
    assert used == set(files["pictures"]) | set(files["sounds"])
    assert named == {"README": "type_not_read", "instruments/ActivityInfo.qml": "type_not_read",
                     "categorization/resource/board/board.qml": "type_not_read", "Licence.txt": "captions_from_names"}
    captions = {key: sample["txt"].decode() for key, sample in members.items()}
    assert captions == {
        "instruments__resource__guitar": "guitar", "instruments__resource__snare_drum": "snare drum",
        "instruments__resource__tuba": "tuba", "instruments__resource__violin": "violin",
        "categorization__resource__board__polar_bear": "polar bear", "categorization__resource__board__cow": "cow",
        "categorization__resource__board__cow_svg": "cow", "categorization__resource__board__red-apple": "red apple",
        "memory__resource__sun": "sun",
    }
    # A picture and the recording sharing its name are one sample.
    assert set(members["instruments__resource__guitar"]) == {"png", "ogg", "txt"}
    assert set(members["instruments__resource__snare_drum"]) == {"png", "wav", "txt"}
    assert set(members["categorization__resource__board__cow"]) == {"webp", "ogg", "txt"}


def test_folders_as_context_a_template_and_class_labels(tmp_path):
    root = tmp_path / "resources"
    game_resources(root)
    listing = list_folder(root, captions="names+folders", caption_template="a picture of {}")
    captions = {sample.key: sample.caption for sample in listing.samples if sample.media}
    assert captions["instruments__resource__guitar"] == "a picture of instruments, resource: guitar"
    assert listing.decision == "captions from each file's folders, then name (--captions names+folders)"
    # Class folders label the samples; the names caption them.
    listing = list_folder(root, layout="classes", captions="names")
    samples = {sample.key: sample for sample in listing.samples if sample.media}
    assert samples["instruments__resource__violin"].caption == "violin"
    assert samples["instruments__resource__violin"].extra == {"label": 1, "class_name": "instruments"}
    assert listing.decision == (
        "captions from each file's name (--captions names); labels from the class folders (3 classes: categorization, "
        "instruments, memory; 13 media files lie in sub-folders of their class folder, labelled by the class folder "
        "(categorization/resource/board/cow.ogg: categorization))")


def test_a_manifest_brings_its_own_captions(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "caption": "a"}\n', encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["shards", "--input", str(manifest), "--output", str(tmp_path / "out"), "--captions", "names"])
    assert "argument --captions: a manifest brings its captions; --captions names reads a folder" in capsys.readouterr().err
