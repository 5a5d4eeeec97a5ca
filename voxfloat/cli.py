"""The `voxfloat` command: a thin shell over export, runtime and store.

Exit codes: 0 done (verify: every trial accepted), 1 verify rejected at least one trial,
2 usage error, 3 done but some input files were bad (listed, the rest processed),
4 nothing done (bad model, store, checkpoint or trial list).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from voxfloat.evaluate import TrialsError, evaluate, format_table, operating_point, plot, read_trials, threshold_at_far
from voxfloat.runtime import AudioError, ModelError, SpeakerEncoder, read_card
from voxfloat.store import FORMATS, SCALE_MODES, StoreError, VoiceprintStore

OK, REJECTED, BAD_INPUT, FATAL = 0, 1, 3, 4
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif", ".au", ".webm", ".sph"}

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Speaker verification at the edge: ONNX encoders and packed minifloat voiceprint stores.")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Point(str, Enum):
    eer = "eer"
    far = "far"


ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="ONNX model written by `voxfloat export`.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to run: auto tries CUDA and falls back to CPU.")]
ThreadsOpt = Annotated[int, typer.Option(help="Intra-op threads (0: ONNX Runtime's choice).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
AudioArg = Annotated[list[Path], typer.Argument(help="Audio files (any common type and sample rate).")]


def fail(message: str, code: int = FATAL) -> None:
    """Print one error line and exit with `code`."""
    typer.echo(f"voxfloat: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the package's own errors into one line on stderr and exit code 4, never a traceback."""
    try:
        yield
    except (ModelError, StoreError, TrialsError, AudioError, ValueError, OSError) as e:
        fail(str(e))


def report_bad(errors: list[tuple[str, str]]) -> None:
    """List the skipped files on stderr, one line each."""
    for _, message in errors:
        typer.echo(f"voxfloat: skipped: {message}", err=True)


