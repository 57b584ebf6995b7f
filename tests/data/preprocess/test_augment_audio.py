"""Audio augmentation: each transform by hand (frequencies, SNR, spectra, decay), at its neutral setting, seeded."""
from __future__ import annotations

import io
import math
import random

import pytest
import soundfile
import torch
import torchaudio

from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig

from multimodal.data.preprocess.audio_features import fbank, load_waveform, normalize_fbank
from multimodal.data.preprocess.augment_config import (
    AudioAugmentConfig,
    BandLimitAugment,
    EqualizerAugment,
    GainAugment,
    NoiseAugment,
    PitchAugment,
    ReverbAugment,
    SpeedAugment,
    TempoAugment,
    TrimAugment,
)
from multimodal.data.preprocess.augment_audio import (
    NOISE_BANK_SAMPLES,
    add_noise,
    add_reverb,
    apply_equalizer,
    apply_gain,
    augment_features,
    augment_waveform,
    change_speed,
    coloured_noise,
    fft_size,
    equalizer_curve,
    limit_band,
    mel_band_positions,
    noise_bank,
    noise_window,
    room_impulse_response,
    samples_to_augment,
    shift_pitch,
    telephone_line,
    time_stretch,
    trim_quiet_ends,
)

RATE = 16000
EVERY_LEVER = {
    "speed": AudioAugmentConfig(speed=SpeedAugment(p=1.0)),
    "tempo": AudioAugmentConfig(tempo=TempoAugment(p=1.0)),
    "pitch": AudioAugmentConfig(pitch=PitchAugment(p=1.0)),
    "reverb": AudioAugmentConfig(reverb=ReverbAugment(p=1.0)),
    "noise": AudioAugmentConfig(noise=NoiseAugment(p=1.0)),
    "band_limit": AudioAugmentConfig(band_limit=BandLimitAugment(p=1.0)),
    "gain": AudioAugmentConfig(gain=GainAugment(p=1.0)),
}
ALL_ON = AudioAugmentConfig(**{name: getattr(config, name) for name, config in EVERY_LEVER.items()})


def sine(frequency: float, seconds: float = 1.0, amplitude: float = 0.5) -> torch.Tensor:
    return amplitude * torch.sin(2 * math.pi * frequency * torch.arange(round(seconds * RATE)) / RATE)


