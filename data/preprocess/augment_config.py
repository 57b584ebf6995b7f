"""Training augmentation levers: :class:`ImageAugmentConfig` and :class:`AudioAugmentConfig`.

A source holds one set per modality (its ``augment.image``, ``augment.audio``), keyed by the
registry in :class:`multimodal.data.pipeline.source_spec.AugmentConfig`.

Every lever is a small dataclass with a probability ``p`` (the share of training
samples it is applied to; 0, the default, switches it off) and the ranges its
parameters are drawn from, uniformly, with the sample's own seeded
``random.Random``. With every ``p`` at 0 a source is read exactly as without
augmentation: no random draw is made, so its crops and captions stay the same.
Evaluation and the inference API never augment.

Images (:mod:`multimodal.data.preprocess.augment_image`), applied in this order to the uint8
training crop (3, S, S): ``affine`` (rotation, scale, shear, translation), ``stroke``
(thicker or thinner strokes), ``resolution`` (downscaled then upscaled back),
``blur`` (Gaussian), ``contrast`` (contrast and brightness), ``invert``.

Audio (:mod:`multimodal.data.preprocess.augment_audio`), applied in this order to the mono
waveform before the filterbank: ``trim`` (quiet ends cut), ``speed`` (tempo and pitch
together), ``tempo`` (duration only), ``pitch`` (pitch only), ``reverb`` (a synthetic
room), ``noise`` (at a random SNR), ``band_limit`` (telephone-like narrowband audio),
``gain``; then, on the log-mel features, ``equalizer`` (a microphone's and a room's
colouring: a tilt and a peak or notch across the bands) and ``spec_augment`` (a band and
a span masked).

Settings are checked when built (so a configuration file with a bad range fails
before training starts); an error names the setting, as in
``augment.audio.noise.snr_db``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

# Noise spectra the noise lever can draw: power falling as 1/f^0 (white), 1/f (pink), 1/f^2 (brown).
NOISE_COLORS = ("white", "pink", "brown")

# The audio levers that act on the log-mel features, after the filterbank; the others act on the waveform.
FEATURE_LEVERS = ("equalizer", "spec_augment")

# Speed, tempo and pitch ratios are rounded to steps of 1/RATIO_STEPS (1%, 17 cents of
# pitch): resampling by k/100 reuses one of a few dozen cached resampling kernels,
# where a fresh ratio every sample would build a kernel every sample.
RATIO_STEPS = 100


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_probability(value: object, where: str) -> None:
    """Raises ValueError unless ``value`` is a number in [0, 1]."""
    if not (_is_number(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{where} must be a probability in [0, 1], got {value!r}")


def check_range(value: object, where: str, low: float, high: float, *, open_low: bool = False) -> None:
    """Raises ValueError unless ``value`` is two numbers ``(a, b)`` with a <= b, both in [low, high].

    ``open_low``: ``low`` itself is not allowed (a scale of 0).
    """
    bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    fits = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(_is_number(v) for v in value)
        and value[0] <= value[1]
        and all((v > low if open_low else v >= low) and v <= high for v in value)
    )
    if not fits:
        raise ValueError(f"{where} must be two numbers [low, high], low <= high, within {bounds}; got {value!r}")


def check_integer(value: object, where: str, low: int) -> None:
    """Raises ValueError unless ``value`` is an integer (not a bool) >= ``low``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{where} must be an integer >= {low}, got {value!r}")


def check_number(value: object, where: str, low: float, high: float) -> None:
    """Raises ValueError unless ``value`` is a number in [low, high]."""
    if not (_is_number(value) and low <= value <= high):
        raise ValueError(f"{where} must be a number in [{low:g}, {high:g}], got {value!r}")


# Images ---------------------------------------------------------------------------------


@dataclass
class AffineAugment:
    """A random affine map about the image centre; uncovered pixels take the image's border colour.

    ``rotation_degrees``: angle in [-r, r] (positive turns counter-clockwise);
    ``scale``: zoom factor range; ``shear_degrees``: horizontal and vertical shear, each
    in [-s, s]; ``translate``: shift in x and y, each in [-t, t] times the side.
    """

    p: float = 0.0
    rotation_degrees: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shear_degrees: float = 10.0
    translate: float = 0.1

    def __post_init__(self) -> None:
        where = "augment.image.affine"
        check_probability(self.p, f"{where}.p")
        check_number(self.rotation_degrees, f"{where}.rotation_degrees", 0.0, 180.0)
        check_range(self.scale, f"{where}.scale", 0.0, 4.0, open_low=True)
        check_number(self.shear_degrees, f"{where}.shear_degrees", 0.0, 45.0)
        check_number(self.translate, f"{where}.translate", 0.0, 0.5)


