"""Shard keys: distinct for any name a file system allows, stable across runs, readable where ASCII."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from multimodal.cli import main
from multimodal.data.writing.keys import hashed_key, make_key, unique_keys
from multimodal.data.writing.listing import samples_from_folder
from multimodal.data.pipeline.shard_reader import read_shard
from multimodal.data.writing.writer import write_shards

KEY_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")
NFC_CAFE = unicodedata.normalize("NFC", "café")
NFD_CAFE = unicodedata.normalize("NFD", "café")
# One name per script and per accent, and names that differ only in accents, case or normalisation.
NAMES = [
    "猫", "狗", "小鸟", "金鱼", "马",  # Chinese
    "кошка", "Кошка", "собака",  # Cyrillic, one differing only in case
    "قطة", "كلب",  # Arabic
    NFC_CAFE, NFD_CAFE, "cafè", "Café", "cafe",  # accents, normalisation, case, none
    "naïve/Ærøskøbing", "ひらがな", "😺",
    "Cat", "cat",
]


def png_bytes(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), shade, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ascii_names_keep_the_keys_they_always_had():
    assert make_key("cats/tabby 01") == "cats__tabby_01"
    assert make_key("a.b/c") == "a_b__c"
    assert make_key("Cat") == "Cat" and make_key("cat") == "cat"
    assert make_key("sub\\clip one") == "sub__clip_one"


def test_keys_of_any_script_accent_case_or_normalisation_are_distinct_and_safe():
    assert NFC_CAFE != NFD_CAFE
    keys = [make_key(name) for name in NAMES]
    assert len(set(keys)) == len(NAMES), sorted(keys)
    for key in keys:
        # No '.' (webdataset's key ends at the first one) and no '/': one flat level of members.
        assert KEY_CHARACTERS.fullmatch(key), key
    # Readable where it can be: accents come off, the script that has no ASCII letters leaves '_'.
    assert make_key(NFC_CAFE).startswith("cafe-") and make_key(NFD_CAFE).startswith("cafe-")
    assert make_key("cafè").startswith("cafe-") and make_key("Café").startswith("Cafe-")
    assert make_key("naïve/Ærøskøbing").startswith("naive__AEroskobing-")
    assert re.fullmatch(r"_-[0-9a-f]{16}", make_key("猫"))


def test_keys_are_the_same_on_every_run_and_machine():
    """A hash of the exact bytes of the name, not Python's salted hash(): pinned values, and a fresh
    interpreter with another hash seed gives the same keys."""
    assert make_key("猫") == "_-3825438160567439"
    assert make_key(NFC_CAFE) == "cafe-5777a2bd3192d7e3"
    assert make_key(NFD_CAFE) == "cafe-e2aa25c9af40ac58"
    # The module alone (standard library only), so the fresh interpreter starts in a blink.
    import multimodal.data.writing.keys as keys_module

    script = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('keys', sys.argv[1]); "
              "keys = importlib.util.module_from_spec(spec); spec.loader.exec_module(keys); "
              "print([keys.make_key(n) for n in sys.argv[2:]])")
    runs = [
        subprocess.run([sys.executable, "-c", script, keys_module.__file__, *NAMES], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1] == f"{[make_key(name) for name in NAMES]}\n"


def test_a_name_that_is_not_utf8_gets_a_key():
    name = os.fsdecode(b"caf\xe9")  # Latin-1 bytes on a UTF-8 file system
    assert re.fullmatch(r"caf-[0-9a-f]{16}", make_key(name))
    assert make_key(name) != make_key(NFC_CAFE)


def test_ascii_names_sharing_a_slug_are_told_apart():
    keys = unique_keys(["a b", "a_b", "a.b", "c d"])
    assert keys["c d"] == "c_d"  # alone with its slug: unchanged
    assert len({keys["a b"], keys["a_b"], keys["a.b"]}) == 3
    assert keys["a_b"] == hashed_key("a_b") and keys["a_b"].startswith("a_b-")


def test_five_chinese_named_pictures_are_five_samples(tmp_path, capsys):
    """The folder that gave 'written 1 of 5 samples' and every key '_'."""
    root = tmp_path / "pets"
    root.mkdir()
    captions = {"猫": "一只猫", "狗": "一只狗", "鸟": "一只鸟", "鱼": "一条鱼", "马": "一匹马"}
    for shade, (name, caption) in enumerate(captions.items()):
        (root / f"{name}.png").write_bytes(png_bytes(40 * shade))
        (root / f"{name}.txt").write_text(caption, encoding="utf-8")
    assert main(["shards", "--input", str(root), "--output", str(tmp_path / "shards")]) == 0
    out = capsys.readouterr().out
    assert "written 5 of 5 samples, skipped 0" in out.splitlines()
    problems = []
    read = {sample["__key__"]: sample["txt"].decode() for sample in read_shard(str(tmp_path / "shards" / "shard-000000.tar"), problems)}
    assert problems == [] and sorted(read.values()) == sorted(captions.values())
    assert read == {make_key(name): caption for name, caption in captions.items()}


def test_names_differing_in_accents_case_or_normalisation_survive_the_shards(tmp_path):
    """Written and read back by our tar parser and by webdataset's, each name its own sample; the
    same folder listed twice gives the same keys and the same shard bytes."""
    root = tmp_path / "names"
    root.mkdir()
    names = [name for name in NAMES if "/" not in name]
    for shade, name in enumerate(names):
        (root / f"{name}.png").write_bytes(png_bytes(shade))
        (root / f"{name}.txt").write_text(name, encoding="utf-8")
    if len(os.listdir(root)) != 2 * len(names):
        pytest.skip("this file system folds case or Unicode normalisation in names")
    first, second = samples_from_folder(root), samples_from_folder(root)
    assert [sample.key for sample in first] == [sample.key for sample in second]
    results = [write_shards(samples, tmp_path / f"out{run}") for run, samples in enumerate((first, second))]
    assert results[0].num_written == len(names) and results[0].skipped == []
    shard = results[0].shards[0]
    assert shard.read_bytes() == results[1].shards[0].read_bytes()
    ours = {sample["__key__"]: sample["txt"].decode() for sample in read_shard(str(shard), [])}
    theirs = {sample["__key__"]: sample["txt"].decode()
              for sample in webdataset.WebDataset(str(shard), shardshuffle=False, empty_check=False)}
    assert ours == theirs and sorted(ours.values()) == sorted(names)
    assert ours == {make_key(name): name for name in names}
