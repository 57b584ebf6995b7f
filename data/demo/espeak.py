"""Speech synthesis with espeak-ng, driven through ctypes.

The ``espeakng-loader`` wheel bundles the shared library and its voice data, so
nothing needs installing system-wide and nothing is downloaded.

Voices are a language (an accent: ``en``, ``en-us``, ``en-gb-x-rp`` ...) and a variant,
the speaker's timbre: one of espeak-ng's own (``en+f3``) or a :class:`VoiceVariant`
made here (formant frequencies, pitch, breathiness, roughness, the Klatt voice source),
which the engine writes as a variant file into its own data folder: a folder of links
to the wheel's data, so the installed package is never written to.

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

import atexit
import ctypes
import hashlib
import multiprocessing
import shutil
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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


# Klatt voice sources espeak-ng knows (variant keyword ``klatt N``); 0 is its own synthesiser.
KLATT_VOICES = (0, 1, 2, 3, 4, 5, 6)
NUM_FORMANTS = 9  # formants 0-8 in a variant file


@dataclass(frozen=True)
class VoiceVariant:
    """A speaker's timbre for espeak-ng: the contents of a voice variant file.

    Percentages are of the language's own values (100: unchanged). See espeak-ng's
    docs/voices.md for each keyword.

    Args:
        pitch: (base, top) of the voice's pitch range, in Hz.
        formants: (frequency %, height %, width %) of formants 0-8, in order. Scaling
            every frequency together is what a longer or shorter vocal tract does.
        gender: ``"male"`` or ``"female"`` (espeak adjusts a few defaults by it).
        klatt: 0 for espeak's own synthesiser, 1-6 for a Klatt voice source.
        breath: breathiness (0-100ish) of formants 1-8; Klatt voices only, () for none.
        flutter: slow random wobble of the pitch (espeak's default 64 sounds steady-ish).
        roughness: 0-7, irregularity of the glottal pulses (creak).
        voicing: loudness of voiced sounds, % (consonants unchanged).
        tone: spectral tilt as (frequency Hz, amplitude 0-255) points, () for espeak's.
    """

    pitch: tuple[int, int]
    formants: tuple[tuple[int, int, int], ...]
    gender: str = "male"
    klatt: int = 0
    breath: tuple[int, ...] = ()
    flutter: int = 64
    roughness: int = 2
    voicing: int = 100
    tone: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if len(self.formants) != NUM_FORMANTS:
            raise ValueError(f"VoiceVariant.formants: give {NUM_FORMANTS} (frequency, height, width), got {len(self.formants)}")
        if self.gender not in ("male", "female"):
            raise ValueError(f"VoiceVariant.gender must be 'male' or 'female', got {self.gender!r}")
        if self.klatt not in KLATT_VOICES:
            raise ValueError(f"VoiceVariant.klatt must be one of {KLATT_VOICES}, got {self.klatt}")
        if not 0 < self.pitch[0] < self.pitch[1]:
            raise ValueError(f"VoiceVariant.pitch must be (base, top) Hz with 0 < base < top, got {self.pitch}")

    def file_text(self) -> str:
        """The variant file espeak-ng reads (``voices/!v/NAME``)."""
        lines = ["language variant", f"name {self.file_name}", f"gender {self.gender}",
                 f"pitch {self.pitch[0]} {self.pitch[1]}"]
        lines += [f"formant {index} {f} {h} {w}" for index, (f, h, w) in enumerate(self.formants)]
        lines += [f"klatt {self.klatt}", f"flutter {self.flutter}", f"roughness {self.roughness}",
                  f"voicing {self.voicing}"]
        if self.breath:
            lines.append("breath " + " ".join(str(b) for b in self.breath))
        if self.tone:
            lines.append("tone " + " ".join(f"{frequency} {amplitude}" for frequency, amplitude in self.tone))
        return "\n".join(lines) + "\n"

    @property
    def file_name(self) -> str:
        """A name given by the contents: the same variant always has the same file (espeak keeps names short)."""
        fields = repr((self.pitch, self.formants, self.gender, self.klatt, self.breath, self.flutter, self.roughness,
                       self.voicing, self.tone))
        return "mm" + hashlib.sha256(fields.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SpeechRequest:
    """One utterance to synthesise.

    Args:
        text: what to say; a final ``?``, ``!`` or ``,`` changes the intonation.
        voice: espeak-ng voice name: a language, optionally with one of espeak's variants
            after ``+`` (``"en"``, ``"en-us+f3"``, ``"en-gb-x-rp+m3"``, ``"en+croak"``).
        rate: speaking rate in words per minute (espeak accepts 80-450; default 175).
        pitch: base pitch, 0-100 (default 50): moves the voice's pitch range.
        pitch_range: pitch variation (intonation), 0-100 (default 50).
        variant: a timbre of our own instead of espeak's; ``voice`` then names only the language.
    """

    text: str
    voice: str = "en"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    variant: VoiceVariant | None = None


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
        self._data = _linked_data_folder(Path(espeakng_loader.get_data_path()))
        self._variants_folder = self._data / "voices" / "!v"
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
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self._data).encode(), _INITIALIZE_DONT_EXIT
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
        voice = request.voice
        if request.variant is not None and "+" in voice:
            raise ValueError(f"SpeechRequest.voice={voice!r} names a variant and SpeechRequest.variant gives "
                             "another; with a variant, voice names only the language ('en', 'en-us' ...)")
        with self._lock:
            if request.variant is not None:
                voice = f"{voice}+{self._add_variant(request.variant)}"
            library = self._library
            if library.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(
                    f"espeak-ng has no voice {voice!r}; use a language such as 'en', 'en-us', 'en-gb-x-rp', "
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

    def _add_variant(self, variant: VoiceVariant) -> str:
        path = self._variants_folder / variant.file_name
        if not path.exists():  # the name is given by the contents: an existing file is this variant
            path.write_text(variant.file_text(), encoding="utf-8")
        return variant.file_name


def _linked_data_folder(source: Path) -> Path:
    """A temporary copy of espeak-ng's data folder made of links, with its own (writable) variants folder.

    Removed when the process exits. Where links cannot be made, the files are copied.
    """
    root = Path(tempfile.mkdtemp(prefix="espeak-ng-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = root / "espeak-ng-data"

    def link(target: Path, link_path: Path) -> None:
        try:
            link_path.symlink_to(target, target_is_directory=target.is_dir())
        except OSError:
            (shutil.copytree if target.is_dir() else shutil.copy2)(target, link_path)

    data.mkdir()
    for entry in source.iterdir():
        if entry.name != "voices":
            link(entry, data / entry.name)
    (data / "voices").mkdir()
    for entry in (source / "voices").iterdir():
        if entry.name != "!v":
            link(entry, data / "voices" / entry.name)
    (data / "voices" / "!v").mkdir()
    for entry in (source / "voices" / "!v").iterdir():
        link(entry, data / "voices" / "!v" / entry.name)
    return data


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
