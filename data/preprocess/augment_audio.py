"""Audio augmentation of a training waveform: mono float32 (samples,) -> (samples',), drawn from a seeded RNG.

:func:`augment_waveform` draws which levers of an
:class:`multimodal.data.preprocess.augment_config.AudioAugmentConfig` apply to a clip and their
parameters from the clip's ``random.Random``; the noise of the noise and reverb
levers comes from a ``torch.Generator`` seeded from that RNG, so nothing depends on
torch's global RNG. It runs on the waveform at the model's sample rate, before the
filterbank (and before SpecAugment, which works on the features). The transforms are
plain functions, each checkable by hand:

- :func:`trim_quiet_ends`: the quiet before the first and after the last loud 10 ms cut,
  but for a random margin;
- :func:`change_speed`: resampled by a ratio of k / 100 (:func:`multimodal.data.preprocess.audio_features.resample`),
  so duration / factor and every frequency x factor;
- :func:`time_stretch`: a phase vocoder (STFT of ~32 ms Hann windows, hop a quarter
  window): duration / factor, frequencies kept;
- :func:`shift_pitch`: stretched by the ratio, then resampled back to the length:
  frequencies x ratio, duration kept;
- :func:`add_reverb`: convolution (FFT) with a direct path of 1 plus a noise tail whose
  amplitude falls by 60 dB in RT60, scaled to the direct-to-reverberant energy ratio;
  the clip's length and RMS are kept;
- :func:`add_noise`: white, pink (1/f power) or brown (1/f^2) Gaussian noise scaled
  to an exact SNR against the clip's mean power (the noise: :func:`noise_window`, a
  window of one long draw per colour);
- :func:`limit_band`: band-passed, resampled down to a narrow rate, optionally
  companded to 8-bit mu-law there (:func:`telephone_line`: 300-3400 Hz at 8 kHz), and
  resampled back as the loader reads a narrowband recording;
- :func:`apply_gain`: ``x * 10 ** (db / 20)``.

Then on the normalised log-mel features (:func:`augment_features`):

- :func:`equalizer_curve` and :func:`apply_equalizer`: a gain in dB per mel band (a tilt
  plus a bell-shaped peak or notch) added to the bands' log energies;
- SpecAugment's masks (:func:`multimodal.data.preprocess.audio_features.mask_features`).

Speed, tempo and pitch ratios are rounded to 1% steps (see
:data:`multimodal.data.preprocess.augment_config.RATIO_STEPS`): a training run then uses a few dozen
resampling kernels, each built once per worker and cached by the resampler.
"""
from __future__ import annotations

import functools
import math
import random

import numpy as np
import torch
import torchaudio

from multimodal.data.preprocess.augment_config import RATIO_STEPS, AudioAugmentConfig
from multimodal.data.preprocess.audio_features import mask_features, resample

# Energy decays by 60 dB (amplitude by 1000x) in RT60: amplitude exp(-ln(1000) t / RT60).
_LOG_1000 = math.log(1000.0)
# Phase vocoder window: about 32 ms (512 samples at 16 kHz), a power of two.
_STRETCH_WINDOW_SECONDS = 0.032
# Spectral power exponent of each noise colour: power ~ 1 / f^exponent.
_NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def ratio_steps(value: float) -> int:
    """``value`` as a whole number of 1% steps (k with k / 100 nearest to it), at least 1."""
    return max(1, round(value * RATIO_STEPS))


def fft_size(length: int) -> int:
    """The smallest 2^a 3^b 5^c >= ``length``: a length the FFT is fast at (a large prime is many times slower)."""
    best = 1 << max(0, length - 1).bit_length()
    power_of_5 = 1
    while power_of_5 < best:
        smooth = power_of_5
        while smooth < best:
            candidate = smooth
            while candidate < length:
                candidate *= 2
            best = min(best, candidate)
            smooth *= 3
        power_of_5 *= 5
    return best


