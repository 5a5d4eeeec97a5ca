"""Build the demo population: real voices from Debian's Asterisk prompts plus espeak-ng voices.

Writes OUT/audio/<speaker>/*.wav, OUT/enroll.csv (3 utterances a speaker), OUT/tests.txt (the
rest) and OUT/trials.txt (every pair of utterances, VoxCeleb format). Nothing here is needed by
the package; it only makes audio for `make demo` on a machine without ../shared. Every system file
it reads comes from a package in debian-packages.txt (tests/test_demo.py checks that with dpkg -S);
files are opened with Python's open so that the check sees them.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import soundfile as sf

ASTERISK = Path("/usr/share/asterisk/sounds")
# One speaker each (it_IT_f_Menardi: asterisk-prompt-it-menardi-wav; the others: asterisk-core-sounds-*-wav);
# Allison Smith recorded both the US English and the Mexican Spanish prompts.
REAL = {"allison": ["en_US_f_Allison", "es_MX_f_Allison"], "june": ["fr_CA_f_June"],
        "menardi": ["it_IT_f_Menardi"], "carlo": ["it_IT_m_Carlo"], "ivr-ru": ["ru_RU_f_IvrvoiceRU"]}
SYNTH = {"espeak-adam": "en-us+adam", "espeak-linda": "en-gb+linda", "espeak-john": "en-gb-scotland+john",
         "espeak-alicia": "en-us+Alicia", "espeak-max": "en-029+max", "espeak-belinda": "en-gb-x-rp+belinda"}
SENTENCES = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
]
PER_SPEAKER, ENROLL = 10, 3


def duration(path: Path) -> float:
    """Seconds of audio in a file, read from its header."""
    with open(path, "rb") as fh:
        return sf.info(fh).duration


def real_speaker(dirs: list[str], out: Path, rng: random.Random) -> list[Path]:
    """Copy PER_SPEAKER prompts of 2 to 8 seconds from the speaker's Asterisk folders."""
    files = sorted(f for d in dirs for f in (ASTERISK / d).glob("*.wav") if 2.0 <= duration(f) <= 8.0)
    picked = rng.sample(files, PER_SPEAKER)
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(picked):
        shutil.copyfile(f, out / f"u{i:02d}-{f.parent.name[:5]}-{f.stem}.wav")
    return sorted(out.glob("*.wav"))


def synth_speaker(voice: str, out: Path, rng: random.Random) -> list[Path]:
    """Speak the sentences with one espeak-ng voice, varying speed and pitch a little."""
    out.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(SENTENCES[:PER_SPEAKER]):
        wav = out / f"u{i:02d}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rng.randint(150, 185)), "-p", str(rng.randint(35, 65)),
                        "-w", str(wav), text], check=True)
    return sorted(out.glob("*.wav"))


def main(out: Path) -> None:
    rng = random.Random(7)
    audio = out / "audio"
    shutil.rmtree(audio, ignore_errors=True)
    speakers = {s: real_speaker(d, audio / s, rng) for s, d in REAL.items()}
    speakers.update({s: synth_speaker(v, audio / s, rng) for s, v in SYNTH.items()})
    rel = {s: [str(f.relative_to(audio)) for f in files] for s, files in speakers.items()}
    (out / "enroll.csv").write_text("speaker,path\n" + "".join(
        f"{s},audio/{f}\n" for s, fs in rel.items() for f in fs[:ENROLL]))
    (out / "tests.txt").write_text("".join(f"{s} audio/{f}\n" for s, fs in rel.items() for f in fs[ENROLL:]))
    utts = [(s, f) for s, fs in rel.items() for f in fs]
    (out / "trials.txt").write_text("".join(
        f"{int(a[0] == b[0])} {a[1]} {b[1]}\n" for i, a in enumerate(utts) for b in utts[i + 1:]))
    print(f"demo population: {len(REAL)} real Asterisk voices + {len(SYNTH)} espeak-ng voices, "
          f"{len(utts)} utterances in {audio}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
