"""Every indexed row keeps the shard it was embedded from, in every output format.

Two shards share their file name, as the shard writer names a train and a validation
split (``emoji-val/shard-000000.tar``, ``emoji-train/shard-000000.tar``). Parts record
their shard and modality; parts of earlier versions, which record neither, are matched
to a shard by full path and refused when their name fits several.
"""
import numpy as np
import pytest

from multimodal.apps import embedding, embedding_outputs
from multimodal.apps.search import open_index, read_manifest
from multimodal.apps.search.collection import Part, part_shard, shards_by_part_name
from tests.apps.test_api import tiny_checkpoint
from tests.cli.test_search_cli import png_bytes, run, write_tar

VAL = "shards/emoji-val/shard-000000.tar"
TRAIN = "shards/emoji-train/shard-000000.tar"
SPEC = "shards/emoji-{val,train}/shard-000000.tar"
# One key in both shards with other captions: a row's caption must come from its own shard, not its key.
CAPTIONS = {
    VAL: {"val-0": "a smiling face", "val-1": "a red heart", "both": "the validation one"},
    TRAIN: {"train-0": "a rocket", "train-1": "a cat face", "train-2": "a pizza slice", "both": "the training one"},
}


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint()


@pytest.fixture()
def shards(tmp_path, monkeypatch):
    """The two shards, named as the user named them: relative to the current folder (tmp_path)."""
    monkeypatch.chdir(tmp_path)
    for number, (url, captions) in enumerate(CAPTIONS.items()):
        members = []
        for index, (key, caption) in enumerate(captions.items()):
            members += [(f"{key}.png", png_bytes(10 * number + index)), (f"{key}.txt", caption.encode())]
        write_tar(tmp_path / url, members)
    return tmp_path


def embed_both(capsys, checkpoint, format="npy"):
    for url, output in ((VAL, "emb-val"), (TRAIN, "emb-train")):
        status, _, err = run(capsys, "embed", "--checkpoint", checkpoint, "--modality", "image", "--input", url,
                             "--output", output, "--format", format, "--precision", "fp32")
        assert status == 0, err
    return [embedding.part_path("emb-val", VAL, format), embedding.part_path("emb-train", TRAIN, format)]


def index_rows(directory) -> list[tuple[str, str | None, str | None]]:
    index = open_index(directory)
    return [index.item(i) for i in range(index.count)]


def expected_rows(*urls) -> list[tuple[str, str, str]]:
    return [(key, url, caption) for url in urls for key, caption in CAPTIONS[url].items()]


def error_line(capsys, *argv) -> tuple[int, str]:
    """(exit status, the one error line) of a command that fails, by status 1 or by argparse's 2."""
    try:
        status, _, err = run(capsys, *argv)
    except SystemExit as exited:
        status, err = exited.code, capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return status, lines[0]


@pytest.mark.parametrize("format", ["npy", "safetensors", "parquet"])
def test_shards_of_the_same_name_keep_their_own_rows(checkpoint, shards, capsys, format):
    parts = embed_both(capsys, checkpoint, format)
    # As the user ran it: the brace spec of both shards, and no --modality (every format records it).
    status, out, err = run(capsys, "index", "--checkpoint", checkpoint, "--input", "emb-val", "emb-train",
                           "--shards", SPEC, "--output", "idx")
    assert status == 0, err
    assert "indexed 7 image vector(s)" in out
    assert index_rows("idx") == expected_rows(VAL, TRAIN)
    assert [record["shard"] for record in read_manifest("idx")["inputs"]] == [VAL, TRAIN]
    vectors = np.concatenate([embedding_outputs.read_embeddings(part)[0] for part in parts])  # (7, E), in input order
    np.testing.assert_array_equal(open_index("idx").vectors(range(7)), vectors)
    # The parts need no --shards at all: they record their shard.
    status, _, err = run(capsys, "index", "--checkpoint", checkpoint, "--input", "emb-train", "emb-val",
                         "--output", "idx2")
    assert status == 0, err
    assert index_rows("idx2") == expected_rows(TRAIN, VAL)