def parse_list(value: str, allowed: tuple[str, ...] | dict, what: str) -> list[str]:
    """Split a comma-separated option and check every item."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise typer.BadParameter(f"unknown {what} {', '.join(bad) or repr(value)}; choose from {', '.join(allowed)}")
    return items


def open_encoder(model: Path, device: Device, threads: int) -> SpeakerEncoder:
    """Load the model; one line if that fails."""
    with user_errors():
        return SpeakerEncoder(model, device=device.value, threads=threads)


def open_store(path: Path, encoder: SpeakerEncoder) -> VoiceprintStore:
    """Open a store and refuse it if another model built it."""
    with user_errors():
        store = VoiceprintStore.open(path)
        store.check_model(encoder.card.fingerprint)
        return store


def embed(encoder: SpeakerEncoder, paths: list[Path], quiet: bool = False) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """Embed files (progress bar on stderr); returns embeddings by path and the bad files."""
    result = encoder.embed_files([str(p) for p in paths], progress=not quiet)
    report_bad(result.errors)
    return dict(zip(map(str, result.paths_ok), result.embeddings)), list(result.errors)


def enrollment_list(source: Path) -> list[tuple[str, Path]]:
    """(speaker, audio path) pairs from a folder of speaker folders or a CSV of speaker,path."""
    if source.is_dir():
        pairs = [(d.name, f) for d in sorted(source.iterdir()) if d.is_dir()
                 for f in sorted(d.rglob("*")) if f.suffix.lower() in AUDIO_SUFFIXES]
        if not pairs:
            fail(f"{source}: no speaker sub-folders with audio files")
        return pairs
    if not source.is_file():
        fail(f"{source}: no such folder or CSV file")
    pairs = []
    with source.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            if not row or (n == 1 and [c.strip().lower() for c in row] == ["speaker", "path"]):
                continue
            if len(row) != 2 or not row[0].strip():
                fail(f"{source}:{n}: expected 'speaker,path', got {','.join(row)[:80]!r}")
            path = Path(row[1].strip())
            pairs.append((row[0].strip(), path if path.is_absolute() else source.parent / path))
    if not pairs:
        fail(f"{source}: no speaker,path rows")
    return pairs


@app.command("export")
def export_cmd(
    arch: Annotated[str, typer.Argument(help="ge2e, campplus, campplus-wespeaker, ecapa, resnet34, redimnet or wavlm.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Upstream checkpoint file (ge2e: the resemblyzer weights by default).")] = None,
    format: Annotated[str, typer.Option("--format", help="Storage format the appended scaling node targets.")] = "e4m3",
    no_scale: Annotated[bool, typer.Option("--no-scale", help="Leave the scaling node out.")] = False,
    sherpa: Annotated[bool, typer.Option("--sherpa", help="Write the encoder alone (fbank in) with sherpa-onnx metadata.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Turn a PyTorch checkpoint into a self-contained ONNX model (waveform in, embedding out)."""
    try:
        from voxfloat.export.core import ExportError, export_onnx
        from voxfloat.export.registry import build
    except ImportError as e:
        fail(f"`voxfloat export` needs PyTorch: pip install 'voxfloat[export]' ({e})")
    if format not in FORMATS:
        raise typer.BadParameter(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    try:
        built = build(arch, checkpoint)
        if sherpa:
            from voxfloat.export.sherpa import export_sherpa
            export_sherpa(built, out)
            card = built.card
        else:
            card = export_onnx(built.encoder, built.card, out, None if no_scale else format, dynamo=built.dynamo)
    except (ExportError, ValueError, OSError) as e:
        fail(str(e))
    info = {"model": str(out), "arch": card.arch, "embedding_dim": card.embedding_dim,
            "scale_format": card.scale_format or None, "fingerprint": card.fingerprint, "sherpa": sherpa}
    typer.echo(json.dumps(info) if json_out else f"wrote {out} ({card.arch}, {card.embedding_dim}-dim, "
               f"scaling node: {card.scale_format or 'none'}{', sherpa-onnx layout' if sherpa else ''})")


@app.command()
def enroll(
    source: Annotated[Path, typer.Argument(help="Folder with one sub-folder per speaker, or a CSV of speaker,path.")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Store file (.vxf); created, or added to if it exists.")],
    format: Annotated[Optional[str], typer.Option("--format", help=f"One of {', '.join(FORMATS)} (new stores; default e4m3).")] = None,
    scale: Annotated[Optional[str], typer.Option(help=f"One of {', '.join(SCALE_MODES)} (new stores; default vector).")] = None,
    replace: Annotated[bool, typer.Option(help="Re-enroll speakers the store already has.")] = False,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Enroll speakers into a store: each speaker is the normalised mean of its utterances' embeddings."""
    pairs = enrollment_list(source)
    encoder = open_encoder(model, device, threads)
    card = encoder.card
    if out.exists():
        existing = open_store(out, encoder)
        for given, have, what in ((format, existing.format, "format"), (scale, existing.scale, "scale")):
            if given is not None and given != have:
                fail(f"{out}: store uses {what} {have}, not {given}")
    else:
        parse_list(format or "e4m3", FORMATS, "format")
        parse_list(scale or "vector", SCALE_MODES, "scale mode")
    vectors, errors = embed(encoder, [p for _, p in pairs], quiet=json_out)
    by_speaker: dict[str, list[np.ndarray]] = {}
    for speaker, path in pairs:
        if str(path) in vectors:
            by_speaker.setdefault(speaker, []).append(vectors[str(path)])
    create = {} if out.exists() else {
        "fmt": format or "e4m3", "scale": scale or "vector", "dim": card.embedding_dim,
        "model": {"fingerprint": card.fingerprint, "arch": card.arch, "source": card.source}}
    added, skipped = [], []
    with user_errors(), VoiceprintStore.edit(out, **create) as store:
        store.check_model(card.fingerprint)
        if card.threshold is not None and not store.thresholds:
            store.set_thresholds({store.format: card.threshold}, f"model default: {card.threshold_source or card.arch}")
        for speaker, embs in by_speaker.items():
            if speaker in store and not replace:
                skipped.append(speaker)
                continue
            store.add(speaker, np.stack(embs), replace=replace)
            added.append((speaker, len(embs)))
        total = len(store)
    for speaker in skipped:
        typer.echo(f"voxfloat: skipped: {speaker}: already enrolled in {out} (use --replace)", err=True)
    missing = sorted({s for s, _ in pairs} - set(by_speaker))
    for speaker in missing:
        typer.echo(f"voxfloat: skipped: {speaker}: no readable audio", err=True)
    if json_out:
        typer.echo(json.dumps({"store": str(out), "enrolled": [{"speaker": s, "utterances": n} for s, n in added],
                               "skipped_speakers": skipped + missing, "bad_files": [m for _, m in errors],
                               "speakers_in_store": total}))
    else:
        typer.echo(f"enrolled {len(added)} speakers ({sum(n for _, n in added)} utterances) into {out}; "
                   f"it now holds {total}")
    raise typer.Exit(BAD_INPUT if errors or missing else OK)


def decision_threshold(store: VoiceprintStore, override: Optional[float]) -> float:
    """The threshold to decide with: --threshold, else the store's for its format."""
    if override is not None:
        return override
    if store.threshold is None:
        fail(f"{store.path}: no threshold for format {store.format}: run `voxfloat calibrate` or pass --threshold")
    return store.threshold


@app.command()
def verify(
    audio: AudioArg, model: ModelOpt,
    store_path: Annotated[Path, typer.Option("--store", "-s", help="Store file (.vxf).")],
    speaker: Annotated[str, typer.Option(help="Claimed speaker id.")],
    threshold: Annotated[Optional[float], typer.Option(help="Override the store's threshold.")] = None,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Score audio against one enrolled speaker and accept or reject with the store's format's threshold."""
    encoder = open_encoder(model, device, threads)
    store = open_store(store_path, encoder)
    if speaker not in store:
        fail(f"{store_path}: no speaker {speaker!r} enrolled")
    thr = decision_threshold(store, threshold)
    vectors, errors = embed(encoder, audio, quiet=True)
    results = []
    for path in map(str, audio):
        if path in vectors:
            score = store.score(vectors[path], speaker)
            results.append({"audio": path, "speaker": speaker, "score": round(score, 6), "threshold": thr,
                            "format": store.format, "accepted": bool(score >= thr)})
    if json_out:
        typer.echo(json.dumps(results))
    else:
        for r in results:
            typer.echo(f"{'ACCEPT' if r['accepted'] else 'REJECT'}  {r['score']:.4f} "
                       f"(threshold {thr:.4f}, {store.format})  {r['audio']} as {speaker}")
    if errors:
        raise typer.Exit(BAD_INPUT)
    raise typer.Exit(OK if all(r["accepted"] for r in results) else REJECTED)


@app.command()
def identify(
    audio: AudioArg, model: ModelOpt,
    store_path: Annotated[Path, typer.Option("--store", "-s", help="Store file (.vxf).")],
    top: Annotated[int, typer.Option(min=1, help="How many candidates to list.")] = 1,
    threshold: Annotated[Optional[float], typer.Option(help="Override the store's threshold.")] = None,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Find the enrolled speakers closest to each audio file (1:N); below the threshold means unknown.

    Without a threshold (none calibrated, none given) the best candidate is the answer (closed set).
    """
    encoder = open_encoder(model, device, threads)
    store = open_store(store_path, encoder)
    if len(store) == 0:
        fail(f"{store_path}: no speakers enrolled")
    thr = threshold if threshold is not None else store.threshold  # None: closed-set, the best candidate wins
    vectors, errors = embed(encoder, audio, quiet=True)
    paths = [str(p) for p in audio if str(p) in vectors]
    results = []
    if paths:
        ranked = store.identify(np.stack([vectors[p] for p in paths]), top)
        for path, cands in zip(paths, ranked):
            best = cands[0]
            results.append({"audio": path, "speaker": best[0] if thr is None or best[1] >= thr else None, "threshold": thr,
                            "candidates": [{"speaker": s, "score": round(float(v), 6)} for s, v in cands]})
    if json_out:
        typer.echo(json.dumps(results))
    else:
        for r in results:
            cands = "  ".join(f"{c['speaker']} {c['score']:.4f}" for c in r["candidates"])
            typer.echo(f"{r['speaker'] or 'UNKNOWN':<16} {r['audio']}  [{cands}]")
    raise typer.Exit(BAD_INPUT if errors else OK)


@app.command("embed")
def embed_cmd(
    audio: AudioArg, model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Embeddings (.npy, rows in input order of the readable files).")],
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Write raw embeddings (the model's output) for parity checks; the row order is listed beside them."""
    encoder = open_encoder(model, device, threads)
    vectors, errors = embed(encoder, audio, quiet=json_out)
    paths = [str(p) for p in audio if str(p) in vectors]
    if not paths:
        fail("no readable audio", BAD_INPUT)
    with user_errors():
        # embeddings are biometric data: created private, like store files
        with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            np.save(fh, np.stack([vectors[p] for p in paths]).astype(np.float32))
        out.with_suffix(".paths.txt").write_text("".join(p + "\n" for p in paths))
    if json_out:
        typer.echo(json.dumps({"out": str(out), "rows": paths, "bad_files": [m for _, m in errors]}))
    else:
        typer.echo(f"wrote {len(paths)} x {encoder.card.embedding_dim} embeddings to {out} "
                   f"(row order in {out.with_suffix('.paths.txt')})")
    raise typer.Exit(BAD_INPUT if errors else OK)


def embed_trials(trials_path: Path, audio_root: Path, encoder: SpeakerEncoder, quiet: bool):
    """Read a trial list and embed each audio file it names once."""
    with user_errors():
        trials = read_trials(trials_path)
    if not audio_root.is_dir():
        fail(f"{audio_root}: no such audio folder")
    files = trials.files
    vectors, errors = embed(encoder, [audio_root / f for f in files], quiet=quiet)
    paths = [f for f in files if str(audio_root / f) in vectors]
    if not paths:
        fail(f"{trials_path}: none of its audio files could be read")
    return trials, np.stack([vectors[str(audio_root / f)] for f in paths]), paths, errors


@app.command("eval")
def eval_cmd(
    model: ModelOpt,
    trials_path: Annotated[Path, typer.Option("--trials", "-t", help="VoxCeleb-style trial list: label enroll test.")],
    audio_root: Annotated[Path, typer.Option(help="Folder the trial list's paths are relative to.")],
    formats: Annotated[str, typer.Option(help="Comma-separated formats.")] = ",".join(FORMATS),
    scale: Annotated[str, typer.Option(help="Comma-separated scale modes.")] = "vector",
    threshold: Annotated[Optional[float], typer.Option(help="Threshold for FAR/FRR (default: the model's).")] = None,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="Write DET curves and score histograms (PNG).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON.")] = None,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0,
) -> None:
    """EER, minDCF, EER threshold and FAR/FRR at the model's threshold of every storage format."""
    fmts, scales = parse_list(formats, FORMATS, "format"), parse_list(scale, SCALE_MODES, "scale mode")
    encoder = open_encoder(model, device, threads)
    trials, embeddings, paths, errors = embed_trials(trials_path, audio_root, encoder, quiet=False)
    thr = threshold if threshold is not None else encoder.card.threshold
    with user_errors():
        rows, scores, labels = evaluate(embeddings, paths, trials, fmts, scales, thr)
    typer.echo(format_table(rows))
    if errors:
        typer.echo(f"{len(errors)} audio files unreadable; their trials were left out", err=True)
    if plot_path:
        plot(scores, labels, plot_path)
        typer.echo(f"wrote {plot_path}")
    if json_path:
        json_path.write_text(json.dumps({"model": str(model), "trials": str(trials_path), "device": encoder.device,
                                         "bad_files": [m for _, m in errors],
                                         "results": [r.as_dict() for r in rows]}, indent=1))
    raise typer.Exit(BAD_INPUT if errors else OK)


@app.command()
def calibrate(
    model: ModelOpt,
    store_path: Annotated[Path, typer.Option("--store", "-s", help="Store whose thresholds are set.")],
    trials_path: Annotated[Path, typer.Option("--trials", "-t", help="VoxCeleb-style trial list: label enroll test.")],
    audio_root: Annotated[Path, typer.Option(help="Folder the trial list's paths are relative to.")],
    target_far: Annotated[float, typer.Option(min=1e-6, max=0.5, help="False-acceptance rate of the FAR point (fraction).")] = 0.01,
    use: Annotated[Point, typer.Option(help="Which point `verify` decides with.")] = Point.eer,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Per-format thresholds (EER point and target-FAR point) from a trial list, stored in the store."""
    encoder = open_encoder(model, device, threads)
    store = open_store(store_path, encoder)
    trials, embeddings, paths, errors = embed_trials(trials_path, audio_root, encoder, quiet=json_out)
    with user_errors():
        _, scores, labels = evaluate(embeddings, paths, trials, list(FORMATS), [store.scale], None)
    table, thresholds = [], {}
    for fmt in FORMATS:
        s = scores[fmt, store.scale]
        eer = operating_point(s, labels)
        far_thr = threshold_at_far(s, labels, target_far)
        thresholds[fmt] = eer.eer_threshold if use is Point.eer else far_thr
        table.append({"format": fmt, "eer": eer.eer, "eer_threshold": eer.eer_threshold,
                      "far_threshold": far_thr, "target_far": target_far})
    point = "EER point" if use is Point.eer else f"FAR {target_far:g} point"
    source = f"calibrated on {trials_path} ({int(labels.sum())} target trials, {store.scale} scaling), {point}"
    with user_errors(), VoiceprintStore.edit(store_path) as s:
        s.set_thresholds(thresholds, source)
    if json_out:
        typer.echo(json.dumps({"store": str(store_path), "use": use.value, "formats": table}))
    else:
        typer.echo(f"{'format':<6} {'EER %':>7} {'EER thr':>8} {'FAR ' + format(target_far, 'g') + ' thr':>12}")
        for r in table:
            typer.echo(f"{r['format']:<6} {r['eer']:7.2f} {r['eer_threshold']:8.4f} {r['far_threshold']:12.4f}")
        typer.echo(f"{store_path}: verify now decides with the {use.value} threshold of {store.format}: "
                   f"{thresholds[store.format]:.4f}")
    raise typer.Exit(BAD_INPUT if errors else OK)


@app.command()
def remove(
    store_path: Annotated[Path, typer.Argument(help="Store file (.vxf).")],
    speakers: Annotated[list[str], typer.Argument(help="Speaker ids whose voiceprints are deleted.")],
    json_out: JsonOpt = False,
) -> None:
    """Delete speakers' voiceprints from a store (the file is rewritten atomically; unknown ids are listed)."""
    with user_errors(), VoiceprintStore.edit(store_path) as store:
        unknown = [s for s in speakers if s not in store]
        removed = [s for s in dict.fromkeys(speakers) if s in store]
        for speaker in removed:
            store.remove(speaker)
        left = len(store)
    for speaker in unknown:
        typer.echo(f"voxfloat: skipped: {speaker}: not enrolled in {store_path}", err=True)
    if json_out:
        typer.echo(json.dumps({"store": str(store_path), "removed": removed, "unknown": unknown, "speakers_in_store": left}))
    else:
        typer.echo(f"removed {len(removed)} speakers from {store_path}; it now holds {left}")
    raise typer.Exit(BAD_INPUT if unknown else OK)


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="A model (.onnx) or store (.vxf) file.")],
    json_out: JsonOpt = False,
) -> None:
    """Show what a model or store file holds."""
    with user_errors():
        if file.suffix == ".vxf":
            data = VoiceprintStore.open(file).info()
        else:
            card = read_card(file)
            data = {"file": str(file), "kind": "model", "bytes": file.stat().st_size, **card.__dict__}
    if json_out:
        typer.echo(json.dumps(data, indent=1, default=str))
    else:
        for key, value in data.items():
            typer.echo(f"{key:<22} {value if not isinstance(value, dict) else json.dumps(value, default=str)}")


def main() -> None:
    """Entry point: warnings from the runtime (such as a CUDA fallback) go to stderr."""
    logging.basicConfig(level=logging.WARNING, format="voxfloat: %(message)s", stream=sys.stderr)
    app()

