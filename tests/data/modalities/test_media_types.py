"""One definition of an image file and an audio file: every reader and writer agrees, GIF included.

Each extension a definition registers is tried with a file generated in its format.
"""
import io

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from multimodal.cli import main
from multimodal.data.preprocess.audio_features import load_waveform
from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig, ImagePreprocessConfig
from multimodal.data.preprocess.image_transforms import decode_image
from multimodal.data.writing.listing import samples_from_folder
from multimodal.data.modalities.registry import MEDIA_MODALITIES, get_modality, modality_of_extension, normalize_extension
from multimodal.data.pipeline.sample_fields import SampleFields
from multimodal.data.pipeline.shard_reader import read_shard
from multimodal.apps.embedding import file_modality, list_inputs
from multimodal.apps.search.media import MediaReader, media_type


@pytest.mark.parametrize(
    "extension, modality",
    [("png", "image"), (".JPEG", "image"), ("gif", "image"), (".webp", "image"), ("wav", "audio"), (".MP3", "audio"),
     ("svg", None), ("bmp", None), ("txt", None), ("", None)],
)
def test_modality_of_extension(extension, modality):
    assert modality_of_extension(extension) == modality


def test_normalize_extension_folds_spellings():
    assert normalize_extension(".JPEG") == "jpg" and normalize_extension("Png") == "png"


IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}
AUDIO_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16"), "ogg": ("OGG", "VORBIS"),
                 "mp3": ("MP3", "MPEG_LAYER_III")}
COLOUR = (200, 40, 90)
TONE_HZ, RATE, SECONDS = 440.0, 16000, 0.5


def generated_file(extension: str) -> bytes:
    """A file of ``extension``'s format: a 16 x 16 image of COLOUR, or half a second of a 440 Hz tone."""
    buffer = io.BytesIO()
    if extension in IMAGE_FORMATS:
        Image.new("RGB", (16, 16), COLOUR).save(buffer, format=IMAGE_FORMATS[extension])
    else:
        container, subtype = AUDIO_FORMATS[extension]
        time = np.arange(int(RATE * SECONDS)) / RATE
        soundfile.write(buffer, 0.5 * np.sin(2 * np.pi * TONE_HZ * time), RATE, format=container, subtype=subtype)
    return buffer.getvalue()


REGISTERED = [(name, extension) for name in MEDIA_MODALITIES for extension in get_modality(name).extensions]


def test_every_registered_extension_has_a_file_to_test_it_with():
    """A new extension in a definition needs a generator above, so that the test below reads a file of it."""
    assert sorted(extension for _, extension in REGISTERED) == sorted({**IMAGE_FORMATS, **AUDIO_FORMATS})


@pytest.mark.parametrize("name, extension", REGISTERED)
def test_a_file_of_each_registered_extension_is_listed_found_decoded_and_served(tmp_path, name, extension):
    data = generated_file(extension)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / f"clip.{extension}").write_bytes(data)
    (folder / "clip.txt").write_text("a caption", encoding="utf-8")
    (tmp_path / "unnamed").write_bytes(data)
    definition = get_modality(name)

    # Every command takes it: by its name, and by its content when the name has no extension.
    assert file_modality(folder / f"clip.{extension}") == name and file_modality(tmp_path / "unnamed") == name
    [listed] = samples_from_folder(folder, layout="captions")
    assert list(listed.media) == [normalize_extension(extension)] and listed.ignored == ()
    # A shard member of that extension is found by a source's default keys.
    assert SampleFields().member({"__key__": "clip", extension: data, "txt": b"a caption"}, name) == data

    if name == "image":
        assert media_type(extension) == Image.open(io.BytesIO(data)).get_format_mimetype()
        decoded = definition.check_decodes(data, background=(0, 0, 0))  # uint8 (3, 16, 16)
        assert decoded.shape == (3, 16, 16)
        assert (decoded.float() - torch.tensor(COLOUR).view(3, 1, 1)).abs().max() <= 6  # JPEG and GIF are lossy
        # Evaluation's centre crop of the whole square is the square.
        crop = definition.load_member(data, ImagePreprocessConfig(image_size=16), train=False, rng=None, levers=None)
        assert torch.equal(crop["image"], decoded)
    else:
        assert media_type(extension).startswith("audio/")
        definition.check_decodes(data, background=(0, 0, 0))
        config = AudioPreprocessConfig(sample_rate=RATE)
        [window] = definition.load_member(data, config, train=False, rng=None, levers=None)["audio"]
        assert window.shape[1] == config.num_mel_bins and window.shape[0] >= 48  # 10 ms frames of half a second
        waveform = load_waveform(data, config)  # (samples,)
        # Decoders may add an encoder's delay (MP3), never lose the tone: its length and pitch hold.
        assert RATE * SECONDS <= len(waveform) <= RATE * (SECONDS + 0.1)
        spectrum = torch.fft.rfft(waveform).abs()
        assert float(spectrum.argmax()) * RATE / len(waveform) == pytest.approx(TONE_HZ, abs=RATE / len(waveform))


def gif_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="GIF")
    return buffer.getvalue()


def test_a_gif_in_a_folder_is_written_to_shards_and_read_back(tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    data = gif_bytes((255, 0, 0))
    (folder / "red.gif").write_bytes(data)
    (folder / "red.txt").write_text("a red square", encoding="utf-8")
    assert file_modality(folder / "red.gif") == "image"
    assert [item.key for item in list_inputs("image", [folder])] == [str(folder / "red.gif")]

    assert main(["shards", "--input", str(folder), "--output", str(tmp_path / "shards")]) == 0
    capsys.readouterr()
    shards = sorted((tmp_path / "shards").rglob("*.tar"))
    problems = []
    samples = [sample for shard in shards for sample in read_shard(str(shard), problems)]
    assert problems == [] and len(samples) == 1
    sample = samples[0]
    assert sample["gif"] == data  # written as it was

    # Training's default fields find it, and it decodes to the red square.
    fields = SampleFields()
    assert fields.member(sample, "image") == data
    assert fields.captions(sample) == ["a red square"]
    image = decode_image(data)
    assert image.shape == (3, 8, 8) and torch.equal(image[:, 0, 0], torch.tensor([255, 0, 0], dtype=torch.uint8))

    # Serving reads it from the shard too.
    reader = MediaReader("image")
    try:
        assert reader.read(sample["__key__"], str(shards[0])) == (data, "image/gif")
        assert reader.read("red", str(folder / "red.gif")) == (data, "image/gif")
    finally:
        reader.close()