def test_npy_parts_of_earlier_versions_are_matched_by_full_path_or_refused(checkpoint, shards, capsys):
    val_part, train_part = embed_both(capsys, checkpoint)
    for part in (val_part, train_part):  # as earlier versions wrote them: .npy and .keys.json only
        embedding_outputs.metadata_path(part).unlink()
    base = ("index", "--checkpoint", checkpoint, "--input", "emb-val", "emb-train", "--output", "idx")
    assert error_line(capsys, *base, "--shards", SPEC) == (2, (
        f"multimodal index: error: {val_part} does not record the modality (.npy outputs of earlier versions do "
        "not): give it with --modality"))
    # Both parts are named part-shard-000000: which shard each came from is unknown, so nothing is indexed.
    assert error_line(capsys, *base, "--shards", SPEC, "--modality", "image") == (2, (
        f"multimodal index: error: {val_part} may be the part of any of the shards {VAL}, {TRAIN} (all named "
        "shard-000000) and does not record which: give --shards only the shard it was embedded from (index each "
        "folder of parts on its own), or embed it again (parts record their shard now)"))
    assert not (shards / "idx").exists()
    # The wrong shard of the right name: its samples do not hold the part's keys.
    status, line = error_line(capsys, "index", "--checkpoint", checkpoint, "--modality", "image", "--input",
                              "emb-val", "--shards", TRAIN, "--output", "idx")
    assert (status, line) == (2, (
        f"multimodal index: error: {val_part}: 2 of its 3 keys (the first: 'val-0') are not in shard {TRAIN}, the "
        "shard of its name that --shards gives: it was embedded from another shard; give the shard it was embedded "
        "from, or embed it again"))
    # The exact shard of each folder: every row is its own shard's; --add takes the index's modality.
    status, _, err = run(capsys, "index", "--checkpoint", checkpoint, "--modality", "image", "--input", "emb-val",
                         "--shards", VAL, "--output", "idx")
    assert status == 0, err
    status, _, err = run(capsys, "index", "--add", "--input", "emb-train", "--shards", TRAIN, "--output", "idx")
    assert status == 0, err
    assert index_rows("idx") == expected_rows(VAL, TRAIN)


def test_what_a_part_records_wins_and_is_checked(checkpoint, shards, capsys):
    val_part, _ = embed_both(capsys, checkpoint)
    assert error_line(capsys, "index", "--checkpoint", checkpoint, "--modality", "audio", "--input", "emb-val",
                      "--output", "idx") == (2, (
        f"multimodal index: error: --modality audio, but {val_part} records image embeddings: leave it out (the "
        "inputs record their modality) or give image"))
    # A recorded shard rewritten since with other samples: its rows would show the wrong samples.
    write_tar(shards / VAL, [("other.png", png_bytes(99)), ("other.txt", b"another sample")])
    assert error_line(capsys, "index", "--checkpoint", checkpoint, "--input", "emb-val", "--output", "idx") == (1, (
        f"multimodal index: error: {val_part}: 3 of its 3 keys (the first: 'val-0') are not in shard {VAL}, the "
        "shard it records: the shard has changed since it was embedded; embed it again from the shards as they are"))
    # Without reading the shards (--no-captions) the rows still get the shard they record.
    status, _, err = run(capsys, "index", "--checkpoint", checkpoint, "--input", "emb-val", "--output", "idx",
                         "--no-captions")
    assert status == 0, err
    assert index_rows("idx") == [(key, VAL, None) for key in CAPTIONS[VAL]]


def test_one_shard_spelt_two_ways_is_one_candidate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in (VAL, TRAIN, "shards/emoji-val/shard-000001.tar"):  # listing a spec leaves out missing local files
        (tmp_path / url).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / url).touch()
    named = shards_by_part_name([VAL, f"./{VAL}", str(tmp_path / VAL), TRAIN, "pipe:cat x/shard-000000.tar"])
    assert named == {"shard-000000": [VAL, TRAIN, "pipe:cat x/shard-000000.tar"]}
    old_part = Part(tmp_path / "emb" / "part-shard-000001.npy", np.zeros((0, 4), np.float32), [], {})
    assert part_shard(old_part, shards_by_part_name([VAL, f"./{VAL}", "shards/emoji-val/shard-000001.tar"])) == (
        "shards/emoji-val/shard-000001.tar")
    assert part_shard(old_part, shards_by_part_name([VAL])) is None  # no shard of its name: no source, no guess
    recorded = Part(old_part.path, old_part.vectors, [], {"shard": TRAIN})
    assert part_shard(recorded, named) == TRAIN
