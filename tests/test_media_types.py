"""One definition of an image file and an audio file: every reader and writer agrees, GIF included."""
import io

import pytest
import torch
from PIL import Image

from multimodal.cli import main
from multimodal.data.image import decode_image
from multimodal.data.listing import READ_EXTENSIONS
from multimodal.data.modalities import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    MEDIA_TYPES,
    modality_of_extension,
    normalize_extension,
)
from multimodal.data.sample_fields import AUDIO_KEYS, IMAGE_KEYS, SampleFields, parse_keys
from multimodal.data.shards import read_shard
from multimodal.embed import file_modality, list_inputs
from multimodal.search.media import MediaReader, media_type


@pytest.mark.parametrize(
    "extension, modality",
    [("png", "image"), (".JPEG", "image"), ("gif", "image"), (".webp", "image"), ("wav", "audio"), (".MP3", "audio"),
     ("svg", None), ("bmp", None), ("txt", None), ("", None)],
)
def test_modality_of_extension(extension, modality):
    assert modality_of_extension(extension) == modality


def test_normalize_extension_folds_spellings():
    assert normalize_extension(".JPEG") == "jpg" and normalize_extension("Png") == "png"


def test_every_place_reads_the_same_extensions():
    assert [key for _, key in parse_keys(IMAGE_KEYS)] == list(IMAGE_EXTENSIONS)
    assert [key for _, key in parse_keys(AUDIO_KEYS)] == list(AUDIO_EXTENSIONS)
    assert set(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS) <= set(READ_EXTENSIONS)
    assert set(MEDIA_TYPES) == set(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)
    assert media_type("GIF") == "image/gif"


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
