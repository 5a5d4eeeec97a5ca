"""Measure the shipped model's default threshold on real recorded speech (tests/real_speech.py's voices).

Each speaker is enrolled from 3 random utterances (the README's recommended enrollment), the rest are
held-out tests against every voiceprint; DRAWS random enrollments are pooled. The default is
voxfloat.selfcal's operating point on the pooled held-out scores, the same point self-calibration
estimates from an enrollment's own leave-one-out trials. Prints the table README.md quotes.

    .venv/bin/python bench/default_threshold.py   # about a minute on 2 CPU cores
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import real_speech  # noqa: E402  (Debian's Asterisk and KLettres recordings)

from voxfloat.api import embed_audio, open_encoder  # noqa: E402
from voxfloat.selfcal import RATIO, operating_point  # noqa: E402

ENROLL, PER_SPEAKER, DRAWS = 3, 7, 20


def unit(E: np.ndarray) -> np.ndarray:
    return E / np.linalg.norm(E, axis=-1, keepdims=True)


def held_out_scores(E: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosines of one random 3-utterance enrollment per speaker against the held-out rest."""
    order = {s: rng.permutation(len(e)) for s, e in E.items()}
    prints = {s: unit(unit(E[s][o[:ENROLL]]).mean(axis=0)) for s, o in order.items()}
    tests = {s: unit(E[s][o[ENROLL:]]) for s, o in order.items()}
    genuine = np.concatenate([tests[s] @ prints[s] for s in E])
    impostor = np.concatenate([tests[t] @ prints[s] for s in E for t in E if t != s])
    return genuine, impostor


def main() -> None:
    pop = real_speech.corpus(count=PER_SPEAKER)
    encoder = open_encoder(device="cpu")  # the shipped model, speech trimming on: what enrollment and verify do
    E, dropped = {}, []
    for speaker, waves in pop.items():
        rows, errors = embed_audio(encoder, waves)
        dropped += [f"{speaker}: {e}" for e in errors]  # too little speech once trimmed, say
        kept = [r for r in rows if r is not None]
        if len(kept) > ENROLL:
            E[speaker] = np.stack(kept)
    rng = np.random.default_rng(0)
    draws = [held_out_scores(E, rng) for _ in range(DRAWS)]
    genuine = np.concatenate([g for g, _ in draws])
    impostor = np.concatenate([i for _, i in draws])
    default = operating_point(genuine, impostor)
    for line in dropped:
        print(f"left out: {line}")
    kl = sum(1 for s in E if s.startswith("klettres"))
    print(f"{len(E)} real voices ({len(E) - kl} Asterisk, {kl} KLettres), up to {PER_SPEAKER} utterances each, "
          f"{ENROLL}-utterance enrollment, {DRAWS} draws: {len(genuine)} genuine / {len(impostor)} impostor trials")
    print(f"operating point (impostor z = {RATIO} x genuine z): {default:.3f}\n")
    print("| threshold | genuine accepted % | impostors accepted % |\n|---:|---:|---:|")
    for t in sorted({round(default, 3), 0.78, 0.80, 0.82, 0.84, 0.855}):
        print(f"| {t:.3f} | {100 * (genuine >= t).mean():.1f} | {100 * (impostor >= t).mean():.2f} |")


if __name__ == "__main__":
    main()
