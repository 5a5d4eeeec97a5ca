"""Speech trimming (runtime/vad.py): silence and quiet noise around an utterance do not change who it is.

Real voices: the Asterisk prompt voices and KLettres recordings (tests/real_speech.py) and ../shared/corpus.
The model is the shipped GE2E, whose pooled embedding moves most with silence (cosine 0.81 with 3 s of it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
from typer.testing import CliRunner

import real_speech
from parity import cosine
from voxfloat.api import Verifier
from voxfloat.cli import app
from voxfloat.export import silero_vad
from voxfloat.metrics import det_curve, eer
from voxfloat.runtime import AudioError, ModelError, SpeakerEncoder, load_audio, silero
from voxfloat.runtime.default_model import default_model_path
from voxfloat.runtime.vad import OFF, SpeechTrimmer, VadSettings
from voxfloat.store import StoreError, VoiceprintStore
from voxfloat.store.vxf import check_header

RATE = 16000
MIN_COSINE = 0.99     # padded against unpadded, every utterance
EER_RELATIVE = 0.05   # padded test side: EER within 5 % (relative) of the unpadded list's


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder(default_model_path(), device="cpu", threads=1)


def padded(wave: np.ndarray, i: int, rng: np.random.Generator) -> np.ndarray:
    """Utterance i with 0.5 to 3 s on both sides (every fourth one on one side only), silence or -70 dBFS noise."""
    before, after = rng.uniform(0.5, 3.0, 2)
    if i % 4 == 3:
        before, after = (before, 0.0) if i % 8 == 3 else (0.0, after)
    return real_speech.pad(wave, before, after, "silence" if i % 2 else "noise", rng)


def speech_or_none(encoder: SpeakerEncoder, wave: np.ndarray, name: str) -> np.ndarray | None:
    try:
        return encoder.speech(wave, name)
    except AudioError as e:
        assert "too little speech" in str(e) or "no speech found" in str(e), str(e)
        return None


@pytest.fixture(scope="module")
def recorded(encoder: SpeakerEncoder) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """24 real speakers x 8 utterances: labels and embeddings of the utterances and of their padded copies, the
    utterances refused padded and unpadded (no or too little speech: KLettres letters Silero does not count as
    speech), and any refused one way only."""
    rng = np.random.default_rng(15)
    labels, plain, pads, refused, one_way = [], [], [], [], []
    for s, (speaker, utterances) in enumerate(real_speech.corpus(count=8).items()):
        for u, wave in enumerate(utterances):
            a = speech_or_none(encoder, wave, f"{speaker}/{u}")
            b = speech_or_none(encoder, padded(wave, 8 * s + u, rng), f"{speaker}/{u} padded")
            if a is None or b is None:
                (refused if a is None and b is None else one_way).append(f"{speaker}/{u}")
                continue
            plain.append(a)
            pads.append(b)
            labels.append(s)
    return np.array(labels), encoder.embed_batch(plain), encoder.embed_batch(pads), refused, one_way


@pytest.mark.parity
def test_padding_keeps_each_recorded_utterance(recorded) -> None:
    labels, plain, pads, refused, one_way = recorded
    assert not one_way, one_way
    assert len(refused) <= 4 and len(labels) + len(refused) == 192 and len(set(labels)) == 24, refused
    c = cosine(plain, pads)
    assert c.min() >= MIN_COSINE, (c.min(), np.argsort(c)[:5])


@pytest.mark.parity
def test_padding_keeps_the_eer(recorded) -> None:
    """All pairs: enrollment side unpadded, test side padded, against both sides unpadded."""
    labels, plain, pads, _, _ = recorded
    i, j = np.triu_indices(len(labels), 1)
    target = labels[i] == labels[j]
    base = eer(det_curve(cosine(plain[i], plain[j]), target))[0]
    moved = eer(det_curve(cosine(plain[i], pads[j]), target))[0]
    assert int(target.sum()) >= 640
    assert abs(moved - base) <= EER_RELATIVE * base, (base, moved)


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["clean", "hard"])
def test_padding_keeps_shared_corpus_utterances(kind: str, corpus_dir: Path, encoder: SpeakerEncoder) -> None:
    rng = np.random.default_rng(16)
    files = sorted((corpus_dir / kind).glob("*/*-u00.flac"))[::4]
    assert len(files) == 15
    plain, pads = [], []
    for i, f in enumerate(files):
        wave = load_audio(f)
        plain.append(encoder.speech(wave, str(f)))
        pads.append(encoder.speech(padded(wave, i, rng), f"{f} padded"))
    c = cosine(encoder.embed_batch(plain), encoder.embed_batch(pads))
    assert c.min() >= MIN_COSINE, (c.min(), [files[k].name for k in np.argsort(c)[:3]])


def published_probabilities(x: np.ndarray, streams: int, hop: int, rate: int, state: np.ndarray) -> np.ndarray:
    """The oracle: the published silero_vad.onnx run window by window, streams side by side, state carried."""
    session = ort.InferenceSession(silero_vad.published_model(), providers=["CPUExecutionProvider"])
    w, c = 2 * silero.FILTER[rate], silero.FILTER[rate] // 4
    steps = (len(x) - w - c) // hop // streams + 1
    state = np.repeat(state, streams, axis=1)
    out = np.empty((streams, steps), np.float32)
    for i in range(steps):
        batch = np.stack([x[(streams * i + streams - 1 - k) * hop:][:w + c] for k in range(streams)])
        prob, state = session.run(None, {"input": batch, "state": state, "sr": np.array(rate, np.int64)})
        out[:, i] = prob[:, 0]
    return out


@pytest.mark.parametrize("rate", [16000, 8000])
def test_the_rearranged_detector_equals_the_published_model(rate: int) -> None:
    """One run over a clip gives every window's probability of the published model, for any grid count and rate."""
    speech = real_speech.corpus(count=1, speakers=1)["asterisk-en_US_f_Allison"][0]
    wave = np.concatenate([speech, np.random.default_rng(3).normal(0, 0.05, RATE).astype(np.float32)])[::RATE // rate]
    detector = silero.grid(rate)
    state = np.random.default_rng(4).normal(0, 0.5, (2, 1, silero.HIDDEN)).astype(np.float32)
    seen = []
    for streams in (1, 2, 4, 8, 16):
        hop = detector.window // streams
        steps = (len(wave) - detector.window - detector.context) // hop // streams
        x = wave[:(steps * streams - 1) * hop + detector.window + detector.context]
        got, _ = detector.run(x, streams, hop, state)
        want = published_probabilities(x, streams, hop, rate, state)
        assert got.shape == want.shape == (streams, steps)
        assert np.abs(got - want).max() < 1e-4, (streams, np.abs(got - want).max())
        with pytest.MonkeyPatch.context() as m:  # a long recording: runs of a few windows, the state carried
            m.setattr(silero, "MAX_WINDOWS", 3 * streams + 1)
            assert np.abs(detector.run(x, streams, hop, state)[0] - got).max() < 1e-5
        seen.append(want)
    assert min(p.min() for p in seen) < 0.1 and max(p.max() for p in seen) > 0.9  # speech and noise both scored
    with pytest.raises(ValueError, match="whole steps"):
        detector.run(wave[:detector.window + detector.context + 1], 1, detector.window, state)


def test_the_shipped_detector_is_rebuilt_byte_for_byte_from_the_published_model() -> None:
    for rate in silero.GRID_FILES:
        assert silero_vad.build(rate) == silero.grid_path(rate).read_bytes(), rate


def test_an_altered_or_missing_detector_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped, models = silero.MODELS, tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(silero, "MODELS", models)
    monkeypatch.setattr(silero, "RECORD", models / "silero_vad.json")
    with pytest.raises(ModelError, match=r"silero_vad_16k\.onnx: the speech detector is missing from this install"):
        silero.SileroGrid(16000)
    (models / "silero_vad.json").write_bytes((shipped / "silero_vad.json").read_bytes())
    data = bytearray((shipped / "silero_vad_16k.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (models / "silero_vad_16k.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"silero_vad_16k\.onnx: not the speech detector this voxfloat ships"):
        silero.SileroGrid(16000)


def test_untrimmed_padding_does_move_the_embedding(encoder: SpeakerEncoder) -> None:
    """Why trimming is on: without it, 3 s of silence each side moves a recorded utterance well below 0.99."""
    wave = real_speech.corpus(count=1, speakers=1)["asterisk-en_US_f_Allison"][0]
    rng = np.random.default_rng(0)
    raw = encoder.embed_batch([wave, real_speech.pad(wave, 3.0, 3.0, "silence", rng)])
    assert cosine(raw[0], raw[1]) < 0.95
    trimmed = encoder.embed_batch([encoder.speech(wave, "a"), encoder.speech(real_speech.pad(wave, 3.0, 3.0,
                                                                                              "silence", rng), "b")])
    assert cosine(trimmed[0], trimmed[1]) >= MIN_COSINE


def noise_files(folder: Path) -> list[Path]:
    """Files holding no speech: white noise at -30 and -70 dBFS, brown (room-like) noise, hum, near-silence."""
    rng = np.random.default_rng(3)
    n = 3 * RATE
    t = np.arange(n) / RATE
    brown = np.cumsum(rng.standard_normal(n))
    brown = 0.05 * (brown - brown.mean()) / np.abs(brown - brown.mean()).max()
    waves = {"white-30.wav": 10 ** (-30 / 20) * rng.standard_normal(n),
             "white-70.flac": 10 ** (-70 / 20) * rng.standard_normal(n),
             "brown.wav": brown,
             "hum.wav": 0.05 * np.sin(2 * np.pi * 50 * t) + 0.02 * np.sin(2 * np.pi * 150 * t),
             "dither.wav": 10 ** (-90 / 20) * rng.standard_normal(n) + 0.0}
    out = []
    for name, wave in waves.items():
        sf.write(folder / name, wave.astype(np.float32), RATE, subtype="FLOAT" if name.endswith(".wav") else "PCM_24")
        out.append(folder / name)
    return out


def test_noise_and_silence_only_files_are_refused(encoder: SpeakerEncoder, tmp_path: Path) -> None:
    bad = noise_files(tmp_path)
    zeros = tmp_path / "zeros.wav"
    sf.write(zeros, np.zeros(2 * RATE, np.float32), RATE)
    speech = real_speech.speaker_files()["asterisk-en_US_f_Allison"][0]
    result = encoder.embed_files([*bad, speech, zeros])
    assert result.paths_ok == [speech] and result.embeddings.shape == (1, 256)
    errors = dict(result.errors)
    for f in bad:
        assert errors[f] == f"{f}: no speech found (Silero VAD)"
    assert "silent" in errors[zeros]


def test_cli_refuses_noise_with_exit_3_and_a_store_keeps_its_trimming(tmp_path: Path) -> None:
    """Exit 3 for a file without speech; a store enrolled with trimming refuses untrimmed audio, and back."""
    files = real_speech.speaker_files()
    (tmp_path / "enroll").mkdir()
    for speaker in ("asterisk-en_US_f_Allison", "asterisk-it_IT_m_Carlo"):
        (tmp_path / "enroll" / speaker).mkdir()
        for f in files[speaker][:2]:
            (tmp_path / "enroll" / speaker / f.name).symlink_to(f)
    store = tmp_path / "s.vxf"
    runner = CliRunner()
    assert runner.invoke(app, ["enroll", str(tmp_path / "enroll"), "-o", str(store), "--device", "cpu"]).exit_code == 0
    noise = noise_files(tmp_path)[0]
    probe = str(files["asterisk-en_US_f_Allison"][5])
    got = runner.invoke(app, ["verify", probe, str(noise), "-s", str(store), "--speaker", "asterisk-en_US_f_Allison",
                              "--device", "cpu"])
    assert got.exit_code == 3 and f"{noise}: no speech found (Silero VAD)" in got.stderr
    off = runner.invoke(app, ["verify", probe, "-s", str(store), "--speaker", "asterisk-en_US_f_Allison",
                              "--device", "cpu", "--no-vad"])
    assert off.exit_code == 4 and "Traceback" not in off.output
    assert off.stderr.count("\n") == 1 and "enrolled with preprocessing" in off.stderr and "not vad=off" in off.stderr
    untrimmed = tmp_path / "raw.vxf"
    assert runner.invoke(app, ["enroll", str(tmp_path / "enroll"), "-o", str(untrimmed), "--device", "cpu",
                               "--no-vad"]).exit_code == 0
    with pytest.raises(StoreError, match=r"raw\.vxf: enrolled with preprocessing vad=off, not .*vad=silero"):
        Verifier(untrimmed, device="cpu").verify(probe, "asterisk-it_IT_m_Carlo")
    assert Verifier(untrimmed, device="cpu", vad=False).info()["preprocessing"] == OFF


def test_store_refuses_other_trimming_settings(tmp_path: Path) -> None:
    enrolled = SpeechTrimmer().preprocessing
    other = SpeechTrimmer(settings=VadSettings(threshold=0.6)).preprocessing
    model = {"fingerprint": "f" * 64, "arch": "ge2e"}
    with VoiceprintStore.edit(tmp_path / "a.vxf", fmt="e4m3", scale="vector", dim=4, model=model,
                              preprocessing=enrolled) as store:
        store.add("x", np.ones((1, 4), np.float32))
    store = VoiceprintStore.open(tmp_path / "a.vxf")
    store.check_preprocessing(dict(enrolled))
    assert store.info()["preprocessing"] == enrolled
    for wrong in (other, OFF):
        with pytest.raises(StoreError, match=r"a\.vxf: enrolled with preprocessing .*threshold=0\.5.*; use the enrolled"):
            store.check_preprocessing(wrong)
    with pytest.raises(StoreError, match="enrolled with preprocessing"):
        with VoiceprintStore.edit(tmp_path / "a.vxf", preprocessing=other):
            pass
    legacy = VoiceprintStore.create(tmp_path / "b.vxf", fmt="e4m3", scale="vector", dim=4, model=model)
    legacy.check_preprocessing(OFF)  # a store without a record was enrolled before trimming existed
    with pytest.raises(StoreError, match="enrolled with preprocessing vad=off"):
        legacy.check_preprocessing(enrolled)
    assert "preprocessing must be an object" in check_header({**store.header, "preprocessing": {"vad": 1}}, False)
    bad = {**store.header, "preprocessing": {"vad": "silero", "pad": [1]}}
    assert "preprocessing setting 'pad' must be" in check_header(bad, False)


def test_trimmed_batches_equal_one_by_one(encoder: SpeakerEncoder, tmp_path: Path) -> None:
    files = real_speech.speaker_files()["klettres-fr"][:6]
    paths = [*files, files[0], files[3]]
    result = encoder.embed_files(paths)
    assert result.paths_ok == paths and not result.errors
    single = np.stack([encoder.embed(encoder.speech(load_audio(p), str(p))) for p in paths])
    assert np.all(cosine(result.embeddings, single) >= 0.99999)


def test_the_speech_is_what_max_seconds_caps(tmp_path: Path) -> None:
    """A 30 s recording with 4 s of speech passes a 10 s cap with trimming; speech over the cap is cut to it."""
    wave = real_speech.corpus(count=1, speakers=1)["asterisk-en_US_f_Allison"][0]
    rng = np.random.default_rng(1)
    long_ = tmp_path / "long.wav"
    sf.write(long_, real_speech.pad(wave[:4 * RATE], 20.0, 6.0, "noise", rng), RATE)
    trimmed = SpeakerEncoder(default_model_path(), device="cpu", threads=1, max_seconds=10)
    assert trimmed.embed_files([long_]).paths_ok == [long_]
    untrimmed = SpeakerEncoder(default_model_path(), device="cpu", threads=1, max_seconds=10, vad=False)
    assert "too long" in untrimmed.embed_files([long_]).errors[0][1]
    capped = SpeakerEncoder(default_model_path(), device="cpu", threads=1, max_seconds=2)
    assert len(capped.speech(wave, "a")) == 2 * RATE
    with pytest.raises(AudioError, match=r"b: too little speech: 0\.\d\d s found by Silero VAD, under the 0\.50 s"):
        capped.speech(np.concatenate([np.zeros(RATE, np.float32), wave[:int(0.3 * RATE)],
                                      np.zeros(RATE, np.float32)]), "b")
