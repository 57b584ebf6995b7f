"""Audio preprocessing: bytes -> waveform -> mono -> resample -> crop -> log-mel frames (T, F).

One implementation for training, evaluation and the inference API: each step is a
plain function of tensors, usable on a single file outside any pipeline.

The features are Kaldi-compatible log-mel filterbanks, as AST computes them with
``torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=sr,
use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
frame_shift=10)``, then normalised as ``(x - norm_mean) / (2 * norm_std)``.
:func:`fbank` computes the same numbers as that call (a test holds them equal)
with fewer passes over the frames and its window and mel matrix cached.

Lengths: a clip yields its true number of frames (or ``min_frames``, when shorter:
see below), never padded to a window here; collation pads a batch and marks the
padding in ``audio_padding_mask``, so a clip's features are the same alone or batched.

- Training (:func:`train_audio_features`): a random crop of ``max_frames`` worth of
  samples when the clip is longer; shorter clips are kept whole. SpecAugment's masks
  (:func:`mask_features`) are a training lever, applied after this
  (:mod:`multimodal.data.preprocess.augment_audio`).
- Evaluation (:func:`eval_audio_windows`): the whole clip, cut into windows of
  ``max_frames`` frames. The windows start at 0, max_frames, 2 * max_frames ...;
  when the clip does not divide evenly, the last window is taken to *end at the
  clip's end* (it overlaps the one before it) so every window of a long clip is
  full length. A clip no longer than ``max_frames`` is one window of its own length.

Too short and empty clips, one rule (:func:`fit_clip_length`) for every path that
feeds an encoder (training and evaluation on shards, the inference API and every
command): a clip shorter than the encoder's fewest frames (one spectrogram patch along
time, ``config.min_frames``) is padded at its end with silence up to that many frames,
so it is embedded from its own sound whether it is alone or batched with longer clips;
a clip with no samples at all is refused with :data:`EMPTY_CLIP`.
"""
from __future__ import annotations

import functools
import io
import math
import random
from fractions import Fraction

import numpy as np
import soundfile
import torch
import torchaudio

from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig
from multimodal.data.preprocess.wav import read_pcm_wav

# Kaldi's filterbank settings that AST uses; those not in AudioPreprocessConfig are fixed here.
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
EPSILON = torch.finfo(torch.float32).eps  # Kaldi floors mel energies at float epsilon before the log


# Integer PCM is read as integers and scaled here: libsndfile's own conversion to float
# is slower and gives the same numbers, since the scales are powers of two (a test
# checks every PCM subtype; ``python -m bench audio`` times the decoding).
_INTEGER_READS = {
    "PCM_S8": ("int16", 2.0**-15),
    "PCM_U8": ("int16", 2.0**-15),
    "PCM_16": ("int16", 2.0**-15),
    "PCM_24": ("int32", 2.0**-31),
    "PCM_32": ("int32", 2.0**-31),
}


def decode_audio(data: bytes) -> tuple[torch.Tensor, int]:
    """Decodes an audio file's bytes (wav, flac, ogg, mp3, ...) with soundfile.

    Returns ``(waveform, sample_rate)``: waveform float32 (channels, samples) in [-1, 1]
    for integer formats. Raises ValueError when the bytes do not decode or the
    samples are not finite. Integer-PCM WAV is read directly (:mod:`multimodal.data.preprocess.wav`),
    with the same numbers as libsndfile gives.
    """
    plain_wav = read_pcm_wav(data)
    if plain_wav is not None:
        samples, sample_rate = plain_wav
        return torch.from_numpy(np.ascontiguousarray(samples.T)), sample_rate  # (C, N)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            sample_rate = sound.samplerate
            integer = _INTEGER_READS.get(sound.subtype)
            if integer is None:
                samples = sound.read(dtype="float32", always_2d=True)  # (N, C)
            else:
                dtype, scale = integer
                samples = sound.read(dtype=dtype, always_2d=True).astype(np.float32)  # (N, C)
                samples *= np.float32(scale)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as error:
        # libsndfile's own words ("Format not recognised."), without the repr of the in-memory file it opened.
        reason = getattr(error, "error_string", None) or str(error)
        raise ValueError(f"cannot decode audio ({len(data)} bytes): {reason}") from error
    if integer is None and not np.isfinite(samples).all():
        raise ValueError("decoded audio holds NaN or infinite samples")
    return torch.from_numpy(samples.T.copy()), int(sample_rate)  # (C, N)


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """(channels, samples) or (samples,) -> (samples,): the mean over channels."""
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise ValueError(f"expected a waveform (channels, samples) or (samples,), got shape {tuple(waveform.shape)}")
    return waveform[0] if waveform.shape[0] == 1 else waveform.mean(dim=0)


