"""The voices of the demo's synthetic speech: which espeak-ng voices train, which are held out, and new ones.

A voice is an English accent (a language of espeak-ng) with a variant (a timbre). Three kinds:

- held out for validation: four of espeak-ng's variants, never heard in training in
  any accent, and no derived voice is made from them;
- espeak-ng's other variants, less the deliberately inhuman ones (robots, "Demonic");
- derived voices: timbres drawn at random per build (:func:`derived_voices`): formant
  frequencies scaled together (a longer or shorter vocal tract: men, women, children),
  heights and widths jittered, a pitch range, breathiness, creak, pitch wobble,
  spectral tilt, and either espeak's own synthesiser or one of its Klatt voice sources.

Many voices with few clips each generalise better to unheard voices than few voices
with many clips (a small supervised CNN reached 93-95% on the held-out voices with 20
voices x 14 clips per digit against 80-93% with 12 x 24), hence the derived voices.
"""
from __future__ import annotations

import numpy as np

from multimodal.data.demo.espeak import NUM_FORMANTS, VoiceVariant

# espeak-ng's English accents.
ENGLISH_ACCENTS = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
# Held-out voices keep the accents they had since the first demo, so their scores compare across versions.
VALIDATION_VOICES = (
    "en-us+m7",
    "en-gb-scotland+f4",
    "en-029+f5",
    "en-gb-x-gbclan+Michael",
)
# espeak-ng's variants (voices/!v of the espeakng-loader wheel) that train: all but the
# held-out four and the robotic or monstrous ones (robosoft*, UniRobot, anikaRobot,
# Demonic) and "Mr serious" (a space in its name). Each training clip draws its accent.
TRAIN_VARIANTS = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Hugo", "Jacky", "Lee", "Marco", "Mario", "Mike", "Nguyen", "Reed", "RicishayMax", "RicishayMax2",
    "RicishayMax3", "Storm", "Tweaky", "adam", "anika", "announcer", "antonio", "aunty", "belinda", "benjamin",
    "boris", "caleb", "croak", "david", "ed", "edward", "edward2", "f1", "f2", "f3", "fast", "grandma", "grandpa",
    "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt3",
    "klatt4", "klatt5", "klatt6", "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m8", "marcelo", "max", "michel",
    "miguel", "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby",
    "steph", "steph2", "steph3", "travis", "victor", "whisper", "whisperf", "zac",
)

# Formant frequency scale of a derived voice (100%: espeak's language default, an adult
# man's) by kind, and its pitch (base Hz, then top as a multiple of base). Adult women's
# formants sit some 15-20% above men's, children's higher still.
_SPEAKER_KINDS = {
    "man": {"gender": "male", "formant_scale": (0.86, 1.03), "pitch_base": (70, 130), "weight": 0.45},
    "woman": {"gender": "female", "formant_scale": (1.03, 1.2), "pitch_base": (150, 235), "weight": 0.45},
    "child": {"gender": "female", "formant_scale": (1.18, 1.32), "pitch_base": (220, 300), "weight": 0.10},
}


def variant_name(voice: str) -> str:
    """The variant part of a voice name: ``"en-us+m7"`` -> ``"m7"``."""
    return voice.split("+", 1)[1]


def derived_voices(count: int, seed: int) -> list[tuple[str, VoiceVariant]]:
    """``count`` timbres of our own, drawn from ``seed``: ``(kind, variant)`` each, the same for the same arguments."""
    kinds = list(_SPEAKER_KINDS)
    weights = np.array([_SPEAKER_KINDS[kind]["weight"] for kind in kinds])
    voices = []
    for index in range(count):
        rng = np.random.default_rng([seed, 7, index])
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        voices.append((kind, _draw_variant(_SPEAKER_KINDS[kind], rng)))
    return voices


def _draw_variant(kind: dict, rng: np.random.Generator) -> VoiceVariant:
    scale = rng.uniform(*kind["formant_scale"])
    formants = []
    for index in range(NUM_FORMANTS):
        if index == 0:  # espeak's formant 0 is a low resonance below F1: left at its frequency
            frequency = 100.0
        elif index <= 5:  # F1-F5 move with the tract, each a little on its own
            frequency = 100 * scale * rng.uniform(0.96, 1.04)
        else:  # the high formants only colour the top of the spectrum
            frequency = 100 * scale
        height = rng.uniform(70, 130) if index <= 5 else rng.uniform(40, 110)
        width = rng.uniform(80, 150)
        formants.append((round(frequency), round(height), round(width)))
    base = int(rng.integers(kind["pitch_base"][0], kind["pitch_base"][1] + 1))
    top = round(base * rng.uniform(1.25, 1.8))
    klatt = 0 if rng.random() < 0.5 else int(rng.integers(1, 7))
    breath: tuple[int, ...] = ()
    if klatt and rng.random() < 0.4:  # breathiness needs a Klatt voice source
        strength = rng.uniform(10, 50)
        breath = tuple(round(strength * falloff) for falloff in (1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.0))
    tone: tuple[tuple[int, int], ...] = ()
    if rng.random() < 0.5:  # spectral tilt: darker or brighter than espeak's default
        tone = ((600, int(rng.integers(130, 256))), (1200, int(rng.integers(90, 201))),
                (2000, int(rng.integers(60, 161))), (3000, int(rng.integers(40, 141))))
    return VoiceVariant(
        pitch=(base, top),
        formants=tuple(formants),
        gender=kind["gender"],
        klatt=klatt,
        breath=breath,
        flutter=int(rng.integers(0, 61)),
        roughness=int(rng.integers(0, 6)),
        voicing=int(rng.integers(75, 131)),
        tone=tone,
    )
