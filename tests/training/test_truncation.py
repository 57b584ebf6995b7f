"""What training cuts: clips longer than the audio window, captions longer than the context, and the lines saying so."""
import io

import numpy as np
import pytest
import soundfile

from multimodal.cli import main
from multimodal.data.preprocess.audio_features import eval_audio_windows, load_waveform, samples_for_frames
from multimodal.data.lengths import LengthCounts, LengthLimits, audio_length
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.data.writing.writer import SampleSource, write_shards
from multimodal.presets import tiny
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.training.truncation import measure_sources, model_limits, truncation_lines, written_truncation_lines

RATE = 16_000
CONFIG = tiny().audio_preprocess  # 100 frames: a window of 16,240 samples, 1.015 s
WORDS = "red green blue small large round square bright dark soft loud quick slow warm cold".split()


def tone(seconds: float, rate: int = RATE, audio_format: str = "FLAC", samples: int | None = None) -> bytes:
    """A 440 Hz sine of ``seconds`` (or exactly ``samples``) as an audio file's bytes."""
    count = samples if samples is not None else round(seconds * rate)
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(count) / rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave.astype(np.float32), rate, format=audio_format)
    return buffer.getvalue()


def caption(num_words: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(num_words))


@pytest.fixture(scope="module")
def tokenizer():
    """Every word of WORDS one token, at a caption's start or after a space: captions of n words are n tokens."""
    trained = Tokenizer.train([caption(15, start) for start in range(15)] * 3, vocab_size=500)
    assert [len(ids) for ids in trained.tokenize([caption(n, n) for n in range(1, 20)])] == list(range(1, 20))
    return trained


def write_clips(directory, clips: list[tuple[float, str]], max_per_shard: int = 10) -> str:
    samples = [SampleSource(key=f"s{index:03d}", media={"flac": tone(seconds)}, caption=text)
               for index, (seconds, text) in enumerate(clips)]
    result = write_shards(samples, directory, shuffle=False, max_samples_per_shard=max_per_shard)
    return result.splits["all"].spec


@pytest.mark.parametrize("audio_format, rate", [("FLAC", 16_000), ("WAV", 44_100), ("OGG", 22_050)])
def test_audio_length_reads_the_header(audio_format, rate):
    assert audio_length(tone(2.0, rate, audio_format)) == (2 * rate, rate)
    with pytest.raises(ValueError, match="cannot decode audio"):
        audio_length(b"RIFF not audio at all")


def test_a_clip_is_long_exactly_when_evaluation_needs_several_windows():
    # Around the 16,240 samples of one window (and its 160-sample frame shift), and at another rate.
    window = samples_for_frames(CONFIG.max_frames, CONFIG)
    files = [tone(0, samples=count) for count in (window, window + 159, window + 160, 3 * RATE)]
    files += [tone(1.0, 44_100), tone(1.1, 44_100)]
    counts = LengthCounts(LengthLimits(audio=CONFIG))
    for data in files:
        counts.add_clip(data)
    several_windows = sum(len(eval_audio_windows(load_waveform(data, CONFIG), CONFIG)) > 1 for data in files)
    assert counts.long_clips == several_windows == 3
    assert counts.clips == 6 and counts.unreadable_clips == 0
    assert counts.clip_frames == {100: 2, 101: 1, 298: 1, 98: 1, 108: 1}
    assert LengthLimits(audio=CONFIG).window_seconds == pytest.approx(1.015)


def test_caption_tokens_are_counted_as_the_tokenizer_cuts(tokenizer):
    texts = [caption(n, n) + ("!!" if n % 2 else "") for n in range(4, 22)]
    limits = LengthLimits(context_length=16, tokenize=tokenizer.tokenize)
    counts = LengthCounts(limits)
    counts.add_captions(texts)
    ids, _ = tokenizer(texts, 16)
    # The reference: a caption is cut when its 16 ids no longer decode to the whole caption.
    cut = sum(tokenizer.decode(row) != tokenizer.normalize(text) for row, text in zip(ids.tolist(), texts))
    assert counts.long_captions == cut > 0 and counts.captions == len(texts)
    assert counts.longest_caption == max(len(ids) for ids in tokenizer.tokenize(texts))