def speech_like(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Harmonics of a gliding 120-180 Hz voice under a syllable envelope, with silence around it."""
    time = torch.arange(round(seconds * RATE)) / RATE
    pitch = 120 + 60 * time / seconds
    phase = 2 * math.pi * torch.cumsum(pitch, 0) / RATE
    voice = sum(torch.sin(k * phase) / k for k in range(1, 20))
    envelope = torch.exp(-(((time - seconds / 2) / (seconds / 6)) ** 2))
    generator = torch.Generator().manual_seed(seed)
    return (0.2 * voice * envelope + 1e-3 * torch.randn(time.shape[0], generator=generator)).float()


def peak_frequency(waveform: torch.Tensor) -> float:
    """The strongest frequency (Hz), refined between FFT bins by a parabola through the log magnitudes."""
    spectrum = torch.fft.rfft(waveform * torch.hann_window(waveform.shape[0])).abs().log()
    peak = int(spectrum.argmax())
    left, middle, right = (float(spectrum[peak + i]) for i in (-1, 0, 1))
    offset = 0.5 * (left - right) / (left - 2 * middle + right)
    return (peak + offset) * RATE / waveform.shape[0]


def band_power(waveform: torch.Tensor, low: float, high: float) -> float:
    spectrum = torch.fft.rfft(waveform).abs().square()
    frequencies = torch.fft.rfftfreq(waveform.shape[0], 1 / RATE)
    return float(spectrum[(frequencies >= low) & (frequencies < high)].sum())


def db(ratio: float) -> float:
    return 10 * math.log10(ratio)


@pytest.mark.parametrize("lever", sorted(EVERY_LEVER))
def test_each_lever_gives_a_finite_mono_float_waveform_and_is_seeded(lever):
    clip = speech_like()
    config = EVERY_LEVER[lever]
    out = augment_waveform(clip, RATE, config, random.Random(3))
    assert out.ndim == 1 and out.dtype == torch.float32 and bool(out.isfinite().all())
    assert 0.8 * clip.shape[0] <= out.shape[0] <= 1.2 * clip.shape[0]
    assert not torch.equal(out, clip)
    assert torch.equal(out, augment_waveform(clip, RATE, config, random.Random(3)))
    if lever == "band_limit":  # one narrow rate by default: nothing to draw
        return
    others = [augment_waveform(clip, RATE, config, random.Random(seed)) for seed in range(4, 8)]
    assert any(other.shape != out.shape or not torch.equal(other, out) for other in others)


def test_levers_that_are_off_return_the_waveform_and_draw_nothing():
    clip = speech_like()
    rng = random.Random(1)
    state = rng.getstate()
    assert augment_waveform(clip, RATE, AudioAugmentConfig(), rng, keep_samples=100) is clip
    assert rng.getstate() == state


def test_every_lever_at_its_neutral_setting_changes_nothing():
    clip = speech_like()
    neutral = AudioAugmentConfig(
        speed=SpeedAugment(p=1.0, factor=(1.0, 1.0)),
        tempo=TempoAugment(p=1.0, factor=(1.0, 1.0)),
        pitch=PitchAugment(p=1.0, semitones=(0.0, 0.0)),
        gain=GainAugment(p=1.0, db=(0.0, 0.0)),
    )
    assert torch.equal(augment_waveform(clip, RATE, neutral, random.Random(0)), clip)
    # The others have no exact identity inside their ranges; at their limits they change next to nothing.
    quiet = AudioAugmentConfig(
        reverb=ReverbAugment(p=1.0, direct_to_reverb_db=(60.0, 60.0)),
        noise=NoiseAugment(p=1.0, snr_db=(100.0, 100.0)),
    )
    error = augment_waveform(clip, RATE, quiet, random.Random(0)) - clip
    assert db(float(error.square().mean() / clip.square().mean())) < -50
    assert limit_band(clip, RATE, RATE) is clip


def test_speed_moves_a_sines_frequency_and_length_by_the_factor():
    out = change_speed(sine(440.0), 110)
    assert out.shape[0] == math.ceil(RATE * 100 / 110)
    assert peak_frequency(out) == pytest.approx(484.0, abs=0.5)
    slower = change_speed(sine(440.0), 90)
    assert slower.shape[0] == math.ceil(RATE * 100 / 90) and peak_frequency(slower) == pytest.approx(396.0, abs=0.5)


def test_tempo_changes_the_length_and_keeps_the_frequency():
    out = time_stretch(sine(440.0), RATE, 0.8)
    assert out.shape[0] == 20000
    assert peak_frequency(out[2000:-2000]) == pytest.approx(440.0, abs=1.0)


def test_pitch_moves_the_frequency_and_keeps_the_length():
    # +2 semitones is a ratio of 1.1225, rounded to 1.12.
    out = augment_waveform(sine(440.0), RATE, AudioAugmentConfig(pitch=PitchAugment(p=1.0, semitones=(2.0, 2.0))),
                           random.Random(0))
    assert out.shape[0] == RATE
    assert peak_frequency(out[2000:-2000]) == pytest.approx(440.0 * 1.12, abs=1.0)
    assert shift_pitch(sine(440.0), RATE, 100).shape[0] == RATE


def test_gain_in_decibels():
    clip = speech_like()
    assert db(float(apply_gain(clip, 6.0).square().mean() / clip.square().mean())) == pytest.approx(6.0, abs=1e-4)
    assert db(float(apply_gain(clip, -20.0).square().mean() / clip.square().mean())) == pytest.approx(-20.0, abs=1e-4)


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
def test_noise_is_added_at_the_snr_asked_for(color):
    clip = speech_like()
    config = AudioAugmentConfig(noise=NoiseAugment(p=1.0, snr_db=(7.5, 7.5), colors=(color,)))
    out = augment_waveform(clip, RATE, config, random.Random(0))
    noise = out - clip
    assert db(float(clip.square().mean() / noise.square().mean())) == pytest.approx(7.5, abs=1e-3)
    assert add_noise(torch.zeros(100), 10.0, torch.ones(100)).abs().max() == 0  # silence has no SNR to keep


@pytest.mark.parametrize(("color", "octave_ratio"), [("white", 2.0), ("pink", 1.0), ("brown", 0.5)])
def test_noise_colours_have_their_spectral_slope(color, octave_ratio):
    noise = coloured_noise(10 * RATE, color, torch.Generator().manual_seed(0))
    # Power per octave: doubles for white, stays for pink (1/f), halves for brown (1/f^2).
    measured = band_power(noise, 1000, 2000) / band_power(noise, 500, 1000)
    assert measured == pytest.approx(octave_ratio, rel=0.1)


@pytest.mark.parametrize(("color", "octave_ratio"), [("white", 2.0), ("pink", 1.0), ("brown", 0.5)])
def test_noise_windows_keep_the_colour_and_differ_per_draw(color, octave_ratio):
    # The noise lever takes windows of one long draw per colour (cheap); ten 1 s windows
    # must still have the colour's slope, and different draws different noise.
    windows = [noise_window(RATE, color, random.Random(seed)) for seed in range(10)]
    measured = sum(band_power(w, 1000, 2000) for w in windows) / sum(band_power(w, 500, 1000) for w in windows)
    assert measured == pytest.approx(octave_ratio, rel=0.15)
    assert all(w.shape == (RATE,) and w.dtype == torch.float32 for w in windows)
    assert not torch.equal(windows[0], windows[1])
    assert torch.equal(windows[3], noise_window(RATE, color, random.Random(3)))  # seeded
    assert float(noise_bank(color).square().mean()) == pytest.approx(1.0, rel=1e-4)
    longer = noise_window(NOISE_BANK_SAMPLES + 5, color, random.Random(0))  # past the bank: a fresh draw
    assert longer.shape == (NOISE_BANK_SAMPLES + 5,)


def test_band_limit_keeps_the_telephone_band_as_the_loader_reads_a_narrowband_recording():
    noise = 0.1 * torch.randn(RATE, generator=torch.Generator().manual_seed(0))
    out = limit_band(noise, RATE, 8000, highpass_hz=300.0, lowpass_hz=3400.0, mu_law=True)
    assert out.shape == noise.shape
    in_band = band_power(out, 500, 3300)
    assert db(in_band / band_power(noise, 500, 3300)) == pytest.approx(0.0, abs=0.5)  # mu-law keeps the level
    assert db(band_power(out, 3600, 3900) / band_power(noise, 3600, 3900)) < -6  # the slope above 3.4 kHz
    assert db(band_power(out, 20, 150) / band_power(noise, 20, 150)) < -20  # the high-pass
    # Above 4 kHz only the resampler's faint images (measured -29 dB, -51 dB above 5 kHz).
    assert db(band_power(out, 4000, 8000) / in_band) < -25 and db(band_power(out, 5000, 8000) / in_band) < -45
    plain = limit_band(noise, RATE, 8000)  # no slopes: a plain band limit at 4 kHz
    assert db(band_power(plain, 20, 3000) / band_power(noise, 20, 3000)) == pytest.approx(0.0, abs=0.2)
    assert db(band_power(plain, 4500, 8000) / band_power(plain, 500, 3500)) < -30

    # The line's own output is 8 kHz audio; a WAV of it read by the loader is the lever's output.
    line = telephone_line(noise, RATE, 8000, highpass_hz=300.0, lowpass_hz=3400.0, mu_law=True)
    assert line.shape == (8000,) and line.abs().max() <= 1.0
    # The mu-law levels are looked up: torchaudio's own encoding and decoding, to the bit.
    unquantised = telephone_line(noise, RATE, 8000, highpass_hz=300.0, lowpass_hz=3400.0)
    codes = torchaudio.functional.mu_law_encoding(unquantised.clamp(-1.0, 1.0), 256)
    assert codes.unique().numel() > 100 and torch.equal(line, torchaudio.functional.mu_law_decoding(codes, 256))
    recording = io.BytesIO()
    soundfile.write(recording, line.numpy(), 8000, format="WAV", subtype="PCM_16")
    read = load_waveform(recording.getvalue(), AudioPreprocessConfig())  # resampled to 16 kHz
    torch.testing.assert_close(read, out, atol=1e-4, rtol=0)  # 16-bit rounding, resampled
    with pytest.raises(ValueError, match="a narrowband line's rate must be below the clip's 16000 Hz, got 16000 Hz"):
        telephone_line(noise, RATE, RATE)
    assert telephone_line(torch.zeros(0), RATE, 8000).shape == (0,)
    # Lengths of slow FFT sizes (16,001 is a prime) are filtered at a fast one: the band is the same.
    for length in (15999, 16001):
        other = limit_band(torch.cat([noise, noise])[:length], RATE, 8000)
        assert other.shape == (length,) and db(band_power(other, 4500, 8000) / band_power(other, 500, 3500)) < -30


def test_reverb_direct_to_reverberant_ratio_and_decay_time():
    rt60, ratio_db = 0.5, 6.0
    response = room_impulse_response(RATE, rt60, ratio_db, torch.Generator().manual_seed(0))
    impulse = torch.zeros(RATE)
    impulse[0] = 1.0
    out = add_reverb(impulse, response)
    assert out.shape == impulse.shape
    assert float(out.square().mean()) == pytest.approx(float(impulse.square().mean()), rel=1e-4)  # RMS kept
    assert db(float(out[0] ** 2 / out[1:].square().sum())) == pytest.approx(ratio_db, abs=1e-3)
    # Schroeder's backward integral of the tail falls 20 dB (-5 to -25) in a third of RT60.
    energy = out[1:].double().square().flip(0).cumsum(0).flip(0)
    decay_db = 10 * torch.log10(energy / energy[0])
    start, end = int((decay_db > -5).sum()), int((decay_db > -25).sum())
    assert 3 * (end - start) / RATE == pytest.approx(rt60, rel=0.1)


def test_long_clips_are_cut_to_what_the_window_needs_before_augmenting():
    clip = speech_like(seconds=12.0)
    config = AudioAugmentConfig(speed=SpeedAugment(p=1.0, factor=(0.9, 1.15)))
    needed = samples_to_augment(config, RATE)
    assert needed == math.ceil(RATE * 1.15) + 1
    for seed in range(10):
        out = augment_waveform(clip, RATE, config, random.Random(seed), keep_samples=RATE)
        assert RATE <= out.shape[0] <= math.ceil(needed / 0.9)


def test_short_and_silent_clips_pass_through_every_lever():
    for clip in (torch.zeros(RATE // 2), speech_like(0.02), torch.zeros(0)):
        out = augment_waveform(clip, RATE, ALL_ON, random.Random(0), keep_samples=RATE)
        assert bool(out.isfinite().all())


def test_fft_size_is_the_smallest_5_smooth_length():
    def smooth(n: int) -> bool:
        for factor in (2, 3, 5):
            while n % factor == 0:
                n //= factor
        return n == 1

    for length in range(1, 3000):
        size = fft_size(length)
        assert size >= length and smooth(size) and not any(smooth(n) for n in range(length, size))
    assert fft_size(19999) == 20000


def test_a_stereo_waveform_is_refused():
    with pytest.raises(ValueError, match=r"mono waveform \(samples,\), got shape \(2, 100\)"):
        augment_waveform(torch.zeros(2, 100), RATE, ALL_ON, random.Random(0))


def test_trim_keeps_the_loud_part_and_the_margins_asked_for():
    clip = torch.zeros(RATE)
    clip[4800:9600] = 0.5 * torch.sin(torch.arange(4800) * 0.3)  # 0.3 s of sound at 0.3-0.6 s
    clip += 1e-4 * torch.randn(RATE, generator=torch.Generator().manual_seed(0))  # a floor 60+ dB down
    tight = trim_quiet_ends(clip, RATE, 30.0, (0.0, 0.0))
    assert torch.equal(tight, clip[4800:9600])  # the loud 10 ms hops, 4800 and 9600 on hop edges
    padded = trim_quiet_ends(clip, RATE, 30.0, (0.05, 0.1))
    assert torch.equal(padded, clip[4800 - 800 : 9600 + 1600])
    # A click: widened to 0.1 s about it; near an end, within the clip; silence: as it is.
    click = torch.zeros(RATE)
    click[50:100] = 1.0
    assert torch.equal(trim_quiet_ends(click, RATE, 30.0, (0.0, 0.0)), click[:1600])
    assert torch.equal(trim_quiet_ends(torch.zeros(RATE), RATE, 30.0, (0.1, 0.1)), torch.zeros(RATE))
    # Through the levers: seeded margins in the configured range.
    config = AudioAugmentConfig(trim=TrimAugment(p=1.0, margin_seconds=(0.0, 0.1)))
    out = augment_waveform(clip, RATE, config, random.Random(4))
    assert torch.equal(out, augment_waveform(clip, RATE, config, random.Random(4)))
    assert 4800 <= out.shape[0] <= 4800 + 2 * 1600 and out.abs().max() == clip.abs().max()


def test_equalizer_curve_by_hand():
    positions = mel_band_positions(5)
    assert positions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # A tilt pivots on the middle band; a peak reaches its gain at its centre, exp(-1/2) of it one width away.
    assert equalizer_curve(positions, 12.0, 0.0, 0.5, 0.1).tolist() == [-6.0, -3.0, 0.0, 3.0, 6.0]
    bell = equalizer_curve(positions, 0.0, -8.0, 0.25, 0.25)
    assert bell[1] == pytest.approx(-8.0) and bell[0] == pytest.approx(-8.0 * math.exp(-0.5))
    assert bell[2] == pytest.approx(-8.0 * math.exp(-0.5))
    assert mel_band_positions(1).tolist() == [0.5]


def test_a_flat_equalizer_is_a_gain_on_the_waveform():
    config = AudioPreprocessConfig(num_mel_bins=64)
    noise = 0.1 * torch.randn(RATE, generator=torch.Generator().manual_seed(0))
    features = normalize_fbank(fbank(noise, config), config)
    louder = normalize_fbank(fbank(apply_gain(noise, 6.0), config), config)
    flat = apply_equalizer(features.clone(), torch.full((64,), 6.0), config.norm_std)
    torch.testing.assert_close(flat, louder, atol=1e-4, rtol=0)


def test_the_equalizer_is_what_a_filter_of_that_response_does_to_the_bands():
    """White noise filtered by the curve's response, band by band, against the curve added to the features."""
    config = AudioPreprocessConfig(num_mel_bins=64)
    noise = 0.1 * torch.randn(4 * RATE, generator=torch.Generator().manual_seed(1))
    # Each FFT bin's frequency -> its position among the mel bands' centres (Kaldi: 20 Hz to Nyquist).
    def mel(hz):
        return 1127.0 * torch.log1p(torch.as_tensor(hz, dtype=torch.float64) / 700.0)
    frequencies = torch.fft.rfftfreq(noise.shape[0], 1.0 / RATE)
    step = (mel(RATE / 2) - mel(20.0)) / (config.num_mel_bins + 1)
    positions = (((mel(frequencies) - mel(20.0)) / step - 1.0) / (config.num_mel_bins - 1)).clamp(0, 1).float()
    tilt, peak, centre, width = -10.0, 6.0, 0.6, 0.1
    response = 10.0 ** (equalizer_curve(positions, tilt, peak, centre, width) / 20.0)
    filtered = torch.fft.irfft(torch.fft.rfft(noise) * response, noise.shape[0])

    features = normalize_fbank(fbank(noise, config), config)
    expected = normalize_fbank(fbank(filtered, config), config).mean(0)
    equalized = apply_equalizer(features.clone(), equalizer_curve(mel_band_positions(64), tilt, peak, centre, width),
                                config.norm_std).mean(0)
    db_per_unit = 20.0 * config.norm_std / math.log(10.0)
    error_db = ((equalized - expected) * db_per_unit).abs()
    assert error_db.max() < 0.25  # measured: 0.11 dB at most, in the lowest band (a handful of FFT bins)


def test_the_equalizer_lever_is_seeded_off_draws_nothing_and_colours_every_frame_alike():
    config = AudioPreprocessConfig(num_mel_bins=64)
    features = normalize_fbank(fbank(speech_like() + 1e-3, config), config)
    rng = random.Random(0)
    assert torch.equal(augment_features(features.clone(), AudioAugmentConfig(), rng, norm_std=config.norm_std),
                       features)
    assert rng.random() == random.Random(0).random()  # no draw was made

    levers = AudioAugmentConfig(equalizer=EqualizerAugment(p=1.0, tilt_db=(-12.0, 12.0), peak_db=(-8.0, 8.0)))
    outs = [augment_features(features.clone(), levers, random.Random(seed), norm_std=config.norm_std)
            for seed in (3, 3, 4)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert outs[0].dtype == torch.float32 and outs[0].shape == features.shape
    added_db = (outs[0] - features) * (20.0 * config.norm_std / math.log(10.0))  # (T, F)
    torch.testing.assert_close(added_db, added_db[:1].expand_as(added_db), atol=1e-3, rtol=0)
    assert added_db.abs().max() <= 6.0 + 8.0 + 1e-3  # half the widest tilt plus the strongest peak
