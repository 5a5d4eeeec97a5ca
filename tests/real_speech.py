"""Real recorded voices from Debian packages, and the silence or room noise that recordings start and end with.

Speakers: the five Asterisk prompt voices (asterisk-core-sounds-{en,fr,it,ru}-wav: professional
speakers, 8 kHz telephone prompts; Allison's Spanish set is left out, she is the English voice) and the KLettres letter and syllable recordings
(klettres-data, one speaker per language, with the pauses of the original takes). An utterance is
consecutive files of one speaker joined until it lasts `seconds`. KLettres' Malayalam set is left out: its
letters are recorded loud and clipped, Silero VAD rates them near 0.5, and some utterances are refused as too
little speech rather than embedded (README, Speech trimming).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from voxfloat.runtime import load_audio

ASTERISK = Path("/usr/share/asterisk/sounds")
KLETTRES = Path("/usr/share/klettres")
ASTERISK_VOICES = {"en_US_f_Allison": "en", "fr_CA_f_June": "fr", "it_IT_f_Menardi": "it", "it_IT_m_Carlo": "it",
                   "ru_RU_f_IvrvoiceRU": "ru"}  # voice folder: package language
KLETTRES_LANGS = ("ar", "cs", "da", "de", "en", "en_GB", "es", "fr", "he", "hu", "it", "lt", "nb", "nds",
                  "nl", "pt_BR", "ru", "tn", "uk")
NOISE_DBFS = -70.0  # quiet room noise: a door intercom or a microphone opened early


def speaker_files() -> dict[str, list[Path]]:
    """Audio files per speaker, sorted; FileNotFoundError names the Debian package that is missing."""
    out: dict[str, list[Path]] = {}
    for voice, lang in ASTERISK_VOICES.items():
        folder = ASTERISK / voice
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: apt-get install asterisk-core-sounds-{lang}-wav")
        out[f"asterisk-{voice}"] = sorted(folder.glob("*.wav"))
    if not KLETTRES.is_dir():
        raise FileNotFoundError(f"{KLETTRES} is missing: apt-get install klettres-data")
    for lang in KLETTRES_LANGS:
        out[f"klettres-{lang}"] = sorted((KLETTRES / lang).rglob("*.ogg"))
    return out


def utterances(files: list[Path], count: int, seconds: float) -> list[np.ndarray]:
    """`count` 16 kHz utterances of at least `seconds` and 3 files (a letter each, in KLettres), joined in order."""
    out: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    for f in files:
        parts.append(load_audio(f, min_seconds=0.0))
        if sum(map(len, parts)) >= seconds * 16000 and len(parts) >= 3:
            out.append(np.concatenate(parts))
            parts = []
            if len(out) == count:
                return out
    raise ValueError(f"{files[0].parent}: only {len(out)} utterances of {seconds} s, {count} wanted")


def corpus(count: int = 8, seconds: float = 2.5, speakers: int | None = None) -> dict[str, list[np.ndarray]]:
    """`count` utterances for each of the first `speakers` speakers (all 24 by default)."""
    files = speaker_files()
    names = list(files)[:speakers]
    return {name: utterances(files[name], count, seconds) for name in names}


def pad(wave: np.ndarray, before: float, after: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`wave` with `before`/`after` seconds of digital silence (kind "silence") or -70 dBFS white noise ("noise")."""
    n0, n1 = round(before * 16000), round(after * 16000)
    if kind == "silence":
        return np.concatenate([np.zeros(n0, np.float32), wave, np.zeros(n1, np.float32)])
    if kind != "noise":
        raise ValueError(f"kind must be silence or noise, not {kind!r}")
    rms = 10 ** (NOISE_DBFS / 20)
    noise = (rms * rng.standard_normal(n0 + n1)).astype(np.float32)
    return np.concatenate([noise[:n0], wave, noise[n0:]])