def test_words_are_a_lower_bound_of_tokens(tokenizer):
    texts = ["a dog's ball, 12 inches wide!", "naïve café — déjà vu", "one  two\tthree", caption(15)]
    for text, ids in zip(texts, tokenizer.tokenize(texts)):
        assert len(ids) >= len(text.split()), text
    counts = LengthCounts(LengthLimits(context_length=5))
    counts.add_captions(["one two three", "one two three four", "a b c d e f"])
    assert (counts.long_captions, counts.captions, counts.longest_caption) == (2, 3, 6)
    assert LengthLimits().caption_unit == "words"


def test_measure_sources_counts_and_lines(tmp_path, tokenizer):
    clips = [(0.5, caption(3)), (2.0, caption(10)), (5.0, caption(15)), (1.0, caption(15, 2)), (0.8, caption(14, 5))]
    spec = write_clips(tmp_path / "a", clips, max_per_shard=3)
    model = tiny()
    [measured] = measure_sources([SourceSpec(shards=spec, modalities=["audio", "text"])], model, tokenizer)
    counts = measured.counts
    assert (measured.complete, measured.samples_read, measured.shards_read, measured.num_shards) == (True, 5, 2, 2)
    assert (counts.clips, counts.long_clips, counts.longest_seconds) == (5, 2, 5.0)
    assert counts.mean_seconds == pytest.approx(9.3 / 5)
    assert (counts.captions, counts.long_captions, counts.longest_caption) == (5, 2, 15)
    assert truncation_lines([measured]) == [
        "data.train[0]: 2 of 5 clips (40.0%) are longer than the model's 1.01 s audio window (longest 5.00 s, mean "
        "1.86 s): training reads a random 1.01 s of each; evaluation reads them whole, as windows. To read all of "
        "them whole in training, train with --model.audio.max_frames 498 --model.audio_preprocess.max_frames 498 "
        "(100 frames a second; the audio tower's cost grows with them)",
        "data.train[0]: 2 of 5 captions (40.0%) are longer than the model's text context of 16 tokens (14 caption "
        "tokens besides start and end of text; longest 15 tokens): training and evaluation read only their first 14 "
        "tokens. To read all of them whole, train with --model.text.context_length 17",
    ]
    # A bounded sample says so, and what it read.
    [sampled] = measure_sources([SourceSpec(shards=spec, modalities=["audio", "text"])], model, tokenizer,
                                names=["voices"], max_samples=4)
    assert (sampled.complete, sampled.samples_read, sampled.counts.clips, sampled.counts.long_clips) == (False, 4, 4, 2)
    assert truncation_lines([sampled])[0].startswith(
        "voices: 2 of 4 clips read (50.0%; the first 4 samples, from 2 of its 2 shards) are longer than the model's"
    )
    # The limits are the model's: a longer window and context cut nothing, and nothing is said.
    roomy = tiny()
    roomy.audio.max_frames = roomy.audio_preprocess.max_frames = 498
    roomy.text.context_length = 17
    assert truncation_lines(measure_sources([SourceSpec(shards=spec, modalities=["audio", "text"])], roomy,
                                            tokenizer)) == []


def test_advice_reads_most_clips_when_many_are_cut_and_min_share_quietens(tmp_path):
    counts = LengthCounts(LengthLimits(audio=CONFIG))
    for seconds, repeat in ((0.5, 20), (2.0, 18), (3.0, 1), (5.0, 1)):
        for _ in range(repeat):
            counts.add_clip(tone(seconds))
    assert counts.frames_covering(0.95) == (198, 0.95)
    line = written_truncation_lines(counts, "tiny")[0]
    assert line.startswith("20 of 40 clips written (50.0%) are longer than the tiny preset's 1.01 s audio window "
                           "(longest 5.00 s, mean 1.35 s)")
    assert "To read 95.0% of them whole in training, train with --model.audio.max_frames 198 " in line
    from multimodal.training.truncation import SourceLengths

    source = SourceLengths("data.train[0]", counts, samples_read=40, complete=True)
    assert len(truncation_lines([source], min_share=0.49)) == 1 and truncation_lines([source], min_share=0.5) == []


