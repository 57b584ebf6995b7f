"""A direct reader for the commonest audio file: RIFF/WAVE with 8-, 16- or 32-bit integer PCM.

libsndfile reads these through a virtual file of Python callbacks, which costs about
150 us per file on top of the samples themselves: for the 1 s clips of a speech data
set that is most of the decoding time (``python -m bench audio``). Here the chunks are
walked in the bytes and the samples are one ``np.frombuffer``. Anything else (24-bit,
float, WAVE_FORMAT_EXTENSIBLE, a truncated or odd file) returns None and is left to
libsndfile, so the result is always what libsndfile gives, scaled the same way.
"""
from __future__ import annotations

import struct

import numpy as np

_PCM = 1  # WAVE_FORMAT_PCM
# Sample width in bytes -> (dtype as stored, scale to [-1, 1)); 8-bit WAV is unsigned, centred on 128.
_LAYOUTS = {1: (np.uint8, 2.0**-7), 2: (np.dtype("<i2"), 2.0**-15), 4: (np.dtype("<i4"), 2.0**-31)}


def read_pcm_wav(data: bytes) -> tuple[np.ndarray, int] | None:
    """``(samples float32 (N, C), sample_rate)`` of an integer-PCM WAV file, or None for any other file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    position, format_chunk = 12, None
    while position + 8 <= len(data):
        chunk_id, size = data[position : position + 4], struct.unpack_from("<I", data, position + 4)[0]
        body = position + 8
        if body + size > len(data):
            return None  # truncated, or a streaming writer's placeholder size: libsndfile decides
        if chunk_id == b"fmt ":
            if size < 16:
                return None
            format_chunk = struct.unpack_from("<HHIIHH", data, body)
        elif chunk_id == b"data":
            return _samples(format_chunk, data, body, size)
        position = body + size + (size & 1)  # chunks are padded to an even length
    return None


def _samples(format_chunk, data: bytes, start: int, size: int) -> tuple[np.ndarray, int] | None:
    if format_chunk is None:
        return None
    tag, channels, sample_rate, _, block_align, bits = format_chunk
    width = bits // 8
    if (tag != _PCM or bits % 8 or width not in _LAYOUTS or channels < 1 or block_align != channels * width
            or sample_rate < 1):
        return None
    dtype, scale = _LAYOUTS[width]
    frames = size // block_align
    stored = np.frombuffer(data, dtype=dtype, count=frames * channels, offset=start)
    samples = stored.astype(np.float32).reshape(frames, channels)  # (N, C)
    if width == 1:
        samples -= np.float32(128.0)
    samples *= np.float32(scale)
    return samples, int(sample_rate)