@dataclass
class StrokeAugment:
    """Thicker or thinner strokes (grey-level dilation or erosion of the ink), for handwriting and drawings.

    ``thickness``: pixels (at the training size) added to the stroke's radius, drawn
    in [low, high]; negative thins. Fractions blend with the next whole radius. The
    ink is the side opposite the border colour: dark ink on a light background is
    thickened by a minimum filter, light ink on dark by a maximum filter. Not meant
    for photographs.
    """

    p: float = 0.0
    thickness: tuple[float, float] = (-0.5, 1.0)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.image.stroke.p")
        check_range(self.thickness, "augment.image.stroke.thickness", -3.0, 3.0)


@dataclass
class ResolutionAugment:
    """Downscaled (antialiased) to a side drawn in [min_size, S] and upscaled back (bicubic).

    What a small or low-resolution image looks like once evaluation has scaled it up
    (an 8 x 8 digit at ``min_size`` 8).
    """

    p: float = 0.0
    min_size: int = 8

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.image.resolution.p")
        check_integer(self.min_size, "augment.image.resolution.min_size", 2)


@dataclass
class BlurAugment:
    """Gaussian blur with a standard deviation drawn in ``sigma`` (pixels at the training size)."""

    p: float = 0.0
    sigma: tuple[float, float] = (0.2, 1.0)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.image.blur.p")
        check_range(self.sigma, "augment.image.blur.sigma", 0.0, 10.0)


@dataclass
class ContrastAugment:
    """``mean + factor * (x - mean) + brightness * 255``, clamped to [0, 255]: faded ink, grey paper, exposure.

    ``mean`` is the image's mean over all pixels and channels; ``factor`` and
    ``brightness`` (a fraction of full scale) are drawn from their ranges.
    """

    p: float = 0.0
    factor: tuple[float, float] = (0.5, 1.2)
    brightness: tuple[float, float] = (-0.1, 0.1)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.image.contrast.p")
        check_range(self.factor, "augment.image.contrast.factor", 0.0, 4.0)
        check_range(self.brightness, "augment.image.contrast.brightness", -1.0, 1.0)


@dataclass
class InvertAugment:
    """``255 - x``: dark ink on light paper becomes light on dark and back.

    For data whose polarity is arbitrary (digits, sketches, scans); it changes what a
    photograph shows, so leave it off there.
    """

    p: float = 0.0

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.image.invert.p")


@dataclass
class ImageAugmentConfig:
    """The image levers, applied in this order to a training crop."""

    affine: AffineAugment = field(default_factory=AffineAugment)
    stroke: StrokeAugment = field(default_factory=StrokeAugment)
    resolution: ResolutionAugment = field(default_factory=ResolutionAugment)
    blur: BlurAugment = field(default_factory=BlurAugment)
    contrast: ContrastAugment = field(default_factory=ContrastAugment)
    invert: InvertAugment = field(default_factory=InvertAugment)

    @property
    def enabled(self) -> bool:
        """Whether any lever is on (p > 0)."""
        return any(getattr(self, f.name).p > 0 for f in fields(self))


# Audio ----------------------------------------------------------------------------------


@dataclass
class TrimAugment:
    """Leading and trailing quiet cut away, leaving a random margin: the clip then holds the sound and little else.

    Quiet is every 10 ms whose power is more than ``threshold_db`` below the loudest 10 ms
    of the clip; ``margin_seconds`` draws how much of it stays on each side. Recordings
    are often trimmed like this (a word spoken into a phone, a cut sample), where
    synthetic or padded training clips always hold silence around the sound. The
    result is never shorter than 0.1 s; a clip with no loud part is left as it is.
    """

    p: float = 0.0
    threshold_db: float = 30.0
    margin_seconds: tuple[float, float] = (0.0, 0.15)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.trim.p")
        check_number(self.threshold_db, "augment.audio.trim.threshold_db", 1.0, 120.0)
        check_range(self.margin_seconds, "augment.audio.trim.margin_seconds", 0.0, 10.0)


@dataclass
class SpeedAugment:
    """Played faster or slower by ``factor`` (resampled): duration / factor, pitch and formants x factor.

    Kaldi's speed perturbation; the factor is rounded to 1% steps.
    """

    p: float = 0.0
    factor: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.speed.p")
        check_range(self.factor, "augment.audio.speed.factor", 0.5, 2.0)


