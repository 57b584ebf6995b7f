"""Audio decoding, resampling, the Kaldi filterbank against torchaudio's, features against Hugging Face's AST
feature extractor, crops and evaluation windows."""
from __future__ import annotations

import io
import math
import random
import warnings

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from transformers import ASTFeatureExtractor
from transformers.models.audio_spectrogram_transformer import (
    feature_extraction_audio_spectrogram_transformer as hf_ast_features,
)

from multimodal.data.preprocess.audio_features import (
    EMPTY_CLIP,
    audio_to_features,
    collate_audio,
    decode_audio,
    eval_audio_windows,
    fbank,
    fit_clip_length,
    kaldi_fbank,
    load_waveform,
    mask_features,
    normalize_fbank,
    num_frames,
    resample,
    resampled_length,
    resampling_ratio,
    samples_for_frames,
    to_mono,
    train_audio_features,
)
from multimodal.data.preprocess import audio_features as audio_module
from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig
from multimodal.data.preprocess.wav import read_pcm_wav


def encode(waveform: np.ndarray, sample_rate: int, format: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, sample_rate, format=format, subtype=subtype)
    return buffer.getvalue()


def tone(seconds: float, sample_rate: int = 16000, frequency: float = 440.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    time_axis = torch.arange(int(seconds * sample_rate)) / sample_rate
    noise = torch.randn(time_axis.shape, generator=generator) * 0.01
    return (0.5 * torch.sin(2 * torch.pi * frequency * time_axis) + noise).to(torch.float32)


@pytest.mark.parametrize("format, subtype", [("WAV", "FLOAT"), ("FLAC", "PCM_24")])
def test_lossless_formats_round_trip(format, subtype):
    stereo = np.stack([tone(0.1).numpy(), tone(0.1, frequency=220).numpy()], axis=1)  # (N, 2)
    waveform, sample_rate = decode_audio(encode(stereo, 8000, format, subtype))
    assert sample_rate == 8000 and waveform.shape == (2, stereo.shape[0]) and waveform.dtype == torch.float32
    np.testing.assert_allclose(waveform.numpy(), stereo.T, atol=1e-6)


@pytest.mark.parametrize(
    "format, subtype",
    [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("FLAC", "PCM_S8"), ("FLAC", "PCM_16")],
)
def test_integer_pcm_equals_libsndfile_float_conversion(format, subtype):
    # decode_audio reads integer PCM as integers and scales it itself (faster); the
    # numbers must be exactly those libsndfile's own float conversion gives.
    stereo = np.stack([tone(0.1).numpy(), tone(0.1, frequency=220, seed=1).numpy()], axis=1)  # (N, 2)
    data = encode(stereo, 16000, format, subtype)
    waveform, sample_rate = decode_audio(data)
    reference, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (N, 2)
    assert sample_rate == 16000 and waveform.dtype == torch.float32
    assert np.array_equal(waveform.numpy(), reference.T)


@pytest.mark.parametrize("format, subtype", [("OGG", "VORBIS"), ("MP3", None)])
def test_lossy_formats_decode(format, subtype):
    waveform, sample_rate = decode_audio(encode(tone(0.5).numpy(), 16000, format, subtype))
    assert sample_rate == 16000 and waveform.shape[0] == 1
    assert abs(waveform.shape[1] - 8000) < 2000 and 0.2 < waveform.abs().max() < 1.0


def test_wav_read_directly_walks_chunks_and_leaves_the_rest_to_libsndfile():
    stereo = np.stack([tone(0.05).numpy(), tone(0.05, frequency=220, seed=1).numpy()], axis=1)  # (N, 2)
    plain = encode(stereo, 16000, "WAV", "PCM_16")
    # A LIST chunk of odd length (padded to even) between fmt and data, as editors write it.
    fmt_end = 12 + 8 + int.from_bytes(plain[16:20], "little")
    extra = b"LIST" + (5).to_bytes(4, "little") + b"INFO!" + b"\0"
    with_list = plain[:4] + (len(plain) - 8 + len(extra)).to_bytes(4, "little") + plain[8:fmt_end] + extra + plain[fmt_end:]
    reference, _ = soundfile.read(io.BytesIO(plain), dtype="float32", always_2d=True)  # (N, 2)
    for data in (plain, with_list):
        samples, rate = read_pcm_wav(data)
        assert rate == 16000 and samples.dtype == np.float32 and np.array_equal(samples, reference)
    # Float, 24-bit and truncated files are libsndfile's to read (or to refuse).
    assert read_pcm_wav(encode(stereo, 16000, "WAV", "FLOAT")) is None
    assert read_pcm_wav(encode(stereo, 16000, "WAV", "PCM_24")) is None
    assert read_pcm_wav(plain[:-10]) is None and read_pcm_wav(b"RIFF") is None
    truncated, _ = decode_audio(plain[:-10])
    assert truncated.shape[1] < stereo.shape[0]


def test_undecodable_audio_raises_value_error():
    with pytest.raises(ValueError, match="cannot decode audio"):
        decode_audio(b"RIFF....WAVEfmt garbage")
    with pytest.raises(ValueError) as raised:
        decode_audio(b"")
    # libsndfile's reason, without the repr of the in-memory file it was given.
    assert str(raised.value) == "cannot decode audio (0 bytes): Format not recognised."


def test_mono_and_resample_match_torchaudio():
    stereo = torch.stack([tone(0.2, 22050), tone(0.2, 22050, frequency=300)])
    assert torch.equal(to_mono(stereo), stereo.mean(dim=0))
    assert torch.equal(to_mono(stereo[:1]), stereo[0])
    expected = torchaudio.functional.resample(stereo.mean(dim=0), 22050, 16000)
    torch.testing.assert_close(resample(stereo.mean(dim=0), 22050, 16000), expected)
    config = AudioPreprocessConfig()
    torch.testing.assert_close(load_waveform(stereo, config, sample_rate=22050), expected)
    with pytest.raises(ValueError, match="sample_rate"):
        load_waveform(stereo, config)


@pytest.mark.parametrize("orig_freq", [44100, 48000, 22050, 11025, 8000, 32000])
def test_resample_at_common_rates_equals_torchaudio(orig_freq):
    waveform = torch.stack([tone(0.3, orig_freq, seed=1), tone(0.3, orig_freq, frequency=3000.0, seed=2)])  # (2, N)
    expected = torchaudio.functional.resample(waveform, orig_freq, 16000)
    ours = resample(waveform, orig_freq, 16000)
    assert ours.shape == expected.shape == (2, resampled_length(waveform.shape[1], orig_freq, 16000))
    # The same filter; torchaudio's cached module builds its kernel in float64 and the
    # function in float32, so the two differ by float32 rounding of a 475-tap sum. Both
    # are that close to the float64 result.
    torch.testing.assert_close(ours, expected, rtol=0, atol=3e-5)
    exact = torchaudio.functional.resample(waveform.double(), orig_freq, 16000)
    assert float((ours.double() - exact).abs().max()) < 2e-5


@pytest.mark.parametrize("orig_freq, new_freq", [(93, 100), (115, 100), (16000, 8000), (8000, 16000), (48000, 16000)])
def test_resample_any_shape_and_dtype_equals_torchaudio(orig_freq, new_freq):
    # The speed lever's ratios, the telephone lever's 2:1 and 1:2, a 3:1 down; batch dims and float64 kept.
    waveform = torch.randn(2, 3, 1601, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = resample(waveform, orig_freq, new_freq)
    assert ours.dtype == torch.float64 and ours.shape == (2, 3, resampled_length(1601, orig_freq, new_freq))
    torch.testing.assert_close(ours, torchaudio.functional.resample(waveform, orig_freq, new_freq), rtol=0, atol=3e-5)
    assert resample(torch.zeros(0), orig_freq, new_freq).shape == (0,)
    assert resample(torch.zeros(3, 0), orig_freq, new_freq).shape == (3, 0)


def sine_frequency_and_amplitude(wave: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Frequency (Hz) of a pure tone, from the peak of its finely zero-padded spectrum, and its amplitude."""
    middle = wave[len(wave) // 8 : -len(wave) // 8]  # away from the filter's edge effects
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle)), n=1 << 21))
    peak = int(np.argmax(spectrum))
    left, centre, right = np.log(spectrum[peak - 1 : peak + 2])
    offset = 0.5 * (left - right) / (left - 2 * centre + right)  # parabolic interpolation between bins
    amplitude = float(np.sqrt(2.0 * np.mean(middle**2)))
    return (peak + offset) * sample_rate / (1 << 21), amplitude


@pytest.mark.parametrize("orig_freq", [11127, 22254, 44101, 176089])
@pytest.mark.parametrize("frequency", [440.0, 2500.0])
def test_resample_at_odd_rates_keeps_pitch_amplitude_and_length(orig_freq, frequency):
    num_samples = int(1.3 * orig_freq) + 7
    time_axis = torch.arange(num_samples, dtype=torch.float64) / orig_freq
    wave = (0.5 * torch.sin(2 * torch.pi * frequency * time_axis)).to(torch.float32)
    out = resample(wave, orig_freq, 16000)
    assert out.shape == (resampled_length(num_samples, orig_freq, 16000),) == (-(-num_samples * 16000 // orig_freq),)
    measured, amplitude = sine_frequency_and_amplitude(out.double().numpy(), 16000)
    reduced_orig, reduced_new = resampling_ratio(orig_freq, 16000)
    ratio_error = abs(reduced_new * orig_freq / (reduced_orig * 16000) - 1)
    assert reduced_orig <= audio_module.MAX_REDUCED_RATE
    assert abs(measured / frequency - 1) < ratio_error + 2e-5  # the ratio's error, and the estimate's
    assert abs(amplitude - 0.5) < 0.5 * 2e-3
    # The last samples are the clip's end, not silence or a cut: the tone runs to the end.
    assert float(out[-200:-20].abs().max()) > 0.45


def test_resampling_ratio_is_exact_for_common_rates_and_close_for_any():
    assert resampling_ratio(44100, 16000) == (441, 160) and resampling_ratio(48000, 16000) == (3, 1)
    assert resampling_ratio(11025, 16000) == (441, 640) and resampling_ratio(16000, 44100) == (160, 441)
    for orig_freq, tolerance in [(11127, 1e-5), (22254, 1e-5), (160082, 6e-4), (176089, 6e-4)]:
        reduced_orig, reduced_new = resampling_ratio(orig_freq, 16000)
        assert reduced_orig <= audio_module.MAX_REDUCED_RATE
        assert abs(reduced_new * orig_freq / (reduced_orig * 16000) - 1) <= tolerance
    worst = 0.0
    for orig_freq in range(4000, 192001, 613):  # a spread of rates, most of them coprime with the targets
        for new_freq in (8000, 16000, 44100, 48000):
            reduced_orig, reduced_new = resampling_ratio(orig_freq, new_freq)
            worst = max(worst, abs(reduced_new * orig_freq / (reduced_orig * new_freq) - 1))
            # The cost of a resample: taps per output sample stay near those of 44.1 kHz -> 16 kHz (475).
            width = math.ceil(6 * reduced_orig / (0.99 * min(reduced_orig, reduced_new)))
            assert reduced_orig + 2 * width <= 1300, (orig_freq, new_freq)
    assert 0 < worst < 6e-4


def assert_fbank_equal(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal log-mel energies, where a bin's energy is not lost in float32 rounding of its frame.

    Bins below a millionth of their frame's strongest bin carry rounding noise only,
    in both implementations; there the energies must still agree to that precision.
    """
    assert ours.shape == reference.shape
    energy, reference_energy = ours.double().exp(), reference.double().exp()
    frame_peak = reference_energy.amax(dim=1, keepdim=True)
    assert bool(((energy - reference_energy).abs() <= 1e-4 * reference_energy + 1e-6 * frame_peak).all())
    strong = reference_energy > 1e-3 * frame_peak
    torch.testing.assert_close(ours[strong], reference[strong], rtol=0, atol=2e-4)


@pytest.mark.parametrize(
    "num_samples, num_mel_bins, sample_rate",
    [(16000, 128, 16000), (16000 * 3 + 77, 128, 16000), (400, 64, 16000), (32000, 64, 32000)],
)
def test_fbank_equals_kaldi_fbank(num_samples, num_mel_bins, sample_rate):
    config = AudioPreprocessConfig(sample_rate=sample_rate, num_mel_bins=num_mel_bins)
    generator = torch.Generator().manual_seed(num_samples)
    waveform = tone(num_samples / sample_rate, sample_rate)[:num_samples] + 0.1 * torch.randn(
        num_samples, generator=generator
    )
    ours, reference = fbank(waveform, config), kaldi_fbank(waveform, config)
    assert ours.shape == (num_frames(num_samples, config), num_mel_bins)
    assert_fbank_equal(ours, reference)


def test_kaldi_fbank_is_called_with_asts_settings():
    config = AudioPreprocessConfig()
    waveform = tone(0.5)
    direct = torchaudio.compliance.kaldi.fbank(
        waveform[None], htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    assert torch.equal(kaldi_fbank(waveform, config), direct)
    assert_fbank_equal(fbank(waveform, config), direct)


def test_fbank_rejects_clips_shorter_than_a_frame():
    with pytest.raises(ValueError, match="shorter than one 25.0 ms frame"):
        fbank(torch.zeros(399), AudioPreprocessConfig())


def test_frame_arithmetic():
    config = AudioPreprocessConfig()
    assert samples_for_frames(1024, config) == 400 + 1023 * 160
    assert num_frames(samples_for_frames(1024, config), config) == 1024
    assert num_frames(samples_for_frames(1024, config) - 1, config) == 1023
    assert num_frames(160_000, config) == 998


def test_train_features_crop_long_clips_keep_short_ones_and_are_seeded():
    config = AudioPreprocessConfig(max_frames=50, num_mel_bins=32)
    long_clip, short_clip = tone(2.0), tone(0.2)
    first = train_audio_features(long_clip, config, random.Random(1))
    assert first.shape == (50, 32)
    assert torch.equal(first, train_audio_features(long_clip, config, random.Random(1)))
    assert not torch.equal(first, train_audio_features(long_clip, config, random.Random(2)))
    whole = normalize_fbank(fbank(short_clip, config), config)
    assert torch.equal(train_audio_features(short_clip, config, random.Random(0)), whole)
    # The crop is a span of the clip: its frames equal the fbank of that span.
    rng = random.Random(1)
    start = rng.randrange(long_clip.shape[0] - samples_for_frames(50, config) + 1)
    span = long_clip[start : start + samples_for_frames(50, config)]
    assert torch.equal(first, normalize_fbank(fbank(span, config), config))


def test_our_defaults_are_asts_feature_extractors():
    hugging_face = ASTFeatureExtractor()
    ours = AudioPreprocessConfig()
    assert (ours.sample_rate, ours.num_mel_bins, ours.max_frames) == (
        hugging_face.sampling_rate, hugging_face.num_mel_bins, hugging_face.max_length)
    assert (ours.norm_mean, ours.norm_std) == (hugging_face.mean, hugging_face.std)


@pytest.mark.parametrize("num_mel_bins", [128, 64])
@pytest.mark.parametrize("hugging_face_filterbank", ["torchaudio", "numpy"])
def test_features_equal_hugging_faces_ast_feature_extractor(monkeypatch, num_mel_bins, hugging_face_filterbank):
    """Filterbank and normalisation, as training and evaluation read a clip, against
    ``transformers.ASTFeatureExtractor`` (no weights). HF fits every clip to ``max_length``
    frames by padding the normalised log-mels with 0 (ours pads the waveform with silence
    and cuts windows), so the clip here fills ``max_length`` exactly; the mel bins, mean and
    std are set as :mod:`multimodal.interop.hf_ast` maps them. HF computes the filterbank
    with torchaudio's Kaldi fbank when torchaudio is installed, else with its own NumPy
    spectrogram: both are compared."""
    if hugging_face_filterbank == "numpy":
        monkeypatch.setattr(hf_ast_features, "is_speech_available", lambda: False)
    generator = torch.Generator().manual_seed(num_mel_bins)
    clip = tone(2.1)[:32077] + 0.1 * torch.randn(32077, generator=generator)  # (samples,), 198 frames
    config = AudioPreprocessConfig(num_mel_bins=num_mel_bins, max_frames=num_frames(len(clip), AudioPreprocessConfig()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # HF's NumPy banks: "a mel filter has all zero values" at 128
        extractor = ASTFeatureExtractor(sampling_rate=config.sample_rate, num_mel_bins=num_mel_bins,
                                        max_length=config.max_frames, mean=config.norm_mean, std=config.norm_std)
        reference = extractor(clip.numpy(), sampling_rate=config.sample_rate, return_tensors="pt")["input_values"][0]
    [ours] = audio_to_features(clip, config, sample_rate=config.sample_rate)  # one window: (T, F)
    assert ours.shape == reference.shape == (198, num_mel_bins)
    # Normalised units: 1e-4 is 1e-3 in log energy, float32 rounding of a 512-point power spectrum.
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)


def test_spec_augment_masks_bands_and_is_off_at_zero():
    features = torch.randn(100, 64) + 5
    off = random.Random(0)
    assert torch.equal(mask_features(features.clone(), 0, 0, off), features)
    assert off.getstate() == random.Random(0).getstate()  # masks that are off draw nothing
    masked_any = False
    for seed in range(20):
        masked = mask_features(features.clone(), freq_mask=20, time_mask=30, rng=random.Random(seed))
        zero_columns = (masked == 0).all(dim=0).sum().item()
        zero_rows = (masked == 0).all(dim=1).sum().item()
        assert zero_columns <= 20 and zero_rows <= 30
        masked_any |= zero_columns > 0 and zero_rows > 0
        kept = masked != 0
        assert torch.equal(masked[kept], features[kept])
    assert masked_any


def test_a_time_mask_alone_blanks_one_span_of_frames_and_no_band():
    # The demo's setting (freq_mask 0): a short word loses at most 10 of its frames, every band kept.
    features = torch.randn(63, 64) + 5  # a 0.63 s clip, as the shortest human recording
    widths = set()
    for seed in range(50):
        masked = mask_features(features.clone(), freq_mask=0, time_mask=10, rng=random.Random(seed))
        blank = (masked == 0).all(dim=1).nonzero().flatten().tolist()  # the frames set to the mean
        assert (masked == 0).sum().item() == len(blank) * 64  # only whole frames, so no band
        if blank:
            assert blank == list(range(blank[0], blank[-1] + 1))  # one span
        assert len(blank) <= 10
        assert torch.equal(masked[masked != 0], features[masked != 0])
        widths.add(len(blank))
    assert len(widths) >= 5  # widths drawn, not fixed


def test_eval_windows_cover_the_whole_clip():
    config = AudioPreprocessConfig(max_frames=40, num_mel_bins=32)
    clip = tone(1.0)  # 98 frames: windows [0, 40), [40, 80), [58, 98)
    whole = normalize_fbank(fbank(clip, config), config)
    windows = eval_audio_windows(clip, config)
    assert [w.shape[0] for w in windows] == [40, 40, 40]
    assert torch.equal(windows[0], whole[:40]) and torch.equal(windows[1], whole[40:80])
    assert torch.equal(windows[2], whole[58:98])
    # A window is exactly the features of its own span of samples.
    span = clip[58 * 160 : 58 * 160 + samples_for_frames(40, config)]
    assert_fbank_equal(windows[2], normalize_fbank(fbank(span, config), config))
    short = eval_audio_windows(tone(0.3), config)
    assert len(short) == 1 and short[0].shape == (num_frames(4800, config), 32)
    exact = eval_audio_windows(clip[: samples_for_frames(80, config)], config)
    assert [w.shape[0] for w in exact] == [40, 40]


def test_eval_features_are_identical_alone_and_batched():
    config = AudioPreprocessConfig(max_frames=60, num_mel_bins=32)
    clips = [tone(0.25, seed=1), tone(0.45, frequency=900, seed=2), tone(0.1, frequency=300, seed=3)]
    alone = [audio_to_features(encode(c.numpy(), 16000, "FLAC"), config)[0] for c in clips]
    audio, padding_mask = collate_audio(alone)
    assert audio.shape == (3, max(a.shape[0] for a in alone), 32)
    for row, features in enumerate(alone):
        length = features.shape[0]
        assert torch.equal(audio[row, :length], features)
        assert not padding_mask[row, :length].any() and padding_mask[row, length:].all()
        assert (audio[row, length:] == 0).all()


# Too short and empty clips: one rule (fit_clip_length) ----------------------------------------


@pytest.mark.parametrize("min_frames", [1, 16])
def test_a_clip_shorter_than_the_encoders_minimum_is_padded_with_silence(min_frames):
    config = AudioPreprocessConfig(num_mel_bins=64, max_frames=100)
    clip = tone(0.01)  # 160 samples: not even one 25 ms frame
    fitted = fit_clip_length(clip, config, min_frames)
    needed = 400 + (min_frames - 1) * 160  # samples_for_frames, written out
    assert fitted.shape == (needed,) and torch.equal(fitted[:160], clip) and not fitted[160:].any()
    windows = eval_audio_windows(clip, config, min_frames=min_frames)
    assert len(windows) == 1 and windows[0].shape == (min_frames, 64)
    # The padded clip's features are the filterbank of the clip followed by zeros, as any clip's are.
    reference = normalize_fbank(kaldi_fbank(torch.cat([clip, torch.zeros(needed - 160)]), config), config)
    assert_fbank_equal(windows[0], reference)
    trained = train_audio_features(clip, config, random.Random(0), min_frames=min_frames)
    torch.testing.assert_close(trained, windows[0])


def test_a_clip_long_enough_is_left_as_it_is():
    config = AudioPreprocessConfig(num_mel_bins=64, max_frames=100)
    clip = tone(0.5)
    assert fit_clip_length(clip, config, 16) is clip
    assert torch.equal(eval_audio_windows(clip, config, min_frames=16)[0], eval_audio_windows(clip, config)[0])
    # Exactly the samples 16 frames need: no padding, 16 frames.
    exact = clip[: samples_for_frames(16, config)]
    assert fit_clip_length(exact, config, 16) is exact
    assert eval_audio_windows(exact, config, min_frames=16)[0].shape == (16, 64)


def test_audio_to_features_pads_bytes_and_waveforms_alike():
    config = AudioPreprocessConfig(num_mel_bins=64, max_frames=100)
    clip = tone(0.1)  # 8 frames
    from_bytes = audio_to_features(encode(clip.numpy(), 16000, "WAV", "FLOAT"), config, min_frames=16)
    from_tensor = audio_to_features(clip, config, sample_rate=16000, min_frames=16)
    assert from_bytes[0].shape == (16, 64) and torch.equal(from_bytes[0], from_tensor[0])
    # No minimum given: the config's (16 by default, the encoder's patch length), in evaluation and training.
    assert torch.equal(audio_to_features(clip, config, sample_rate=16000)[0], from_tensor[0])
    trained = audio_to_features(clip, config, sample_rate=16000, train=True, rng=random.Random(0))
    assert torch.equal(trained, from_tensor[0])
    # A config whose minimum the clip already reaches leaves it at its own length.
    fewer = AudioPreprocessConfig(num_mel_bins=64, max_frames=100, min_frames=4)
    assert audio_to_features(clip, fewer, sample_rate=16000)[0].shape == (8, 64)
    assert eval_audio_windows(tone(0.01), fewer)[0].shape == (4, 64)
    assert train_audio_features(tone(0.01), fewer, random.Random(0)).shape == (4, 64)


@pytest.mark.parametrize("min_frames, words", [
    (0, "audio_preprocess.min_frames must be an integer of at least 1"),
    (True, "audio_preprocess.min_frames must be an integer of at least 1"),
    (101, "audio_preprocess.min_frames 101 exceeds audio_preprocess.max_frames 100"),
])
def test_min_frames_must_fit_a_window(min_frames, words):
    with pytest.raises(ValueError, match=words):
        AudioPreprocessConfig(num_mel_bins=64, max_frames=100, min_frames=min_frames)


@pytest.mark.parametrize("empty", [
    encode(np.zeros((0, 1), np.float32), 16000, "WAV", "FLOAT"),  # a header and no samples, read by libsndfile
    encode(np.zeros((0, 2), np.int16), 44100, "WAV", "PCM_16"),  # read by the direct WAV reader
    encode(np.zeros((0, 1), np.float32), 16000, "OGG", "VORBIS"),
], ids=["wav-float", "wav-pcm16-stereo", "ogg"])
def test_an_empty_clip_is_refused_with_one_message(empty):
    config = AudioPreprocessConfig(num_mel_bins=64, max_frames=100)
    for call in (lambda: load_waveform(empty, config),
                 lambda: audio_to_features(empty, config, min_frames=16),
                 lambda: audio_to_features(torch.zeros(2, 0), config, sample_rate=16000, min_frames=16),
                 lambda: fit_clip_length(torch.zeros(0), config, 16),
                 lambda: eval_audio_windows(torch.zeros(0), config),
                 lambda: train_audio_features(torch.zeros(0), config, random.Random(0))):
        with pytest.raises(ValueError) as raised:
            call()
        assert str(raised.value) == EMPTY_CLIP == "the clip holds no audio samples"
