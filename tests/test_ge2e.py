"""GE2E default model: loads resemblyzer's pretrained.pt, matches resemblyzer, exports to dynamic ONNX."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from voxfloat.export.core import ExportError, export_onnx
from voxfloat.export.ge2e import LAYOUT, N_FFT, GE2EEncoder, build, default_checkpoint, partial_count
from voxfloat.export.frontends import MelPower
from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from voxfloat.store.formats import get_format
from parity import cosine, ort_session

pytestmark = pytest.mark.parity
SR = 16000
SCALE_FORMAT = "e4m3"
# 0.5 s .. 20 s, with lengths on both sides of the second partial's appearance (25440 samples) and of
# resemblyzer's rule that drops a last partial less than 75% covered (kept from 31520 and 43840 samples).
LENGTHS = [8000, 17777, 25439, 25440, 31519, 31520, 43839, 43840, 60000, 123457, 320000]


@pytest.fixture(scope="module")
def built(ge2e):
    torch.set_num_threads(1)
    return ge2e


@pytest.fixture(scope="module")
def sessions(built, ge2e_onnx, tmp_path_factory):
    """The default model without (the run's shared export) and with the scaling node: name -> (session, card)."""
    scaled = tmp_path_factory.mktemp("ge2e") / f"ge2e-{SCALE_FORMAT}.onnx"
    export_onnx(built.encoder, built.card, scaled, SCALE_FORMAT, dynamo=built.dynamo)
    made = {}
    for fmt, path in ((None, ge2e_onnx), (SCALE_FORMAT, scaled)):
        card = ModelCard.from_metadata({p.key: p.value for p in onnx.load(path).metadata_props})
        made[fmt] = ort_session(path, threads=1), card
    return made


@pytest.fixture(scope="module")
def corpus_files(corpus_dir: Path) -> list[Path]:
    """10 clean and 10 hard utterances from 20 different speakers."""
    speakers = sorted(p.name for p in (corpus_dir / "clean").iterdir())[:20]
    return ([corpus_dir / "clean" / s / f"{s}-u00.flac" for s in speakers[:10]]
            + [corpus_dir / "hard" / s / f"{s}-u01.flac" for s in speakers[10:]])


@pytest.fixture(scope="module")
def long_audio(corpus_files) -> np.ndarray:
    """Real speech long enough to cut every test length from (concatenated corpus files)."""
    audio = np.concatenate([sf.read(f, dtype="float32")[0] for f in corpus_files[:8]])
    assert len(audio) >= max(LENGTHS)
    return audio


def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def torch_embed(built, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return built.encoder(torch.from_numpy(x)).numpy()


def resemblyzer_embed(wav: np.ndarray) -> np.ndarray:
    """The original pipeline without VAD: normalize_volume then VoiceEncoder.embed_utterance."""
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import normalize_volume

    encoder = resemblyzer_embed.__dict__.setdefault("encoder", VoiceEncoder("cpu", verbose=False))
    return encoder.embed_utterance(normalize_volume(wav, -30, increase_only=True))


def test_card_of_default_model(built):
    path, version = default_checkpoint()
    assert path.name == "pretrained.pt" and version == "0.1.4"
    card = built.card
    assert card.arch == "ge2e" and card.embedding_dim == 256 and card.sample_rate == SR
    assert "resemblyzer 0.1.4 pretrained.pt" in card.source and card.frontend
    assert len(card.fingerprint) == 64
    assert card.threshold == 0.762 and "real speech" in card.threshold_source  # README: measured on real voices


def test_explicit_checkpoint_is_the_same_model(built):
    again = build("ge2e", default_checkpoint()[0])
    assert again.card.fingerprint == built.card.fingerprint and again.card.threshold == 0.762


def test_default_weights_found_without_importing_resemblyzer():
    code = ("import sys; from voxfloat.export.ge2e import build; build('ge2e', None); "
            "assert 'resemblyzer' not in sys.modules and 'webrtcvad' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_missing_resemblyzer_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "resemblyzer" else real(name, *a))
    with pytest.raises(ExportError, match=r"pip install --no-deps resemblyzer==0\.1\.4"):
        build("ge2e", None)


def test_partial_count_matches_resemblyzer():
    from resemblyzer import VoiceEncoder

    lengths = list(range(1, 60000, 13)) + list(range(60000, 400000, 311))
    got = partial_count(torch.tensor(lengths)).tolist()
    want = [len(VoiceEncoder.compute_partial_slices(n, 1.3, 0.75)[1]) for n in lengths]
    assert got == want


def test_mel_front_end_matches_librosa(long_audio):
    wav = long_audio[:SR * 3]
    want = librosa.feature.melspectrogram(y=wav, sr=SR, n_fft=400, hop_length=160, n_mels=40).T
    padded = np.pad(wav, (N_FFT // 2, N_FFT // 2))  # librosa's default centring: zeros
    with torch.no_grad():
        got = MelPower(SR, 400, 160, 40)(torch.from_numpy(padded)[None])[0].numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("n", LENGTHS)
def test_onnx_matches_pytorch_for_any_length_and_batch(built, sessions, long_audio, n):
    session, _ = sessions[None]
    x = np.stack([long_audio[:n], long_audio[-n:], 0.1 * long_audio[n // 3: n // 3 + n]])
    for batch in (x[:1], x):
        got, want = run(session, batch), torch_embed(built, batch)
        assert got.shape == (len(batch), 256)
        assert cosine(got, want).min() >= 0.99999


def test_matches_resemblyzer_on_corpus_files(built, sessions, corpus_files):
    session, _ = sessions[None]
    for f in corpus_files:
        wav = sf.read(f, dtype="float32")[0]
        ref = resemblyzer_embed(wav)
        assert cosine(torch_embed(built, wav[None])[0], ref) >= 0.999, f.name
        assert cosine(run(session, wav[None])[0], ref) >= 0.999, f.name


@pytest.mark.parametrize("n", LENGTHS)
def test_matches_resemblyzer_at_every_padding_case(sessions, long_audio, n):
    # The corpus is louder than -30 dBFS; the quiet copy (about -50 dBFS) exercises the volume gain.
    for gain in (1.0, 0.01):
        wav = long_audio[:n] * np.float32(gain)
        assert cosine(run(sessions[None][0], wav[None])[0], resemblyzer_embed(wav)) >= 0.999, gain


def test_batch_equals_one_by_one(built, sessions, long_audio):
    n = 3 * SR
    x = np.stack([long_audio[i * n:(i + 1) * n] for i in range(4)])
    x[3] *= 0.01  # a quiet row: volume normalisation is per row
    session, _ = sessions[None]
    one_by_one = np.concatenate([run(session, row[None]) for row in x])
    assert cosine(run(session, x), one_by_one).min() >= 0.99999
    assert cosine(torch_embed(built, x), one_by_one).min() >= 0.99999


def test_scaling_node_keeps_cosine_and_sets_peak(sessions, long_audio):
    (plain, _), (scaled, card) = sessions[None], sessions[SCALE_FORMAT]
    target = get_format(SCALE_FORMAT).scale_target
    assert card.scale_format == SCALE_FORMAT and card.scale_target == target
    x = np.stack([long_audio[:40000], long_audio[40000:80000]])
    e, s = run(plain, x), run(scaled, x)
    assert cosine(e, s).min() >= 0.99999
    np.testing.assert_allclose(np.abs(s).max(axis=1), target, rtol=1e-5)


def test_export_leaves_the_callers_card_alone(built, sessions):
    """export_onnx writes the scaling fields into a copy: the built card stays unscaled for the next export."""
    assert (built.card.scale_format, built.card.scale_target) == ("", 0.0)


@pytest.fixture(scope="module")
def pretrained_state() -> dict[str, torch.Tensor]:
    return torch.load(default_checkpoint()[0], map_location="cpu", weights_only=True)["model_state"]


def test_missing_key_names_layout_and_key(pretrained_state, tmp_path):
    state = {k: v for k, v in pretrained_state.items() if k != "linear.bias"}
    path = tmp_path / "missing.pt"
    torch.save({"model_state": state}, path)
    with pytest.raises(ExportError) as err:
        build("ge2e", path)
    msg = str(err.value)
    assert str(path) in msg and LAYOUT in msg and "missing linear.bias" in msg and "\n" not in msg


def test_wrong_shape_and_extra_key_are_named(pretrained_state, tmp_path):
    state = dict(pretrained_state, **{"lstm.weight_ih_l0": torch.zeros(1024, 80), "head.weight": torch.zeros(2)})
    path = tmp_path / "other.pt"
    torch.save(state, path)  # a bare state dict is accepted as a layout, then checked
    with pytest.raises(ExportError, match=r"unexpected head\.weight; shape lstm\.weight_ih_l0 \(1024, 80\) != \(1024, 40\)"):
        build("ge2e", path)


def test_non_checkpoint_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    for path, why in ((text, "not a loadable PyTorch checkpoint"), (tensor, "no state dict of tensors"),
                      (tmp_path / "absent.pt", "no such checkpoint file")):
        with pytest.raises(ExportError) as err:
            build("ge2e", path)
        assert str(path) in str(err.value) and why in str(err.value) and LAYOUT in str(err.value)


def test_state_dict_has_only_checkpoint_keys():
    # The mel and DFT constants are buffers outside the state dict: strict loading sees lstm/linear only.
    assert {k.split(".")[0] for k in GE2EEncoder().state_dict()} == {"lstm", "linear"}