def test_nothing_cut_nothing_said_and_remote_sources_are_not_read(tmp_path, tokenizer):
    spec = write_clips(tmp_path / "short", [(0.5, "a beep"), (1.0, "a longer beep")])
    image_text = SourceSpec(shards=spec, modalities=["image", "text"])  # its samples have no image: none counted
    measured = measure_sources([SourceSpec(shards=spec, modalities=["audio", "text"]), image_text], tiny(), tokenizer)
    assert [(m.counts.clips, m.counts.captions) for m in measured] == [(2, 2), (0, 0)]
    assert truncation_lines(measured) == []
    [remote] = measure_sources([SourceSpec(shards="pipe:false", modalities=["audio", "text"])], tiny(), tokenizer)
    assert not remote.measured and truncation_lines([remote]) == []
    # A model without a text tower counts no caption.
    [no_text] = measure_sources([SourceSpec(shards=spec, modalities=["audio", "text"])], tiny(["audio", "image"]))
    assert (no_text.counts.clips, no_text.counts.captions) == (2, 0)
    assert model_limits(tiny(["text", "image"])).audio is None


def test_shards_command_summarises_what_training_cuts(tmp_path, tokenizer, capsys):
    folder = tmp_path / "voices"
    folder.mkdir()
    for index, (seconds, text) in enumerate([(0.5, caption(3)), (2.0, caption(15)), (5.0, caption(16, 3)),
                                             (1.0, "one line\n" + caption(15, 1))]):
        (folder / f"clip{index}.flac").write_bytes(tone(seconds))
        (folder / f"clip{index}.txt").write_text(text, encoding="utf-8")
    status = main(["shards", "--input", str(folder), "--output", str(tmp_path / "words")])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert status == 0 and "written 4 of 4 samples, skipped 0" in out
    assert ("2 of 4 clips written (50.0%) are longer than the tiny preset's 1.01 s audio window (longest 5.00 s, "
            "mean 2.12 s): training reads a random 1.01 s of each; evaluation reads them whole, as windows. To read "
            "all of them whole in training, train with --model.audio.max_frames 498 --model.audio_preprocess."
            "max_frames 498 (100 frames a second; the audio tower's cost grows with them)") in lines
    # Five captions (the two-line file gives two); three of more than 14 words.
    assert ("at least 3 of 5 captions written (60.0%) are longer than the tiny preset's text context of 16 tokens "
            "(14 caption tokens besides start and end of text): they have more than 14 words (longest 16 words) and "
            "every word is one token or more, so training and evaluation read only the start of each. Count their "
            "tokens with --tokenizer FILE; to read all of them whole, train with --model.text.context_length 18 or "
            "more") in lines

    tokenizer.save(tmp_path / "tokenizer.json")
    status = main(["shards", "--input", str(folder), "--output", str(tmp_path / "tokens"), "--preset", "small",
                   "--tokenizer", str(tmp_path / "tokenizer.json")])
    out, err = capsys.readouterr()
    # The small preset reads 10.26 s and 32 tokens: nothing is cut.
    assert status == 0 and "longer than" not in err


@pytest.mark.parametrize("given, message", [
    ("in", "{path} is a folder without a tokenizer.json"),
    ("missing.json", "no tokenizer file at {path}"),
])
def test_shards_command_refuses_a_tokenizer_it_cannot_read(tmp_path, capsys, given, message):
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["shards", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--tokenizer",
              str(tmp_path / given)])
    assert exit_info.value.code == 2
    assert f"error: argument --tokenizer: {message.format(path=tmp_path / given)}\n" in capsys.readouterr().err
