"""One rule for too-short and empty clips in every command: embed, classify, eval, search, serve and shards.

A clip shorter than one spectrogram patch (0.1 s is 8 frames; the tiny preset's patch
is 16) is padded with silence up to it and embedded from its own sound, the same alone
or batched, from a file or from tar shards; a clip with no samples is refused with the
same words everywhere.
"""
import json

import numpy as np
import pytest
import soundfile
import torch
import webdataset

from multimodal.apps.api import ZeroShotClassifier, audio_min_frames, load_embedding_model as load, prepare_input
from multimodal.cli import main
from multimodal.data.preprocess.audio_features import EMPTY_CLIP, samples_for_frames
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.apps.embedding_outputs import read_embeddings
from multimodal.apps.search import build_index, open_index
from multimodal.apps.search_server import SearchService
from tests.apps.test_api import SAMPLE_RATE, tiny_checkpoint, write_png, write_wav

LABELS = "hello,goodbye"
TEMPLATES = ["someone saying {}"]


@pytest.fixture(scope="module")
def model():
    return load(tiny_checkpoint(), precision="fp32", batch_size=4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two different 0.1 s clips, a 1 s one and an empty one (a WAV header, no samples)."""
    root = tmp_path_factory.mktemp("clips")
    empty = root / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), SAMPLE_RATE, subtype="FLOAT")
    return {"short": write_wav(root / "short.wav", seed=1, seconds=0.1),
            "other": write_wav(root / "other short.wav", seed=2, seconds=0.1),
            "long": write_wav(root / "long.wav", seed=3, seconds=1.0), "empty": empty}


@pytest.fixture(scope="module")
def index(model, clips, tmp_path_factory):
    """An index of the short and the long clip, embedded by `multimodal embed`."""
    root = tmp_path_factory.mktemp("index")
    status = main(["embed", "--checkpoint", str(tiny_checkpoint()), "--modality", "audio", "--precision", "fp32",
                   "--input", str(clips["short"]), str(clips["long"]), "--output", str(root / "audio.npy")])
    assert status == 0
    build_index([root / "audio.npy"], root / "index", checkpoint=tiny_checkpoint())
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def line_naming(text: str, name) -> str:
    """The one line of ``text`` that names ``name``."""
    lines = [line for line in text.splitlines() if str(name) in line]
    assert len(lines) == 1, text
    return lines[0]


def test_a_short_clip_is_embedded_from_its_own_sound_alone_or_batched(model, clips):
    assert audio_min_frames(model.config) == 16
    alone = model.embed_audio([clips["short"]])  # (1, E)
    batched = model.embed_audio([clips["long"], clips["short"], clips["other"]])  # (3, E)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=0)
    # Padded and masked to nothing beside a long clip, two short clips would both be the
    # prefix tokens alone; padded with silence each keeps its own sound.
    assert float(batched[1] @ batched[2]) < 0.999
    # The reference: the clip followed by zeros up to the samples of 16 frames, given as a waveform.
    samples = torch.from_numpy(soundfile.read(clips["short"], dtype="float32")[0])
    padded = torch.cat([samples, torch.zeros(samples_for_frames(16, model.config.audio_preprocess) - len(samples))])
    torch.testing.assert_close(model.embed_audio([(padded, SAMPLE_RATE)]), alone, atol=1e-5, rtol=0)


def test_a_short_clip_read_from_shards_is_fed_as_the_api_feeds_it(model, clips, tmp_path):
    """The shard loader pads with the model's audio_preprocess alone: no encoder in the data package."""
    names = ["short", "long", "other"]
    shard = tmp_path / "clips-00000.tar"
    with webdataset.TarWriter(str(shard)) as writer:
        for name in names:
            writer.write({"__key__": name, "wav": clips[name].read_bytes(), "txt": f"someone saying {name}"})
    config = model.model.config
    source = SourceSpec(str(shard), ["audio", "text"])

    def batches(batch_size: int, train: bool = False) -> list[dict]:
        return list(make_loader([source], batch_size=batch_size, train=train, preprocess={"audio": config.audio_preprocess},
                                resampled=False, shuffle_buffer=0, drop_last=False))

    # Evaluation: every window of every clip as prepare_input makes it, the 0.1 s clip padded to one patch.
    (batch,) = batches(3)
    windows = [window for name in names for window in prepare_input("audio", clips[name], config)]
    assert batch["__key__"] == names and windows[0].shape == (16, config.audio_preprocess.num_mel_bins)
    assert batch["audio"].shape[0] == len(windows)
    for row, window in enumerate(windows):
        length = window.shape[0]
        assert torch.equal(batch["audio"][row, :length], window)
        assert (~batch["audio_padding_mask"][row]).sum() == length
    expected = model.embed_audio([clips[name] for name in names])  # (3, E)
    torch.testing.assert_close(model.encode("audio", batch), expected, atol=1e-5, rtol=0)
    # Alone in its batch the short clip is embedded, not refused, and the same.
    alone = batches(1)[0]
    assert alone["__key__"] == ["short"]
    torch.testing.assert_close(model.encode("audio", alone), expected[:1], atol=1e-5, rtol=0)

    # Training reads the same padded frames (a clip shorter than a window is not cropped; no SpecAugment).
    trained = next(batch for batch in batches(3, train=True) if "short" in batch["__key__"])
    row = trained["__key__"].index("short")
    assert (~trained["audio_padding_mask"][row]).sum() == 16  # beside the 1 s clip's 98 frames
    assert torch.equal(trained["audio"][row, :16], windows[0])


def test_embed_classify_eval_search_and_serve_take_a_short_clip_alike(model, clips, index, tmp_path, capsys):
    alone = model.embed_audio([clips["short"]])[0]  # (E,)
    vectors, keys = read_embeddings(index / "audio.npy")
    torch.testing.assert_close(torch.from_numpy(vectors[keys.index(str(clips["short"]))]), alone, atol=1e-5, rtol=0)

    status, out, _ = run(capsys, "classify", "--checkpoint", tiny_checkpoint(), "--precision", "fp32", "--json",
                         "--labels", LABELS, "--templates", TEMPLATES[0], clips["short"], clips["other"])
    expected = ZeroShotClassifier(model, LABELS.split(","), TEMPLATES, modality="audio").predict_proba([clips["short"]])[0]
    record = json.loads(out)[0]
    assert status == 0 and "error" not in record
    got = dict(zip(record["labels"], record["scores"]))
    assert [got[label] for label in LABELS.split(",")] == pytest.approx(expected.tolist(), abs=1e-5)

    status, out, _ = run(capsys, "search", "--index", index / "index", "--precision", "fp32", "--json", "-k", "2",
                         "--audio", clips["short"])
    cli_hits = json.loads(out)[0]["hits"]
    assert status == 0 and cli_hits[0]["key"] == str(clips["short"]) and cli_hits[0]["score"] == pytest.approx(1, abs=1e-4)
    served = SearchService(open_index(index / "index"), model).search("audio", clips["short"].read_bytes(), 2)["hits"]
    assert [(hit["key"], hit["score"]) for hit in served] == [
        (hit["key"], pytest.approx(hit["score"], abs=1e-5)) for hit in cli_hits]

    # A folder of short clips only: alone in their batch, nothing longer to be padded to.
    for label, clip in (("hello", clips["short"]), ("goodbye", clips["other"])):
        (tmp_path / "folder" / label).mkdir(parents=True)
        (tmp_path / "folder" / label / clip.name).write_bytes(clip.read_bytes())
    status, out, err = run(capsys, "eval", "--checkpoint", tiny_checkpoint(), "--precision", "fp32", "--task",
                           "zeroshot", "--data", tmp_path / "folder", "--templates", TEMPLATES[0])
    assert status == 0 and "skipped" not in err


def test_every_command_refuses_an_empty_clip_in_the_same_words(model, clips, index, tmp_path, capsys):
    empty = clips["empty"]
    with pytest.raises(ValueError) as raised:
        model.embed_audio([empty])
    assert str(raised.value) == f"audio input 0 ({empty}): {EMPTY_CLIP}"

    status, _, err = run(capsys, "embed", "--checkpoint", tiny_checkpoint(), "--modality", "audio", "--input", empty,
                         clips["long"], "--output", tmp_path / "out.npy")
    assert status == 1 and line_naming(err, empty).endswith(EMPTY_CLIP)
    status, _, err = run(capsys, "classify", "--checkpoint", tiny_checkpoint(), "--labels", LABELS, empty, clips["long"])
    assert status == 1 and line_naming(err, empty) == f"cannot classify {empty}: ValueError: {EMPTY_CLIP}"
    status, _, err = run(capsys, "search", "--index", index / "index", "--audio", empty, "--audio", clips["long"])
    assert status == 1 and line_naming(err, empty) == f"cannot search --audio {empty}: ValueError: {EMPTY_CLIP}"
    for label, clip in (("hello", empty), ("goodbye", clips["long"])):
        (tmp_path / "folder" / label).mkdir(parents=True)
        (tmp_path / "folder" / label / clip.name).write_bytes(clip.read_bytes())
    status, _, err = run(capsys, "eval", "--checkpoint", tiny_checkpoint(), "--task", "zeroshot", "--data",
                         tmp_path / "folder", "--templates", TEMPLATES[0])
    copied = tmp_path / "folder" / "hello" / empty.name
    assert status == 1 and line_naming(err, copied).endswith(EMPTY_CLIP)
    with pytest.raises(ValueError) as raised:
        SearchService(open_index(index / "index"), model).search("audio", empty.read_bytes(), 2)
    assert str(raised.value) == f"the audio query cannot be read: {EMPTY_CLIP}"


def test_search_answers_the_good_queries_and_names_each_bad_one(model, clips, index, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    missing = tmp_path / "missing.wav"
    status, out, err = run(capsys, "search", "--index", index / "index", "--precision", "fp32", "--json", "-k", "2",
                           "--text", "hello", "--image", broken, "--audio", clips["empty"], "--audio", missing,
                           "--audio", clips["long"])
    results = json.loads(out)
    assert status == 1
    # Answered in the order of the command line, a bad query in its place with its error.
    assert [(r["query"]["modality"], r["query"]["input"]) for r in results] == [
        ("text", "hello"), ("image", str(broken)), ("audio", str(clips["empty"])), ("audio", str(missing)),
        ("audio", str(clips["long"]))]
    assert [("error" in r, len(r["hits"])) for r in results] == [(False, 2), (True, 0), (True, 0), (True, 0), (False, 2)]
    # The good ones are answered as they are alone.
    expected = open_index(index / "index").search(model.embed_audio([clips["long"]]).numpy(), 2)[0]
    assert [(h["key"], h["score"]) for h in results[4]["hits"]] == [
        (hit.key, pytest.approx(hit.score, abs=1e-5)) for hit in expected]
    lines = err.splitlines()
    assert lines[0].startswith(f"cannot search --image {broken}: ValueError: cannot decode image")
    assert lines[1:] == [f"cannot search --audio {clips['empty']}: ValueError: {EMPTY_CLIP}",
                         f"cannot search --audio {missing}: FileNotFoundError: [Errno 2] No such file or directory: "
                         f"'{missing}'",
                         "multimodal: skipped 3 of 5 query(ies)"]
    assert results[2]["error"] == f"ValueError: {EMPTY_CLIP}"
    # Without --json: the answered queries on stdout, in the order given.
    png = write_png(tmp_path / "query.png", seed=0)
    status, out, err = run(capsys, "search", "--index", index / "index", "--precision", "fp32", "-k", "1",
                           "--audio", clips["short"], "--audio", missing, "--text", "hello", "--image", png)
    assert status == 1 and err.splitlines()[-1] == "multimodal: skipped 1 of 4 query(ies)"
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [
        f"audio '{clips['short']}': 1 hit(s) among 2 audio row(s)", "text 'hello': 1 hit(s) among 2 audio row(s)",
        f"image '{png}': 1 hit(s) among 2 audio row(s)"]
    status, out, err = run(capsys, "search", "--index", index / "index", "-k", "1", "--image", png, "--text", "hello")
    assert status == 0 and err == "" and len(out.splitlines()) == 4