# torchaudio's sinc resampler works on the reduced ratio orig/gcd : new/gcd and costs
# (orig/gcd + filter width) multiply-adds per output sample: 441 + 34 for 44.1 kHz ->
# 16 kHz, but 11,127 + 14 for 11,127 Hz, whose ratio to 16 kHz does not reduce. Reduced
# input rates above this bound (common rates reduce to at most 441) are replaced by the
# nearest ratio whose reduced input rate is within it; see resampling_ratio.
MAX_REDUCED_RATE = 1000
# An approximated ratio is the one with the smallest reduced input rate within this
# relative error of the true one, when one exists under MAX_REDUCED_RATE.
RATIO_TOLERANCE = 1e-5


@functools.lru_cache(maxsize=256)
def resampling_ratio(orig_freq: int, new_freq: int) -> tuple[int, int]:
    """The rates ``(orig, new)`` the sinc filter runs at to resample ``orig_freq`` -> ``new_freq``.

    The exact reduced ratio ``(orig_freq / g, new_freq / g)``, g their gcd, when the
    reduced input rate is at most ``MAX_REDUCED_RATE`` (every common rate: 8, 11.025,
    16, 22.05, 32, 44.1, 48, 96 kHz and more, so those give torchaudio's numbers).
    Otherwise an approximation ``(q, p)`` with ``p / q`` close to ``new_freq / orig_freq``:
    the smallest ``q`` whose relative error is within ``RATIO_TOLERANCE``, else the best
    ``q <= MAX_REDUCED_RATE`` (``Fraction.limit_denominator``).

    The relative error of the ratio is the output's pitch and tempo error: at most
    1e-5 (0.02 cent; 0.1 ms in 10 s) where a reduced input rate up to the bound reaches
    it (11,127 and 22,254 Hz into 16 kHz do), and below 6e-4 (under 1 cent, where people
    tell pitches apart from about 5 cents) for every integer rate from 4 to 192 kHz
    into 8, 16, 22.05, 24, 32, 44.1 or 48 kHz. A test checks a sample of those rates;
    for all of them, compare every rate's error as the test does.
    """
    divisor = math.gcd(orig_freq, new_freq)
    if orig_freq // divisor <= MAX_REDUCED_RATE:
        return orig_freq // divisor, new_freq // divisor
    for reduced_orig in range(1, MAX_REDUCED_RATE + 1):
        reduced_new = round(reduced_orig * new_freq / orig_freq)
        # |(p / q) / (new / orig) - 1| <= tolerance, in integers: |p * orig - q * new| <= tolerance * q * new
        if reduced_new > 0 and abs(reduced_new * orig_freq - reduced_orig * new_freq) <= RATIO_TOLERANCE * reduced_orig * new_freq:
            return reduced_orig, reduced_new
    best = Fraction(new_freq, orig_freq).limit_denominator(MAX_REDUCED_RATE)
    if best.numerator == 0:  # a reduction by more than 2,000x: no bounded ratio is close, run the exact one
        return orig_freq // divisor, new_freq // divisor
    return best.denominator, best.numerator


# Frame values per matrix product of the resampler (131,072 float32: 512 KiB).
_RESAMPLE_CHUNK_VALUES = 1 << 17