# The FFTs run in numpy (pocketfft, single precision): at these lengths it is about
# twice as fast as torch's CPU FFT (python -m bench augment times the levers that use it).
def rfft(signal: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """``torch.fft.rfft(signal, size)`` of a float32 (N,), as complex64, computed by numpy."""
    return torch.from_numpy(np.fft.rfft(signal.numpy(), size))


def irfft(spectrum: torch.Tensor, size: int) -> torch.Tensor:
    """``torch.fft.irfft(spectrum, size)`` of a complex64 spectrum, as float32, computed by numpy."""
    return torch.from_numpy(np.fft.irfft(spectrum.numpy(), size))


def _fit_length(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad (samples,) to ``length``."""
    if waveform.shape[0] >= length:
        return waveform[:length]
    return torch.nn.functional.pad(waveform, (0, length - waveform.shape[0]))


def trim_quiet_ends(
    waveform: torch.Tensor, sample_rate: int, threshold_db: float, margins: tuple[float, float]
) -> torch.Tensor:
    """The clip from its first to its last loud 10 ms, with ``margins`` seconds (before, after) kept: (N,) -> (N',).

    Loud: within ``threshold_db`` of the loudest 10 ms in power. At least 0.1 s (or the
    whole clip) is kept, centred on the loud part; a silent clip comes back as it is.
    """
    hop = max(1, sample_rate // 100)
    num_hops = waveform.shape[0] // hop
    if num_hops == 0:
        return waveform
    power = waveform[: num_hops * hop].view(num_hops, hop).square().mean(dim=1)  # (H,) per 10 ms
    peak = float(power.max())
    if peak <= 0:
        return waveform
    loud = (power >= peak * 10.0 ** (-threshold_db / 10.0)).nonzero().flatten()
    start = max(0, int(loud[0]) * hop - round(margins[0] * sample_rate))
    end = min(waveform.shape[0], (int(loud[-1]) + 1) * hop + round(margins[1] * sample_rate))
    shortest = min(waveform.shape[0], sample_rate // 10)
    if end - start < shortest:  # widen to 0.1 s about the loud part, within the clip
        start = min(max(0, (start + end - shortest) // 2), waveform.shape[0] - shortest)
        end = start + shortest
    return waveform[start:end]


def change_speed(waveform: torch.Tensor, steps: int) -> torch.Tensor:
    """Played ``steps / 100`` times as fast: (N,) -> (ceil(N * 100 / steps),); frequencies x steps / 100.

    The waveform is read as if sampled at ``steps`` and resampled to ``RATIO_STEPS``:
    only the ratio matters to the sinc resampler, whatever the true sample rate.
    """
    return resample(waveform, steps, RATIO_STEPS)


def _stretch_window(sample_rate: int) -> int:
    return 1 << round(math.log2(_STRETCH_WINDOW_SECONDS * sample_rate))


def time_stretch(waveform: torch.Tensor, sample_rate: int, rate: float) -> torch.Tensor:
    """Phase-vocoder time stretch, ``rate`` times as fast at the same pitch: (N,) -> (round(N / rate),).

    Clips shorter than one window (~32 ms) come back unchanged.
    """
    window_size = _stretch_window(sample_rate)
    if rate == 1.0 or waveform.shape[0] <= window_size:
        return waveform
    hop = window_size // 4
    window = torch.hann_window(window_size)
    spectrum = torch.stft(waveform, window_size, hop, window=window, return_complex=True)  # (K, frames)
    phase_advance = torch.linspace(0, math.pi * hop, spectrum.shape[0])[:, None]  # (K, 1)
    stretched = torchaudio.functional.phase_vocoder(spectrum, rate, phase_advance)  # (K, ceil(frames / rate))
    return torch.istft(stretched, window_size, hop, window=window, length=round(waveform.shape[0] / rate))


def shift_pitch(waveform: torch.Tensor, sample_rate: int, steps: int) -> torch.Tensor:
    """Every frequency x ``steps / 100`` at the same duration: (N,) -> (N,)."""
    if steps == RATIO_STEPS:
        return waveform
    longer = time_stretch(waveform, sample_rate, RATIO_STEPS / steps)  # (~N * steps / 100,)
    return _fit_length(change_speed(longer, steps), waveform.shape[0])


def fft_convolve(signal: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The first ``len(signal)`` samples of the linear convolution ``signal * kernel``: (N,), (M,) -> (N,)."""
    size = fft_size(signal.shape[0] + kernel.shape[0] - 1)
    return irfft(rfft(signal, size) * rfft(kernel, size), size)[: signal.shape[0]]


def room_impulse_response(
    sample_rate: int, rt60_seconds: float, direct_to_reverb_db: float, generator: torch.Generator
) -> torch.Tensor:
    """A synthetic room: (L,), L = RT60 in samples (at least 2): 1 (the direct path), then a decaying noise tail.

    The tail is Gaussian noise under ``exp(-ln(1000) t / RT60)`` (its energy falls by
    60 dB in RT60), scaled so that the direct path's energy over the tail's is
    ``direct_to_reverb_db``.
    """
    length = max(2, round(rt60_seconds * sample_rate))
    time = torch.arange(1, length, dtype=torch.float32) / sample_rate  # (L - 1,) seconds
    tail = torch.randn(length - 1, generator=generator) * torch.exp(-_LOG_1000 / rt60_seconds * time)
    tail *= math.sqrt(10.0 ** (-direct_to_reverb_db / 10.0) / float(tail.square().sum()))
    return torch.cat([torch.ones(1), tail])


def _rms(waveform: torch.Tensor) -> float:
    return math.sqrt(float(waveform.square().mean()))


def add_reverb(waveform: torch.Tensor, impulse_response: torch.Tensor) -> torch.Tensor:
    """The clip convolved with ``impulse_response``, cut to its length and scaled back to its RMS: (N,) -> (N,)."""
    before = _rms(waveform)
    wet = fft_convolve(waveform, impulse_response)
    after = _rms(wet)
    return wet * (before / after) if after > 0 else wet


def coloured_noise(length: int, color: str, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise (length,) whose power falls as 1 / f^0 (white), 1 / f (pink) or 1 / f^2 (brown); no DC.

    Coloured noise is drawn as its spectrum (independent complex Gaussians per bin,
    shaped by f^(-exponent / 2)) and transformed once.
    """
    exponent = _NOISE_EXPONENTS[color]
    if exponent == 0:
        return torch.randn(length, generator=generator)
    size = fft_size(length)
    bins = size // 2 + 1
    spectrum = torch.view_as_complex(torch.randn(bins, 2, generator=generator))  # (bins,)
    frequencies = torch.arange(bins, dtype=torch.float32)
    frequencies[0] = math.inf  # no DC: 1 / f has none to give it
    return irfft(spectrum * frequencies.pow_(-exponent / 2), size)[:length]


# The noise lever's noise is a window of one long draw per colour: drawing a fresh
# coloured spectrum and transforming it for each clip cost 450 us per 1 s clip, nearly
# half the loader's audio time on the demo, where a window costs nothing. Windows at a
# random offset of 32 s (2^19 samples at 16 kHz), with a random sign, are as good as fresh
# noise for a 1 s clip; longer clips draw their own (coloured_noise).
NOISE_BANK_SAMPLES = 1 << 19
_NOISE_BANK_SEED = 20261203


@functools.lru_cache(maxsize=len(_NOISE_EXPONENTS))
def noise_bank(color: str) -> torch.Tensor:
    """One fixed draw (NOISE_BANK_SAMPLES,) of ``color`` noise, at unit mean power; cached, never to be modified."""
    noise = coloured_noise(NOISE_BANK_SAMPLES, color, torch.Generator().manual_seed(_NOISE_BANK_SEED))
    return noise / noise.square().mean().sqrt()


def noise_window(length: int, color: str, rng: random.Random) -> torch.Tensor:
    """``length`` samples of ``color`` noise: a window of :func:`noise_bank` at an offset and sign drawn from ``rng``.

    Longer than the bank: a fresh draw (:func:`coloured_noise`) seeded from ``rng``.
    """
    bank = noise_bank(color)
    if length > bank.shape[0]:
        return coloured_noise(length, color, _generator(rng))
    start = rng.randrange(bank.shape[0] - length + 1)
    window = bank[start : start + length]
    return window if rng.random() < 0.5 else -window


def add_noise(waveform: torch.Tensor, snr_db: float, noise: torch.Tensor) -> torch.Tensor:
    """``waveform + noise`` scaled so that mean power(waveform) / mean power(noise) is ``snr_db``: (N,) -> (N,).

    A silent clip (power 0) has no SNR to keep and comes back unchanged.
    """
    signal_power = float(waveform.square().mean())
    noise_power = float(noise.square().mean())
    if signal_power == 0 or noise_power == 0:
        return waveform
    return waveform + noise * math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))


@functools.lru_cache(maxsize=64)
def band_mask(length: int, sample_rate: int, low_hz: float, high_hz: float, stop_hz: float) -> torch.Tensor:
    """Gains (length // 2 + 1,) of the rfft bins of ``length`` samples: 1 in [low_hz, high_hz], 0 below
    low_hz / 2 and above ``stop_hz``, raised-cosine slopes between (none at the low end when ``low_hz`` is 0).

    Cached (clips of a source share a few lengths): the result must not be modified.
    """
    frequencies = torch.fft.rfftfreq(length, 1.0 / sample_rate)  # (length // 2 + 1,)
    gain = torch.ones(frequencies.shape[0])
    high_hz = min(high_hz, stop_hz)
    if stop_hz > high_hz:
        falling = ((frequencies - high_hz) / (stop_hz - high_hz)).clamp_(0, 1)
        gain *= 0.5 + 0.5 * torch.cos(math.pi * falling)
    gain[frequencies > stop_hz] = 0.0
    if low_hz > 0:
        rising = ((frequencies - low_hz / 2) / (low_hz / 2)).clamp_(0, 1)
        gain *= 0.5 - 0.5 * torch.cos(math.pi * rising)
    return gain


@functools.lru_cache(maxsize=4)
def _mu_law_levels(channels: int) -> torch.Tensor:
    """The level (channels,) each mu-law code decodes to, by ``torchaudio.functional.mu_law_decoding``.

    Decoding a clip is then one lookup, the same numbers a few times faster than the
    formula over every sample. Cached: the result must not be modified.
    """
    return torchaudio.functional.mu_law_decoding(torch.arange(channels), channels)


def telephone_line(
    waveform: torch.Tensor,
    sample_rate: int,
    narrow_rate: int,
    *,
    highpass_hz: float = 0.0,
    lowpass_hz: float = math.inf,
    mu_law: bool = False,
) -> torch.Tensor:
    """What a narrowband line delivers: (N,) at ``sample_rate`` -> (ceil(N * narrow_rate / sample_rate),).

    Band-passed in the frequency domain by :func:`band_mask` (full level from
    ``highpass_hz`` to ``lowpass_hz``, nothing above half the narrow rate), resampled
    down to ``narrow_rate`` and there optionally companded to 8-bit mu-law (samples
    clamped to [-1, 1] first), as G.711 carries speech at 8 kHz. Raises ValueError
    unless ``narrow_rate`` is below ``sample_rate``.
    """
    if not 0 < narrow_rate < sample_rate:
        raise ValueError(f"a narrowband line's rate must be below the clip's {sample_rate} Hz, got {narrow_rate} Hz")
    length = waveform.shape[0]
    if length == 0:
        return waveform
    # Filtered at a 5-smooth length, zero-padded: after the speed lever a clip's length
    # is any number, primes included, where the FFT is many times slower. The trace that
    # cutting the padding off leaves above the band (45-55 dB down) the resampler removes.
    size = fft_size(length)
    spectrum = rfft(waveform.contiguous(), size)  # (size // 2 + 1,)
    spectrum *= band_mask(size, sample_rate, highpass_hz, lowpass_hz, narrow_rate / 2)
    narrow = resample(irfft(spectrum, size)[:length], sample_rate, narrow_rate)
    if mu_law:
        codes = torchaudio.functional.mu_law_encoding(narrow.clamp(-1.0, 1.0), 256)
        narrow = _mu_law_levels(256)[codes]
    return narrow


def limit_band(
    waveform: torch.Tensor,
    sample_rate: int,
    narrow_rate: int,
    *,
    highpass_hz: float = 0.0,
    lowpass_hz: float = math.inf,
    mu_law: bool = False,
) -> torch.Tensor:
    """Narrowband audio at the clip's own rate, as the loader reads a narrowband recording: (N,) -> (N,).

    :func:`telephone_line`, then resampled back to ``sample_rate`` by the loader's
    resampler, whose low-pass leaves faint images just above half the narrow rate
    (20-30 dB down), as it does for a file recorded at that rate. Unchanged when
    ``narrow_rate`` is not below ``sample_rate``.
    """
    if narrow_rate >= sample_rate or waveform.shape[0] == 0:
        return waveform
    narrow = telephone_line(waveform, sample_rate, narrow_rate, highpass_hz=highpass_hz, lowpass_hz=lowpass_hz,
                            mu_law=mu_law)
    return _fit_length(resample(narrow, narrow_rate, sample_rate), waveform.shape[0])  # (N,)


def apply_gain(waveform: torch.Tensor, db: float) -> torch.Tensor:
    """``waveform * 10 ** (db / 20)``."""
    return waveform * 10.0 ** (db / 20.0)


def samples_to_augment(config: AudioAugmentConfig, output_samples: int) -> int:
    """Input samples that make at least ``output_samples`` after the speed and tempo levers at their slowest."""
    factor = 1.0
    for lever in (config.speed, config.tempo):
        if lever.p > 0:
            factor *= ratio_steps(lever.factor[1]) / RATIO_STEPS
    return math.ceil(output_samples * factor) + 1


def _applies(p: float, rng: random.Random) -> bool:
    """Whether a lever with probability ``p`` applies; no draw for a lever that is off."""
    return p > 0 and rng.random() < p


def equalizer_curve(
    position: torch.Tensor, tilt_db: float, peak_db: float, peak_center: float, peak_width: float
) -> torch.Tensor:
    """The equalizer's gain in dB at each ``position`` (0: the lowest mel band, 1: the highest), float32.

    ``tilt_db * (position - 0.5) + peak_db * exp(-((position - peak_center) / peak_width) ** 2 / 2)``:
    the tilt pivots on the middle band, so it colours the sound without making it louder
    on average (the gain lever does that). :func:`mel_band_positions` gives a filterbank's.
    """
    # In numpy: for a few dozen bands each torch call costs more than its arithmetic.
    u = np.asarray(position, dtype=np.float64)
    curve = tilt_db * (u - 0.5) + peak_db * np.exp(-0.5 * ((u - peak_center) / peak_width) ** 2)
    return torch.from_numpy(curve.astype(np.float32))


@functools.lru_cache(maxsize=8)
def mel_band_positions(num_bins: int) -> torch.Tensor:
    """The bands' positions for :func:`equalizer_curve`, (num_bins,): 0 to 1, evenly (mel bands are even in mel).

    Cached: the result must not be modified.
    """
    return torch.linspace(0.0, 1.0, num_bins) if num_bins > 1 else torch.full((1,), 0.5)


def apply_equalizer(features: torch.Tensor, curve_db: torch.Tensor, norm_std: float) -> torch.Tensor:
    """Normalised log-mel frames (T, F) with ``curve_db`` (F,) added to each band's energy, in place.

    The filterbank's features are natural logs of band energies, normalised as
    ``(x - mean) / (2 * norm_std)``: ``d`` dB of gain adds ``d * ln(10) / 10`` to the log,
    which is ``d * ln(10) / (20 * norm_std)`` after normalisation.
    """
    return features.add_(curve_db.to(features.dtype) * (math.log(10.0) / (20.0 * norm_std)))


def augment_features(
    features: torch.Tensor, config: AudioAugmentConfig, rng: random.Random, *, norm_std: float
) -> torch.Tensor:
    """The feature levers that ``rng`` draws, in order (``equalizer``, ``spec_augment``), in place.

    ``features``: normalised log-mel frames (T, F); ``norm_std``: the normalisation's
    standard deviation (:class:`multimodal.data.preprocess.preprocess_config.AudioPreprocessConfig`), which
    turns the equalizer's dB into feature units.
    """
    lever = config.equalizer
    if _applies(lever.p, rng):
        curve = equalizer_curve(mel_band_positions(features.shape[1]), rng.uniform(*lever.tilt_db),
                                rng.uniform(*lever.peak_db), rng.random(), rng.uniform(*lever.peak_width))
        apply_equalizer(features, curve, norm_std)
    lever = config.spec_augment
    if _applies(lever.p, rng):
        mask_features(features, lever.freq_mask, lever.time_mask, rng)
    return features


def _generator(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.getrandbits(63))


def augment_waveform(
    waveform: torch.Tensor,
    sample_rate: int,
    config: AudioAugmentConfig,
    rng: random.Random,
    *,
    keep_samples: int | None = None,
) -> torch.Tensor:
    """The waveform levers of ``config`` that ``rng`` draws, in order: mono float32 (N,) at ``sample_rate`` -> (N',).

    ``equalizer`` and ``spec_augment`` act on the features, not here (see :func:`augment_features`).

    ``keep_samples``: the samples training will crop out of the result (its
    ``max_frames`` window). A longer clip is first cut at random to what the levers
    need to give that many, so a long clip costs no more than a window. Returns
    ``waveform`` itself when no lever applies (every ``p`` at 0 makes no draw).
    """
    if waveform.ndim != 1:
        raise ValueError(f"augment_waveform expects a mono waveform (samples,), got shape {tuple(waveform.shape)}")
    if not config.waveform_enabled or waveform.shape[0] == 0:
        return waveform
    if keep_samples is not None:
        needed = samples_to_augment(config, keep_samples)
        if waveform.shape[0] > needed:
            start = rng.randrange(waveform.shape[0] - needed + 1)
            waveform = waveform[start : start + needed]
    if _applies(config.trim.p, rng):
        lever = config.trim
        waveform = trim_quiet_ends(waveform, sample_rate, lever.threshold_db,
                                   (rng.uniform(*lever.margin_seconds), rng.uniform(*lever.margin_seconds)))
    if _applies(config.speed.p, rng):
        waveform = change_speed(waveform, ratio_steps(rng.uniform(*config.speed.factor)))
    if _applies(config.tempo.p, rng):
        waveform = time_stretch(waveform, sample_rate, ratio_steps(rng.uniform(*config.tempo.factor)) / RATIO_STEPS)
    if _applies(config.pitch.p, rng):
        waveform = shift_pitch(waveform, sample_rate, ratio_steps(2.0 ** (rng.uniform(*config.pitch.semitones) / 12)))
    if _applies(config.reverb.p, rng):
        lever = config.reverb
        rt60, drr = rng.uniform(*lever.rt60_seconds), rng.uniform(*lever.direct_to_reverb_db)
        waveform = add_reverb(waveform, room_impulse_response(sample_rate, rt60, drr, _generator(rng)))
    if _applies(config.noise.p, rng):
        lever = config.noise
        snr, color = rng.uniform(*lever.snr_db), rng.choice(lever.colors)
        waveform = add_noise(waveform, snr, noise_window(waveform.shape[0], color, rng))
    if _applies(config.band_limit.p, rng):
        lever = config.band_limit
        waveform = limit_band(waveform, sample_rate, rng.choice(lever.sample_rates),
                              highpass_hz=lever.highpass_hz, lowpass_hz=lever.lowpass_hz, mu_law=lever.mu_law)
    if _applies(config.gain.p, rng):
        waveform = apply_gain(waveform, rng.uniform(*config.gain.db))
    return waveform.to(torch.float32)


__all__ = [
    "add_noise",
    "augment_features",
    "add_reverb",
    "apply_equalizer",
    "apply_gain",
    "augment_waveform",
    "change_speed",
    "coloured_noise",
    "equalizer_curve",
    "noise_bank",
    "noise_window",
    "fft_convolve",
    "fft_size",
    "irfft",
    "band_mask",
    "limit_band",
    "telephone_line",
    "mel_band_positions",
    "ratio_steps",
    "rfft",
    "room_impulse_response",
    "samples_to_augment",
    "shift_pitch",
    "time_stretch",
    "trim_quiet_ends",
]
