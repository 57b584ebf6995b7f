"""Speech synthesis with espeak-ng, driven through ctypes.

The ``espeakng-loader`` wheel bundles the shared library and its voice data, so
nothing needs installing system-wide and nothing is downloaded.

Two facts about the engine shape this module:

- it is one per process (the library holds global state), so :class:`Espeak`
  is a per-process singleton guarded by a lock;
- it carries state from one utterance to the next (a glottal "flutter" phase,
  filter memories) and seeds its noise from the clock, so the same request can
  give slightly different samples depending on what was spoken before. With
  ``espeak_ng_SetRandSeed`` set before each request, a fresh process speaking
  the same list in the same order gives identical samples:
  :func:`synthesize_in_fresh_process` does exactly that, for reproducible data.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

# espeak_AUDIO_OUTPUT: the callback receives the samples and espeak_Synth returns when done.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# Initialisation option: report errors instead of calling exit().
_INITIALIZE_DONT_EXIT = 0x8000
# espeak_PARAMETER ids.
_PARAMETER_RATE = 1
_PARAMETER_PITCH = 3
_PARAMETER_RANGE = 4
_POSITION_CHARACTER = 1
_CHARS_UTF8 = 1

# espeak-ng synthesises at this rate, whatever the voice.
ESPEAK_SAMPLE_RATE = 22050

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class SpeechRequest:
    """One utterance to synthesise.

    Args:
        text: what to say.
        voice: espeak-ng voice name: a language, optionally with a variant after
            ``+`` (``"en"``, ``"en-us+f3"``, ``"en-gb-x-rp+m3"``, ``"en+croak"``).
        rate: speaking rate in words per minute (espeak accepts 80-450; default 175).
        pitch: base pitch, 0-100 (default 50).
        pitch_range: pitch variation (intonation), 0-100 (default 50).
    """

    text: str
    voice: str = "en"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


class Espeak:
    """The espeak-ng engine of this process; get it with :meth:`instance`."""

    _instance: Espeak | None = None
    _instance_lock = threading.Lock()

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as error:
            raise ImportError(
                "speech synthesis needs the espeakng-loader package (it bundles espeak-ng and its voices); "
                "install the project's demo extra: pip install -e '.[demo]'"
            ) from error
        library = ctypes.CDLL(espeakng_loader.get_library_path())
        library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        library.espeak_Initialize.restype = ctypes.c_int
        library.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        library.espeak_SetSynthCallback.restype = None
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetVoiceByName.restype = ctypes.c_int
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_SetParameter.restype = ctypes.c_int
        library.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size in bytes, terminating NUL included
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier (out)
            ctypes.c_void_p,  # user data
        ]
        library.espeak_Synth.restype = ctypes.c_int
        library.espeak_Synchronize.restype = ctypes.c_int
        library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        library.espeak_ng_SetRandSeed.restype = None
        sample_rate = library.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (status {sample_rate})")
        if sample_rate != ESPEAK_SAMPLE_RATE:
            raise RuntimeError(f"espeak-ng reports {sample_rate} Hz, expected {ESPEAK_SAMPLE_RATE}: an unexpected build")
        self._library = library
        self._chunks: list[np.ndarray] = []
        # Kept as an attribute: ctypes callbacks must outlive every call that may use them.
        self._callback = _SYNTH_CALLBACK(self._receive)
        library.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self.sample_rate = sample_rate

    @classmethod
    def instance(cls) -> Espeak:
        """The engine of this process, initialised on first use."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _receive(self, samples, num_samples, events) -> int:
        if num_samples > 0 and samples:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(num_samples,)).copy())
        return 0  # 0: continue synthesising

    def synthesize(self, request: SpeechRequest, seed: int = 0) -> np.ndarray:
        """Speak one request: int16 samples (N,) at :attr:`sample_rate` (22050 Hz)."""
        for name, value, low, high in (("rate", request.rate, 80, 450), ("pitch", request.pitch, 0, 100),
                                       ("pitch_range", request.pitch_range, 0, 100)):
            if not low <= value <= high:
                raise ValueError(f"SpeechRequest.{name}={value} is outside espeak-ng's range [{low}, {high}]")
        with self._lock:
            library = self._library
            if library.espeak_SetVoiceByName(request.voice.encode()) != 0:
                raise ValueError(
                    f"espeak-ng has no voice {request.voice!r}; use a language such as 'en', 'en-us', 'en-gb-x-rp', "
                    "optionally with a variant: 'en+f3', 'en-us+m2', 'en+croak'"
                )
            library.espeak_SetParameter(_PARAMETER_RATE, request.rate, 0)
            library.espeak_SetParameter(_PARAMETER_PITCH, request.pitch, 0)
            library.espeak_SetParameter(_PARAMETER_RANGE, request.pitch_range, 0)
            library.espeak_ng_SetRandSeed(seed)
            self._chunks = []
            text = request.text.encode("utf-8")
            status = library.espeak_Synth(text, len(text) + 1, 0, _POSITION_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"espeak-ng failed to speak {request.text!r} (status {status})")
            library.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks)


def synthesize(requests: list[SpeechRequest], seed: int = 0) -> list[np.ndarray]:
    """Speak requests in this process, in order; request ``i`` uses noise seed ``seed + i``.

    Samples depend slightly on what this process spoke before (see the module
    docstring); use :func:`synthesize_in_fresh_process` for reproducible output.
    """
    engine = Espeak.instance()
    return [engine.synthesize(request, seed=seed + index) for index, request in enumerate(requests)]


def synthesize_in_fresh_process(requests: list[SpeechRequest], seed: int = 0) -> list[np.ndarray]:
    """Like :func:`synthesize`, in a new process: the same requests always give the same samples.

    Uses a "spawn" child, so a script calling this should keep its top level under
    ``if __name__ == "__main__":`` as multiprocessing requires.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(synthesize, list(requests), seed).result()