@dataclass
class TempoAugment:
    """Faster or slower by ``factor`` at the same pitch (phase vocoder); rounded to 1% steps."""

    p: float = 0.0
    factor: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.tempo.p")
        check_range(self.factor, "augment.audio.tempo.factor", 0.5, 2.0)


@dataclass
class PitchAugment:
    """Pitch moved by ``semitones`` at the same duration (phase vocoder, then resampled); ratio rounded to 1%."""

    p: float = 0.0
    semitones: tuple[float, float] = (-2.0, 2.0)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.pitch.p")
        check_range(self.semitones, "augment.audio.pitch.semitones", -12.0, 12.0)


@dataclass
class ReverbAugment:
    """A synthetic room: the clip convolved with a direct path plus an exponentially decaying noise tail.

    ``rt60_seconds``: the time the tail takes to fall by 60 dB; ``direct_to_reverb_db``:
    the energy of the direct path over that of the tail. The result keeps the clip's
    length and its RMS level.
    """

    p: float = 0.0
    rt60_seconds: tuple[float, float] = (0.2, 0.8)
    direct_to_reverb_db: tuple[float, float] = (0.0, 12.0)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.reverb.p")
        check_range(self.rt60_seconds, "augment.audio.reverb.rt60_seconds", 0.0, 3.0, open_low=True)
        check_range(self.direct_to_reverb_db, "augment.audio.reverb.direct_to_reverb_db", -30.0, 60.0)


@dataclass
class NoiseAugment:
    """Gaussian noise of a colour drawn from ``colors`` at an SNR drawn in ``snr_db``.

    The SNR is the clip's mean power (silence included) over the noise's.
    """

    p: float = 0.0
    snr_db: tuple[float, float] = (5.0, 40.0)
    colors: tuple[str, ...] = NOISE_COLORS

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.noise.p")
        check_range(self.snr_db, "augment.audio.noise.snr_db", -20.0, 100.0)
        self.colors = tuple(self.colors)
        unknown = [c for c in self.colors if c not in NOISE_COLORS]
        if not self.colors or unknown:
            raise ValueError(
                f"augment.audio.noise.colors must be one or more of {list(NOISE_COLORS)}, got {list(self.colors)}"
            )


@dataclass
class BandLimitAugment:
    """Narrowband audio, as a telephone line carries it.

    Band-passed (full level between ``highpass_hz`` and ``lowpass_hz``, capped at half
    the narrow rate, raised-cosine slopes to nothing below half ``highpass_hz`` and above
    half the narrow rate), resampled down to a rate drawn from ``sample_rates``, there
    companded to 8-bit mu-law (G.711) with ``mu_law``, and resampled back as the loader
    reads a recording made at that rate. The defaults are the telephone band,
    300-3400 Hz at 8 kHz; ``highpass_hz`` 0 keeps the low end.

    A rate at or above the model's sample rate has nothing to remove: training refuses it.
    """

    p: float = 0.0
    sample_rates: tuple[int, ...] = (8000,)
    highpass_hz: float = 300.0
    lowpass_hz: float = 3400.0
    mu_law: bool = True

    def __post_init__(self) -> None:
        where = "augment.audio.band_limit"
        check_probability(self.p, f"{where}.p")
        self.sample_rates = tuple(self.sample_rates)
        if not self.sample_rates or not all(
            isinstance(rate, int) and not isinstance(rate, bool) and rate >= 1000 for rate in self.sample_rates
        ):
            raise ValueError(f"{where}.sample_rates must be one or more integer rates >= 1000 Hz, "
                             f"got {list(self.sample_rates)}")
        top = min(self.sample_rates) / 2
        check_number(self.highpass_hz, f"{where}.highpass_hz", 0.0, top)
        if not (_is_number(self.lowpass_hz) and self.highpass_hz < self.lowpass_hz):
            raise ValueError(f"{where}.lowpass_hz must be a number above highpass_hz ({self.highpass_hz:g}), "
                             f"got {self.lowpass_hz!r}")
        if not isinstance(self.mu_law, bool):
            raise ValueError(f"{where}.mu_law must be true or false, got {self.mu_law!r}")


@dataclass
class GainAugment:
    """The level changed by a gain drawn in ``db`` (no clipping: the features are log energies)."""

    p: float = 0.0
    db: tuple[float, float] = (-12.0, 6.0)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.gain.p")
        check_range(self.db, "augment.audio.gain.db", -60.0, 60.0)