class _SincResampler:
    """torchaudio's resampler (``torchaudio.transforms.Resample``), its strided convolution done as a matrix product.

    torchaudio convolves the padded clip with a ``(new, 1, 2 * width + orig)`` kernel at
    stride ``orig`` (reduced rates): output frame m, phase j is
    ``sum_k kernel[j, k] * padded[m * orig + k]``. At stride 2 and more, PyTorch's
    one-channel strided convolution is a slow path on CPU: the frames as a strided view
    times the kernel as a (taps, new) matrix give the same sums faster (measured on one
    thread against torchaudio's module: 2.4x for 16 -> 8 kHz, 1.6-1.8x for the speed
    lever's 93:100 and 107:100 on 1 s clips, 1.1x for 44.1 and 48 kHz to 16 kHz on 10 s
    clips). Stride 1 (upsampling by a whole factor) stays a convolution, as torchaudio
    runs it: there the frames overlap in all but one sample.
    """

    def __init__(self, orig_freq: int, new_freq: int) -> None:
        """``orig_freq`` and ``new_freq``: the reduced rates (no common divisor)."""
        module = torchaudio.transforms.Resample(orig_freq, new_freq)
        self.orig_freq, self.new_freq, self.width = orig_freq, new_freq, module.width
        self.kernel = module.kernel  # (new, 1, 2 * width + orig)

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """(..., N) float -> (..., ceil(N * new / orig)), in the waveform's dtype."""
        length = waveform.shape[-1]
        rows = waveform.reshape(math.prod(waveform.shape[:-1]), length)  # (B, N)
        padded = torch.nn.functional.pad(rows, (self.width, self.width + self.orig_freq))
        kernel = self.kernel.to(rows.dtype)
        if self.orig_freq == 1:
            resampled = torch.nn.functional.conv1d(padded[:, None], kernel).transpose(1, 2)  # (B, M, new)
        else:
            frames = padded.unfold(-1, kernel.shape[-1], self.orig_freq)  # (B, M, taps) view, M = N // orig + 1
            taps_by_phase = kernel[:, 0].T  # (taps, new)
            resampled = rows.new_empty(frames.shape[0], frames.shape[1], self.new_freq)  # (B, M, new)
            # The product copies the overlapping frames out of the view; a chunk at a time
            # that copy stays in cache (a 10 s clip at 48 kHz in one piece took about twice as long).
            chunk = max(1, _RESAMPLE_CHUNK_VALUES // kernel.shape[-1])
            for row in range(frames.shape[0]):
                for start in range(0, frames.shape[1], chunk):
                    torch.mm(frames[row, start : start + chunk], taps_by_phase,
                             out=resampled[row, start : start + chunk])
        target = resampled_length(length, self.orig_freq, self.new_freq)
        return resampled.flatten(1)[:, :target].reshape(*waveform.shape[:-1], target)


@functools.lru_cache(maxsize=64)
def _resampler(orig_freq: int, new_freq: int) -> _SincResampler:
    # Built once per rate pair: the kernel costs more than a clip's resampling.
    # 64 rate pairs: speed and pitch augmentation use a few dozen (ratios in 1% steps,
    # see multimodal.data.preprocess.augment_audio) beside the data's own rates.
    return _SincResampler(orig_freq, new_freq)


def resampled_length(num_samples: int, orig_freq: int, new_freq: int) -> int:
    """Samples after resampling ``num_samples``: ``ceil(num_samples * new_freq / orig_freq)``, as torchaudio counts."""
    return -(-num_samples * new_freq // orig_freq)


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Band-limited sinc resampling of (..., samples) -> (..., resampled_length), at the same cost for any rate.

    torchaudio's resampler (``torchaudio.functional.resample`` with its default Hann-windowed
    sinc filter) at the rates :func:`resampling_ratio` gives, its kernel cached per rate
    pair. For the common rates that is the exact ratio and the result equals torchaudio's;
    for rates whose ratio does not reduce (11,127 Hz -> 16 kHz) it is a close ratio with a
    small reduced input rate, so the cost stays that of 44.1 kHz instead of growing with
    the rate. Either way the output has ``ceil(samples * new_freq / orig_freq)`` samples.
    """
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq == new_freq:
        return waveform
    reduced_orig, reduced_new = resampling_ratio(orig_freq, new_freq)
    divisor = math.gcd(orig_freq, new_freq)
    with torch.no_grad():
        if (reduced_orig, reduced_new) == (orig_freq // divisor, new_freq // divisor):
            return _resampler(reduced_orig, reduced_new)(waveform)
        num_samples = waveform.shape[-1]
        target = resampled_length(num_samples, orig_freq, new_freq)
        # The close ratio gives a length off by up to the ratio's relative error: a few
        # more input zeros (as torchaudio pads the end with anyway) make it long enough to cut.
        shortfall = target - resampled_length(num_samples, reduced_orig, reduced_new)
        extra = max(0, math.ceil(shortfall * reduced_orig / reduced_new) + 1)
        padded = torch.nn.functional.pad(waveform, (0, extra)) if extra else waveform
        return _resampler(reduced_orig, reduced_new)(padded)[..., :target]


def load_waveform(
    data: bytes | torch.Tensor, config: AudioPreprocessConfig, sample_rate: int | None = None
) -> torch.Tensor:
    """Bytes or a waveform tensor -> mono float32 (samples,) at ``config.sample_rate``.

    A tensor must be (samples,) or (channels, samples) with its ``sample_rate`` given.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        waveform, sample_rate = decode_audio(bytes(data))
    elif isinstance(data, torch.Tensor):
        if sample_rate is None:
            raise ValueError("a waveform tensor needs its sample_rate")
        waveform = data.to(torch.float32)
    else:
        raise TypeError(f"expected audio bytes or a waveform tensor, got {type(data).__name__}")
    check_has_samples(waveform)
    return resample(to_mono(waveform), sample_rate, config.sample_rate)


# What every path says of a clip with no samples (a WAV header and nothing after it):
# callers put the file or query in front of it.
EMPTY_CLIP = "the clip holds no audio samples"


def check_has_samples(waveform: torch.Tensor) -> None:
    """Raises ValueError(:data:`EMPTY_CLIP`) for a waveform with no samples (or no channels)."""
    if waveform.numel() == 0:
        raise ValueError(EMPTY_CLIP)


def fit_clip_length(waveform: torch.Tensor, config: AudioPreprocessConfig, min_frames: int) -> torch.Tensor:
    """The one length rule for a clip going to an encoder: mono (samples,) -> (max(samples, S),).

    ``min_frames``: the fewest frames the encoder takes (its patch length along time).
    A clip shorter than the S = ``samples_for_frames(min_frames)`` samples those frames
    need is padded at its end with zeros (silence) up to S; a longer one is returned as
    it is. Padding the samples, not the frames, makes a padded clip's features those of
    the clip followed by silence, computed like any other clip's. A clip with no
    samples raises ValueError(:data:`EMPTY_CLIP`): there is nothing to embed.
    """
    check_has_samples(waveform)
    if min_frames < 1:
        raise ValueError(f"min_frames must be at least 1, got {min_frames}")
    shortfall = samples_for_frames(min_frames, config) - waveform.shape[-1]
    return torch.nn.functional.pad(waveform, (0, shortfall)) if shortfall > 0 else waveform


# Filterbank ----------------------------------------------------------------------------


def frame_geometry(config: AudioPreprocessConfig) -> tuple[int, int, int]:
    """(window_size, window_shift, fft_size) in samples, computed as Kaldi does."""
    window_size = int(config.sample_rate * config.frame_length_ms * 0.001)
    window_shift = int(config.sample_rate * config.frame_shift_ms * 0.001)
    fft_size = 1 if window_size == 0 else 2 ** (window_size - 1).bit_length()
    return window_size, window_shift, fft_size


def num_frames(num_samples: int, config: AudioPreprocessConfig) -> int:
    """Frames Kaldi makes from ``num_samples`` (snip_edges: only frames that fit entirely)."""
    window_size, window_shift, _ = frame_geometry(config)
    return 0 if num_samples < window_size else 1 + (num_samples - window_size) // window_shift


def samples_for_frames(frames: int, config: AudioPreprocessConfig) -> int:
    """The fewest samples that give ``frames`` frames."""
    window_size, window_shift, _ = frame_geometry(config)
    return window_size + (frames - 1) * window_shift


# Mel bins per block of the banded mel product (see _MelBands); 16 was fastest of 8, 16 and 32.
_MEL_BLOCK = 16


class _MelBands:
    """Kaldi's mel matrix as dense blocks of consecutive mel bins over the FFT bins they touch.

    Each triangular filter covers a few neighbouring FFT bins, so the dense (K, F)
    matrix is over 98% zeros (504 non-zeros of 32,896 for 128 bins at 512 points).
    Groups of ``_MEL_BLOCK`` bins use a contiguous run of FFT bins; multiplying the
    power spectrum by those blocks only does the same sums without the zero terms
    (``python -m bench data`` compares the filterbank with ``kaldi.fbank``).
    """

    def __init__(self, mel_matrix: torch.Tensor) -> None:
        """``mel_matrix``: (K, F), K = fft_size // 2 + 1 FFT bins, F mel bins."""
        self.num_mel_bins = mel_matrix.shape[1]
        # (first mel bin, end mel bin, first FFT bin, end FFT bin, block (end - first FFT, end - first mel))
        self.blocks: list[tuple[int, int, int, int, torch.Tensor]] = []
        for first in range(0, self.num_mel_bins, _MEL_BLOCK):
            end = min(first + _MEL_BLOCK, self.num_mel_bins)
            used = mel_matrix[:, first:end].ne(0).any(dim=1).nonzero().flatten()
            low, high = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
            self.blocks.append((first, end, low, high, mel_matrix[low:high, first:end].contiguous()))

    def apply(self, power: torch.Tensor) -> torch.Tensor:
        """Power spectrum (T, K) -> mel energies (T, F)."""
        mel = power.new_empty(power.shape[0], self.num_mel_bins)  # (T, F)
        for first, end, low, high, block in self.blocks:
            if high > low:
                torch.mm(power[:, low:high], block, out=mel[:, first:end])
            else:  # only empty filters in this group (Kaldi makes them below ~100 Hz with many bins)
                mel[:, first:end] = 0.0
        return mel


@functools.lru_cache(maxsize=8)
def _filterbank_constants(
    sample_rate: int, num_mel_bins: int, window_size: int, fft_size: int
) -> tuple[torch.Tensor, _MelBands]:
    """The Hann window (window_size,) and the banded mel matrix over fft_size // 2 + 1 bins."""
    window = torch.hann_window(window_size, periodic=False, dtype=torch.float32)
    mel_banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
        num_mel_bins, fft_size, float(sample_rate), LOW_FREQ, 0.0, 100.0, -500.0, 1.0
    )  # (F, fft_size // 2): Kaldi leaves the Nyquist bin out
    mel_matrix = torch.nn.functional.pad(mel_banks.to(torch.float32), (0, 1)).T  # (fft_size // 2 + 1, F)
    return window, _MelBands(mel_matrix)


def fbank(waveform: torch.Tensor, config: AudioPreprocessConfig) -> torch.Tensor:
    """Kaldi log-mel filterbank (T, F) of a mono waveform (samples,) at ``config.sample_rate``.

    Equal (to float32 rounding) to ``kaldi.fbank(waveform[None], htk_compat=True,
    sample_frequency=sr, use_energy=False, window_type="hanning", num_mel_bins=F,
    dither=0.0, frame_length=..., frame_shift=...)``: per-frame DC removal,
    pre-emphasis 0.97, symmetric Hann window, zero-padded power-of-two FFT, power
    spectrum, Kaldi's triangular mel banks from 20 Hz to Nyquist, log floored at
    float epsilon. Raises ValueError for a clip shorter than one frame.
    """
    if waveform.ndim != 1:
        raise ValueError(f"fbank expects a mono waveform (samples,), got shape {tuple(waveform.shape)}")
    window_size, window_shift, fft_size = frame_geometry(config)
    if waveform.shape[0] < window_size:
        raise ValueError(
            f"audio of {waveform.shape[0]} samples is shorter than one {config.frame_length_ms} ms frame "
            f"({window_size} samples at {config.sample_rate} Hz)"
        )
    window, mel_bands = _filterbank_constants(config.sample_rate, config.num_mel_bins, window_size, fft_size)
    waveform = waveform.to(torch.float32)
    frames = waveform.unfold(0, window_size, window_shift)  # (T, W) view
    frames = frames - frames.mean(dim=1, keepdim=True)  # (T, W)
    # Pre-emphasis with Kaldi's edge rule: the first sample is its own predecessor.
    emphasised = torch.empty_like(frames)
    torch.sub(frames[:, 1:], frames[:, :-1], alpha=PREEMPHASIS, out=emphasised[:, 1:])
    torch.mul(frames[:, :1], 1.0 - PREEMPHASIS, out=emphasised[:, :1])
    emphasised.mul_(window)
    spectrum = torch.fft.rfft(emphasised, n=fft_size)  # (T, fft_size // 2 + 1) complex
    # Squaring the (real, imaginary) pairs in one contiguous pass and adding the halves
    # beats .abs() (a square root) and a sum over the size-2 axis (slow on CPU).
    squares = torch.view_as_real(spectrum).square_()  # (T, fft_size // 2 + 1, 2)
    power = squares[..., 0] + squares[..., 1]  # (T, fft_size // 2 + 1)
    return mel_bands.apply(power).clamp_min_(EPSILON).log_()