@dataclass
class EqualizerAugment:
    """A microphone's and a room's colouring, on the log-mel features: a gain per mel band.

    The gain in dB across the bands is a straight tilt drawn in ``tilt_db`` (the top band
    minus the bottom one: negative dulls, positive brightens) plus one bell-shaped peak
    (or notch, below 0) drawn in ``peak_db``, centred on a band drawn at random, with a
    standard deviation drawn in ``peak_width`` (a fraction of the bands). Adding dB to a
    band's log energy is filtering by a smooth frequency response, at the cost of one add
    per band: recordings differ from each other in this far more than in content.
    """

    p: float = 0.0
    tilt_db: tuple[float, float] = (-12.0, 12.0)
    peak_db: tuple[float, float] = (-8.0, 8.0)
    peak_width: tuple[float, float] = (0.05, 0.25)

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.equalizer.p")
        check_range(self.tilt_db, "augment.audio.equalizer.tilt_db", -60.0, 60.0)
        check_range(self.peak_db, "augment.audio.equalizer.peak_db", -60.0, 60.0)
        check_range(self.peak_width, "augment.audio.equalizer.peak_width", 0.0, 10.0, open_low=True)


@dataclass
class SpecAugmentLever:
    """SpecAugment on the training features, after the filterbank: one band of mel bins and one span of
    frames set to the data set's mean (0 after normalisation).

    Widths are drawn in [0, ``freq_mask``] mel bins and [0, ``time_mask``] frames (torchaudio's
    masking rule); a width of 0 turns that mask off. Cheap (two slices set to 0), and what
    AST and speech recognisers train with so that no single band or moment carries a class.
    """

    p: float = 0.0
    freq_mask: int = 8
    time_mask: int = 10

    def __post_init__(self) -> None:
        check_probability(self.p, "augment.audio.spec_augment.p")
        check_integer(self.freq_mask, "augment.audio.spec_augment.freq_mask", 0)
        check_integer(self.time_mask, "augment.audio.spec_augment.time_mask", 0)


@dataclass
class AudioAugmentConfig:
    """The audio levers: the waveform levers in this order, then ``equalizer`` and ``spec_augment`` on the features."""

    trim: TrimAugment = field(default_factory=TrimAugment)
    speed: SpeedAugment = field(default_factory=SpeedAugment)
    tempo: TempoAugment = field(default_factory=TempoAugment)
    pitch: PitchAugment = field(default_factory=PitchAugment)
    reverb: ReverbAugment = field(default_factory=ReverbAugment)
    noise: NoiseAugment = field(default_factory=NoiseAugment)
    band_limit: BandLimitAugment = field(default_factory=BandLimitAugment)
    gain: GainAugment = field(default_factory=GainAugment)
    equalizer: EqualizerAugment = field(default_factory=EqualizerAugment)
    spec_augment: SpecAugmentLever = field(default_factory=SpecAugmentLever)

    @property
    def enabled(self) -> bool:
        """Whether any lever is on (p > 0)."""
        return any(getattr(self, f.name).p > 0 for f in fields(self))

    @property
    def waveform_enabled(self) -> bool:
        """Whether any lever that acts on the waveform (all but the feature levers) is on."""
        return any(getattr(self, f.name).p > 0 for f in fields(self) if f.name not in FEATURE_LEVERS)

    def check_sample_rate(self, sample_rate: int, where: str = "augment.audio") -> None:
        """Raises ValueError when ``band_limit`` is on with a rate that removes nothing at ``sample_rate``."""
        if self.band_limit.p > 0 and max(self.band_limit.sample_rates) >= sample_rate:
            raise ValueError(
                f"{where}.band_limit.sample_rates {list(self.band_limit.sample_rates)} must all be below the "
                f"model's audio sample rate ({sample_rate} Hz) to remove anything; lower them or set p to 0"
            )


__all__ = [
    "AffineAugment",
    "AudioAugmentConfig",
    "BandLimitAugment",
    "BlurAugment",
    "ContrastAugment",
    "EqualizerAugment",
    "FEATURE_LEVERS",
    "GainAugment",
    "ImageAugmentConfig",
    "InvertAugment",
    "NOISE_COLORS",
    "NoiseAugment",
    "PitchAugment",
    "RATIO_STEPS",
    "ResolutionAugment",
    "ReverbAugment",
    "SpecAugmentLever",
    "SpeedAugment",
    "StrokeAugment",
    "TempoAugment",
    "TrimAugment",
    "check_integer",
    "check_number",
    "check_probability",
    "check_range",
]