def kaldi_fbank(waveform: torch.Tensor, config: AudioPreprocessConfig) -> torch.Tensor:
    """The reference: ``torchaudio.compliance.kaldi.fbank`` with AST's settings, (samples,) -> (T, F)."""
    return torchaudio.compliance.kaldi.fbank(
        waveform[None].to(torch.float32),
        htk_compat=True,
        sample_frequency=float(config.sample_rate),
        use_energy=False,
        window_type="hanning",
        num_mel_bins=config.num_mel_bins,
        dither=0.0,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
    )


def normalize_fbank(features: torch.Tensor, config: AudioPreprocessConfig) -> torch.Tensor:
    """AST's normalisation, in place: ``(x - norm_mean) / (2 * norm_std)``."""
    return features.sub_(config.norm_mean).div_(2.0 * config.norm_std)


def mask_features(features: torch.Tensor, freq_mask: int, time_mask: int, rng: random.Random) -> torch.Tensor:
    """SpecAugment in place on normalised frames (T, F): one band of mel bins and one span of frames set to 0.

    Widths are drawn uniformly from [0, ``freq_mask``) mel bins and [0, ``time_mask``) frames
    (torchaudio's masking rule), the band first; 0 after normalisation is the data set's
    mean. A widest width of 0 turns that mask off and draws nothing.
    """
    num_time, num_freq = features.shape
    for width_max, size, dim in ((freq_mask, num_freq, 1), (time_mask, num_time, 0)):
        if width_max <= 0:
            continue
        width = int(rng.random() * min(width_max, size))
        start = int(rng.random() * (size - width))
        features.narrow(dim, start, width).zero_()
    return features


def train_audio_features(
    waveform: torch.Tensor, config: AudioPreprocessConfig, rng: random.Random, *, min_frames: int | None = None
) -> torch.Tensor:
    """Training features of a mono waveform at ``config.sample_rate``: random crop, fbank, normalise.

    Returns (T, F) with min_frames <= T <= max_frames (T < max_frames only for clips
    shorter than one window: they are not padded to a window). A clip shorter than
    ``min_frames`` (the encoder's fewest frames; ``config.min_frames`` when None) is
    padded with silence to it (:func:`fit_clip_length`).
    """
    crop_samples = samples_for_frames(config.max_frames, config)
    if waveform.shape[0] > crop_samples:
        start = rng.randrange(waveform.shape[0] - crop_samples + 1)
        waveform = waveform[start : start + crop_samples]
    waveform = fit_clip_length(waveform, config, config.min_frames if min_frames is None else min_frames)
    return normalize_fbank(fbank(waveform, config), config)


def eval_audio_windows(
    waveform: torch.Tensor, config: AudioPreprocessConfig, *, min_frames: int | None = None
) -> list[torch.Tensor]:
    """Evaluation features of a mono waveform: the whole clip as windows of at most ``max_frames`` frames.

    The filterbank is computed once over the whole clip, then cut (its frames depend
    only on their own samples, so a window equals the fbank of its own span).
    Windows start every ``max_frames`` frames; the last one ends at the clip's end,
    overlapping its neighbour when the length does not divide evenly. Returns a list
    of normalised (T_i, F) tensors: one of min_frames <= T <= max_frames for a clip
    that fits in a window, else full windows of exactly max_frames. A clip shorter than
    ``min_frames`` (the encoder's fewest frames; ``config.min_frames`` when None) is
    first padded with silence to it (:func:`fit_clip_length`).
    """
    waveform = fit_clip_length(waveform, config, config.min_frames if min_frames is None else min_frames)
    features = normalize_fbank(fbank(waveform, config), config)  # (T, F)
    total = features.shape[0]
    if total <= config.max_frames:
        return [features]
    starts = list(range(0, total - config.max_frames, config.max_frames)) + [total - config.max_frames]
    return [features[start : start + config.max_frames] for start in starts]


def audio_to_features(
    data: bytes | torch.Tensor,
    config: AudioPreprocessConfig,
    *,
    sample_rate: int | None = None,
    train: bool = False,
    rng: random.Random | None = None,
    min_frames: int | None = None,
) -> list[torch.Tensor] | torch.Tensor:
    """One clip, as the inference API needs it: bytes or a waveform -> features.

    Evaluation (``train=False``): the list of windows of :func:`eval_audio_windows`
    (embed each and average). Training: one (T, F) tensor from
    :func:`train_audio_features` with ``rng`` (a fresh unseeded one if None).
    ``min_frames``: the encoder's fewest frames, which a shorter clip is padded to
    (:func:`fit_clip_length`; ``config.min_frames`` when None). An empty clip raises
    ValueError(:data:`EMPTY_CLIP`).
    """
    waveform = load_waveform(data, config, sample_rate)
    if train:
        return train_audio_features(waveform, config, rng if rng is not None else random.Random(), min_frames=min_frames)
    return eval_audio_windows(waveform, config, min_frames=min_frames)


def collate_audio(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads frames (T_i, F) to the longest: returns audio (B, T, F) and padding mask (B, T), True at padding."""
    if not features:
        raise ValueError("collate_audio needs at least one clip")
    num_mel_bins = features[0].shape[1]
    longest = max(clip.shape[0] for clip in features)
    audio = features[0].new_zeros(len(features), longest, num_mel_bins)  # (B, T, F)
    padding_mask = torch.ones(len(features), longest, dtype=torch.bool)  # (B, T)
    for row, clip in enumerate(features):
        if clip.ndim != 2 or clip.shape[1] != num_mel_bins:
            raise ValueError(f"clip {row} has shape {tuple(clip.shape)}; expected (frames, {num_mel_bins})")
        audio[row, : clip.shape[0]] = clip
        padding_mask[row, : clip.shape[0]] = False
    return audio, padding_mask


__all__ = [
    "EMPTY_CLIP",
    "audio_to_features",
    "check_has_samples",
    "collate_audio",
    "decode_audio",
    "eval_audio_windows",
    "fbank",
    "fit_clip_length",
    "frame_geometry",
    "kaldi_fbank",
    "load_waveform",
    "mask_features",
    "normalize_fbank",
    "num_frames",
    "resample",
    "resampled_length",
    "resampling_ratio",
    "samples_for_frames",
    "to_mono",
    "train_audio_features",
]
