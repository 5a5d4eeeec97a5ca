"""The `voxfloat` command: a thin shell over voxfloat.api (parse arguments, format output, map errors to exit codes).

Exit codes: 0 done (verify: every trial accepted), 1 verify rejected at least one trial,
2 usage error, 3 done but some input files were bad (listed, the rest processed),
4 nothing done (bad model, store, checkpoint or trial list), 70 internal error (a bug: please report it),
130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import typer
from typer.core import TyperGroup

from voxfloat.api import (DEFAULT_MAX_SECONDS, Verifier, check_threshold, embed_audio, embed_trials, enroll_shards,
                          open_encoder, read_enrollment_list)
from voxfloat.errors import OutputError, UsageError, VoxfloatError
from voxfloat.export import ARCHS
from voxfloat.files import output_target, write_private
from voxfloat.store import FORMATS, SCALE_MODES, VoiceprintStore
from voxfloat.store.vxf import looks_like_store

if TYPE_CHECKING:
    from voxfloat.ray_engine import RayOptions

OK, REJECTED, USAGE, BAD_INPUT, FATAL, CRASH, INTERRUPTED = 0, 1, 2, 3, 4, 70, 130
# --help, usage errors and exit codes are typer's business; typer >= 0.28 carries its own copy of click's
# exception classes, older typer uses click's, so both are let through
PASS_THROUGH: tuple[type[BaseException], ...] = (
    typer.Exit, typer.Abort, next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))
with contextlib.suppress(ImportError):
    import click

    PASS_THROUGH += (click.exceptions.Exit, click.exceptions.Abort, click.ClickException)


class Shell(TyperGroup):
    """Runs a verb and maps what escapes it: VoxfloatError to one line (exit 4, usage errors 2), anything else to
    one line asking for a bug report (exit 70, never 1, which means "rejected"). VOXFLOAT_DEBUG=1 shows tracebacks."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except PASS_THROUGH:
            raise
        except VoxfloatError as e:
            fail(str(e), USAGE if isinstance(e, UsageError) else FATAL)
        except KeyboardInterrupt:  # not 1 either: a script would read that as "rejected"
            fail("interrupted; a store being written keeps its previous contents", INTERRUPTED)
        except Exception as e:
            if os.environ.get("VOXFLOAT_DEBUG"):
                raise
            what = (str(e).strip().splitlines() or [""])[0]
            typer.echo(f"voxfloat: internal error ({type(e).__name__}{': ' + what if what else ''}); this is a bug: "
                       "please report it with the command you ran (VOXFLOAT_DEBUG=1 shows the traceback)", err=True)
            raise typer.Exit(CRASH) from None


app = typer.Typer(cls=Shell, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain help and usage errors: importing rich costs every --help 0.1 s
                  help="Speaker verification at the edge: ONNX encoders and packed minifloat voiceprint stores.")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Point(str, Enum):
    eer = "eer"
    far = "far"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


# Paths are checked by voxfloat itself (readable=False): an unreadable file is one listed line, not a usage error.
ModelOpt = Annotated[Optional[Path], typer.Option("--model", "-m", readable=False,
                                                  help="ONNX model written by `voxfloat export` (default: the shipped GE2E model).")]
StoreOpt = Annotated[Path, typer.Option("--store", "-s", readable=False, help="Store file (.vxf).")]
DeviceOpt = Annotated[Device, typer.Option(envvar="VOXFLOAT_DEVICE",
                                           help="Where to run: auto tries CUDA (where a driver is) and falls back to CPU.")]
ThreadsOpt = Annotated[int, typer.Option(min=0, help="Intra-op threads (0: ONNX Runtime's choice).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
AudioArg = Annotated[list[Path], typer.Argument(readable=False, help="Audio files (any common type and sample rate).")]


def fail(message: str, code: int = FATAL) -> None:
    """Print one error line and exit with `code`."""
    typer.echo(f"voxfloat: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the package's own errors into one line on stderr and exit code 4 (2 for usage), never a traceback."""
    try:
        yield
    except VoxfloatError as e:
        fail(str(e), USAGE if isinstance(e, UsageError) else FATAL)


def report_bad(errors: list[str]) -> None:
    """List the skipped files on stderr, one line each."""
    for message in errors:
        typer.echo(f"voxfloat: skipped: {message}", err=True)


def threshold_option(value: Optional[float]) -> Optional[float]:
    """--threshold must be a cosine in [-1, 1] (NaN and infinities are refused)."""
    if value is None:
        return None
    try:
        return check_threshold(value)
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None


def seconds_option(value: float) -> float:
    """--max-seconds must be a positive, finite number of seconds."""
    if not 0 < value < float("inf"):
        raise typer.BadParameter(f"must be a positive number of seconds, got {value}")
    return value


ThresholdOpt = Annotated[Optional[float], typer.Option(callback=threshold_option,
                                                       help="Override the store's threshold (a cosine in [-1, 1]).")]
MaxSecondsOpt = Annotated[float, typer.Option("--max-seconds", callback=seconds_option,
                                              help="Embed at most this many seconds of speech; a recording over 4 times as long "
                                                   "(with --no-vad: over this long) is refused, and listed, before decoding.")]
VadOpt = Annotated[bool, typer.Option("--vad/--no-vad", help="Embed only the detected speech (Silero VAD); "
                                      "a store records which, and refuses audio prepared the other way.")]


EngineOpt = Annotated[Engine, typer.Option(help="local: this process; ray: an actor pool on a Ray cluster (pip install 'voxfloat[ray]').")]
AddressOpt = Annotated[Optional[str], typer.Option(help="Ray cluster address (--engine ray; default: start a local one).")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="Ray actors embedding at once (--engine ray).")]
GpusOpt = Annotated[float, typer.Option(min=0.0, help="GPUs per Ray actor; 0 runs the actors on CPU (--engine ray).")]


def ray_options(engine: Engine, address: Optional[str], workers: int, gpus_per_worker: float) -> "RayOptions | None":
    """The Ray settings of --engine ray, or None for the local engine (which takes none of them)."""
    if engine is Engine.local:
        if address is not None or workers != 1 or gpus_per_worker:
            raise typer.BadParameter("--address, --workers and --gpus-per-worker go with --engine ray")
        return None
    from voxfloat.ray_engine import RayOptions

    return RayOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker)


def parse_list(value: str, allowed: tuple[str, ...] | dict, what: str) -> list[str]:
    """Split a comma-separated option and check every item."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise typer.BadParameter(f"unknown {what} {', '.join(bad) or repr(value)}; choose from {', '.join(allowed)}")
    return items


@app.command("export")
def export_cmd(
    arch: Annotated[str, typer.Argument(help=f"One of {', '.join(ARCHS)}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    checkpoint: Annotated[Optional[Path], typer.Option(readable=False, help="Upstream checkpoint file (ge2e: the resemblyzer weights by default).")] = None,
    format: Annotated[str, typer.Option("--format", help="Storage format the appended scaling node targets.")] = "e4m3",
    no_scale: Annotated[bool, typer.Option("--no-scale", help="Leave the scaling node out.")] = False,
    sherpa: Annotated[bool, typer.Option("--sherpa", help="Write the encoder alone (fbank in) with sherpa-onnx metadata.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Turn a PyTorch checkpoint into a self-contained ONNX model (waveform in, embedding out)."""
    try:
        from voxfloat.export.core import build, export_onnx
    except ImportError as e:
        fail(f"`voxfloat export` needs PyTorch: pip install 'voxfloat[export]' ({e})")
    if format not in FORMATS:
        raise typer.BadParameter(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    built = build(arch, checkpoint)
    if sherpa:
        from voxfloat.export.sherpa import export_sherpa
        export_sherpa(built, out)
        card = built.card
    else:
        from voxfloat.runtime import read_card

        export_onnx(built.encoder, built.card, out, None if no_scale else format, dynamo=built.dynamo)
        card = read_card(out)  # with the fingerprint of the graph written, the one stores record
    info = {"model": str(out), "arch": card.arch, "embedding_dim": card.embedding_dim,
            "scale_format": card.scale_format or None, "fingerprint": card.fingerprint, "sherpa": sherpa}
    typer.echo(json.dumps(info) if json_out else f"wrote {out} ({card.arch}, {card.embedding_dim}-dim, "
               f"scaling node: {card.scale_format or 'none'}{', sherpa-onnx layout' if sherpa else ''})")


@app.command()
def enroll(
    source: Annotated[Path, typer.Argument(readable=False, help="Folder with one sub-folder per speaker, or a CSV of speaker,path.")],
    out: Annotated[Path, typer.Option("--out", "-o", readable=False, help="Store file (.vxf); created, or added to if it exists (a symbolic link is followed).")],
    format: Annotated[Optional[str], typer.Option("--format", help=f"One of {', '.join(FORMATS)} (new stores; default e4m3).")] = None,
    scale: Annotated[Optional[str], typer.Option(help=f"One of {', '.join(SCALE_MODES)} (new stores; default vector).")] = None,
    replace: Annotated[bool, typer.Option(help="Re-enroll speakers the store already has.")] = False,
    shards: Annotated[int, typer.Option(min=1, help="Split the speakers by id hash into K stores S.00-of-K.vxf ... (join them with `voxfloat merge`).")] = 1,
    model: ModelOpt = None, max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS, vad: VadOpt = True,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
    engine: EngineOpt = Engine.local, address: AddressOpt = None, workers: WorkersOpt = 1, gpus_per_worker: GpusOpt = 0.0,
) -> None:
    """Enroll speakers into a store: each speaker is the normalised mean of its utterances' embeddings."""
    if format is not None:
        parse_list(format, FORMATS, "format")
    if scale is not None:
        parse_list(scale, SCALE_MODES, "scale mode")
    cluster = ray_options(engine, address, workers, gpus_per_worker)
    pairs = read_enrollment_list(source)
    args = dict(model=model, device=device.value, threads=threads, max_seconds=max_seconds, vad=vad, format=format,
                scale=scale, progress=not json_out, ray=cluster)
    if shards == 1:
        verifier = Verifier(out, **args)
        reports = [verifier.enroll_many(pairs, replace=replace)]
    else:
        reports = enroll_shards(out, pairs, shards, replace=replace, **args)
    for report in reports:
        report_bad(report.bad_files)
        for speaker in report.already_enrolled:
            typer.echo(f"voxfloat: skipped: {speaker}: already enrolled in {report.store} (use --replace)", err=True)
        for speaker in report.no_audio:
            typer.echo(f"voxfloat: skipped: {speaker}: no readable audio", err=True)
    if json_out:
        docs = [r.as_dict() for r in reports]
        typer.echo(json.dumps(docs[0] if shards == 1 else {"shards": docs}))
    for report in [] if json_out else reports:
        typer.echo(f"enrolled {len(report.enrolled)} speakers ({sum(n for _, n in report.enrolled)} utterances) "
                   f"into {report.store}; it now holds {report.speakers_in_store}")
        if report.threshold is not None and report.threshold.threshold is not None:
            typer.echo(f"threshold {report.threshold.threshold:.4f}: {report.threshold.source}")
    raise typer.Exit(OK if all(r.complete for r in reports) else BAD_INPUT)


@app.command()
def verify(
    audio: AudioArg, store_path: StoreOpt,
    speaker: Annotated[str, typer.Option(help="Claimed speaker id.")],
    threshold: ThresholdOpt = None, model: ModelOpt = None, max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS,
    vad: VadOpt = True, device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Score audio against one enrolled speaker and accept or reject with the store's format's threshold."""
    verifier = Verifier(store_path, model, device=device.value, threads=threads, max_seconds=max_seconds, vad=vad)
    batch = verifier.verify_many([str(a) for a in audio], speaker, threshold=threshold)
    report_bad(batch.bad_files)
    if json_out:
        typer.echo(json.dumps([{**d.as_dict(), "device": verifier.encoder.device} for d in batch.results], allow_nan=False))
    else:
        for d in batch.results:
            typer.echo(f"{'ACCEPT' if d.accepted else 'REJECT'}  {d.score:.4f} "
                       f"(threshold {d.threshold:.4f}, {d.format})  {d.audio} as {speaker}")
    if batch.bad_files:
        raise typer.Exit(BAD_INPUT)
    raise typer.Exit(OK if all(d.accepted for d in batch.results) else REJECTED)


@app.command()
def identify(
    audio: AudioArg, store_path: StoreOpt,
    top: Annotated[int, typer.Option(min=1, help="How many candidates to list.")] = 1,
    threshold: ThresholdOpt = None, model: ModelOpt = None, max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS,
    vad: VadOpt = True, device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Find the enrolled speakers closest to each audio file (1:N); below the threshold means unknown.

    Without a threshold (none given, calibrated or in the model) the best candidate is the answer (closed set).
    """
    verifier = Verifier(store_path, model, device=device.value, threads=threads, max_seconds=max_seconds, vad=vad)
    batch = verifier.identify_many([str(a) for a in audio], top=top, threshold=threshold)
    report_bad(batch.bad_files)
    if json_out:
        typer.echo(json.dumps([{**r.as_dict(), "device": verifier.encoder.device} for r in batch.results], allow_nan=False))
    else:
        for r in batch.results:
            cands = "  ".join(f"{s} {v:.4f}" for s, v in r.candidates)
            typer.echo(f"{r.decision or 'UNKNOWN':<16} {r.audio}  [{cands}]")
    raise typer.Exit(BAD_INPUT if batch.bad_files else OK)


@app.command("embed")
def embed_cmd(
    audio: AudioArg,
    out: Annotated[Path, typer.Option("--out", "-o", readable=False, help="Embeddings (.npy, rows in input order of the readable files; a symbolic link is replaced, never written through).")],
    model: ModelOpt = None, max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS, vad: VadOpt = True,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
    engine: EngineOpt = Engine.local, address: AddressOpt = None, workers: WorkersOpt = 1, gpus_per_worker: GpusOpt = 0.0,
) -> None:
    """Write raw embeddings (the model's output) for parity checks; the row order is listed beside them."""
    cluster = ray_options(engine, address, workers, gpus_per_worker)
    rows_out = out.with_suffix(".paths.txt")
    for target in (out, rows_out):
        output_target(target, OutputError, follow_symlinks=False)  # a FIFO or folder is refused before any work
    encoder = open_encoder(model, device=device.value, threads=threads, max_seconds=max_seconds, ray=cluster, vad=vad)
    rows, errors = embed_audio(encoder, [str(a) for a in audio], progress=not json_out)
    report_bad(errors)
    kept = [(str(a), r) for a, r in zip(audio, rows) if r is not None]
    if not kept:
        fail("no readable audio", BAD_INPUT)
    matrix = np.stack([r for _, r in kept]).astype(np.float32)
    # embeddings are biometric data: written privately and atomically, like store files
    write_private(out, lambda f: np.save(f, matrix))
    write_private(rows_out, lambda f: f.write("".join(p + "\n" for p, _ in kept).encode("utf-8", "surrogateescape")))
    if json_out:
        typer.echo(json.dumps({"out": str(out), "rows": [p for p, _ in kept], "bad_files": errors, "device": encoder.device}))
    else:
        typer.echo(f"wrote {len(kept)} x {encoder.card.embedding_dim} embeddings to {out} (row order in {rows_out})")
    raise typer.Exit(BAD_INPUT if errors else OK)


@app.command("eval")
def eval_cmd(
    trials_path: Annotated[Path, typer.Option("--trials", "-t", readable=False, help="VoxCeleb-style trial list: label enroll test.")],
    audio_root: Annotated[Path, typer.Option(readable=False, help="Folder the trial list's paths are relative to.")],
    formats: Annotated[str, typer.Option(help="Comma-separated formats.")] = ",".join(FORMATS),
    scale: Annotated[str, typer.Option(help="Comma-separated scale modes.")] = "vector",
    threshold: Annotated[Optional[float], typer.Option(callback=threshold_option, help="Threshold for FAR/FRR (default: the model's).")] = None,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="Write DET curves and score histograms (PNG).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON.")] = None,
    scores_path: Annotated[Optional[Path], typer.Option("--scores", help="Write per-trial scores (TSV: label enroll test FORMAT/SCALE...).")] = None,
    model: ModelOpt = None, max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS, vad: VadOpt = True,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0,
) -> None:
    """EER, minDCF, EER threshold, decision flips against float32 and FAR/FRR at the model's threshold of every format."""
    from voxfloat.evaluate import check_plotting, evaluate, format_table, plot, write_scores

    fmts, scales = parse_list(formats, FORMATS, "format"), parse_list(scale, SCALE_MODES, "scale mode")
    if plot_path:
        with user_errors():
            check_plotting()
    for target in (plot_path, json_path, scores_path):
        if target:
            output_target(target, OutputError, follow_symlinks=False)  # a FIFO or folder is refused before any work
    encoder = open_encoder(model, device=device.value, threads=threads, max_seconds=max_seconds, vad=vad)
    trials, embeddings, paths, errors = embed_trials(encoder, trials_path, audio_root, progress=True)
    report_bad(errors)
    thr = threshold if threshold is not None else encoder.card.threshold
    with user_errors():
        rows, scores, labels = evaluate(embeddings, paths, trials, fmts, scales, thr)
    typer.echo(format_table(rows))
    if errors:
        typer.echo(f"{len(errors)} audio files unreadable; their trials were left out", err=True)
    if plot_path:
        with user_errors():
            plot(scores, labels, plot_path)
        typer.echo(f"wrote {plot_path}")
    if scores_path:
        with user_errors():
            write_scores(scores_path, trials, paths, scores)
        typer.echo(f"wrote {scores_path}")
    if json_path:
        report = json.dumps({"model": str(encoder.path), "trials": str(trials_path), "device": encoder.device,
                             "bad_files": errors, "results": [r.as_dict() for r in rows]}, indent=1)
        write_private(json_path, lambda f: f.write(report.encode()))
    raise typer.Exit(BAD_INPUT if errors else OK)


@app.command()
def calibrate(
    store_path: Annotated[Path, typer.Option("--store", "-s", readable=False, help="Store whose thresholds are set.")],
    trials_path: Annotated[Path, typer.Option("--trials", "-t", readable=False, help="VoxCeleb-style trial list: label enroll test.")],
    audio_root: Annotated[Path, typer.Option(readable=False, help="Folder the trial list's paths are relative to.")],
    target_far: Annotated[float, typer.Option(min=1e-6, max=0.5, help="False-acceptance rate of the FAR point (fraction).")] = 0.01,
    use: Annotated[Point, typer.Option(help="Which point `verify` decides with.")] = Point.eer,
    model: ModelOpt = None, max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS, vad: VadOpt = True,
    device: DeviceOpt = Device.auto, threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Per-format thresholds (EER point and target-FAR point) from a trial list, stored in the store."""
    verifier = Verifier(store_path, model, device=device.value, threads=threads, max_seconds=max_seconds,
                        vad=vad, progress=not json_out)
    cal = verifier.calibrate(trials_path, audio_root, target_far=target_far, use=use.value)
    report_bad(cal.bad_files)
    if json_out:
        typer.echo(json.dumps({**cal.as_dict(), "device": verifier.encoder.device}, allow_nan=False))
    else:
        typer.echo(f"{'format':<6} {'EER %':>7} {'EER thr':>8} {'FAR ' + format(target_far, 'g') + ' thr':>12}")
        for r in cal.formats:
            typer.echo(f"{r['format']:<6} {r['eer']:7.2f} {r['eer_threshold']:8.4f} {r['far_threshold']:12.4f}")
        typer.echo(f"{store_path}: verify now decides with the {use.value} threshold of {cal.format}: "
                   f"{cal.threshold:.4f}")
    raise typer.Exit(BAD_INPUT if cal.bad_files else OK)


@app.command()
def remove(
    store_path: Annotated[Path, typer.Argument(readable=False, help="Store file (.vxf).")],
    speakers: Annotated[list[str], typer.Argument(help="Speaker ids whose voiceprints are deleted.")],
    json_out: JsonOpt = False,
) -> None:
    """Delete speakers' voiceprints from a store (the file is rewritten atomically; unknown ids are listed)."""
    verifier = Verifier(store_path)
    removed = verifier.remove(*speakers)
    unknown = [s for s in speakers if s not in removed]
    left = len(verifier.speakers())
    for speaker in unknown:
        typer.echo(f"voxfloat: skipped: {speaker}: not enrolled in {store_path}", err=True)
    if json_out:
        typer.echo(json.dumps({"store": str(store_path), "removed": removed, "unknown": unknown, "speakers_in_store": left}))
    else:
        typer.echo(f"removed {len(removed)} speakers from {store_path}; it now holds {left}")
    raise typer.Exit(BAD_INPUT if unknown else OK)


@app.command()
def merge(
    stores: Annotated[list[Path], typer.Argument(readable=False, help="Stores of one model, format and scale (shards, or stores enrolled apart).")],
    out: Annotated[Path, typer.Option("--out", "-o", readable=False, help="Merged store: a new file, or one of the inputs.")],
    replace: Annotated[Optional[str], typer.Option(help="A speaker in two inputs is refused unless this says which wins: first or last.")] = None,
    thresholds_from: Annotated[Optional[Path], typer.Option(readable=False, help="Keep this input's thresholds (default: kept only when all inputs agree).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Join stores into one, copying the packed voiceprints byte for byte (written atomically under the lock)."""
    from voxfloat.store.merge import REPLACE_RULES, merge as merge_stores

    if replace is not None:
        parse_list(replace, REPLACE_RULES, "replace rule")
    report = merge_stores(stores, out, replace=replace, thresholds_from=thresholds_from)
    if json_out:
        typer.echo(json.dumps({"store": str(report.out), "speakers_in_store": report.speakers,
                               "utterances": report.utterances, "replaced": report.replaced,
                               "thresholds": report.thresholds, "threshold_source": report.threshold_source}))
        return
    typer.echo(f"merged {len(stores)} stores into {report.out}: {report.speakers} speakers, {report.utterances} "
               f"utterances" + (f"; {len(report.replaced)} replaced ({replace} wins)" if report.replaced else ""))
    typer.echo(f"thresholds: {report.thresholds} ({report.threshold_source})" if report.thresholds else
               "thresholds: none (the inputs had none, or they differ); verify uses the model's default until "
               "`voxfloat calibrate` sets them, or pass --thresholds-from")


@app.command()
def info(
    file: Annotated[Path, typer.Argument(readable=False, help="A model (.onnx) or store (.vxf) file.")],
    json_out: JsonOpt = False,
) -> None:
    """Show what a model or store file holds."""
    if looks_like_store(file):
        data = VoiceprintStore.open(file).info()
    else:
        from voxfloat.runtime import read_card
        from voxfloat.runtime.session import make_session

        card = read_card(file)
        device = make_session(file, os.environ.get("VOXFLOAT_DEVICE", "auto"))[1]  # where verbs would run it
        data = {"file": str(file), "kind": "model", "bytes": file.stat().st_size, "device": device, **card.__dict__}
    if json_out:
        typer.echo(json.dumps(data, indent=1, default=str))
    else:
        for key, value in data.items():
            typer.echo(f"{key:<22} {value if not isinstance(value, dict) else json.dumps(value, default=str)}")


@app.command()
def serve(
    store_path: Annotated[Path, typer.Option("--store", "-s", readable=False, help="Store file (.vxf) to serve; `voxfloat enroll` makes one.")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", readable=False, help="ONNX model (default: the shipped one).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but 127.0.0.1 exposes the service.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Processes, each with its own model session and store view.")] = 1,
    token_file: Annotated[Optional[Path], typer.Option(readable=False, help="File holding a token; requests then need 'Authorization: Bearer TOKEN'.")] = None,
    max_body_mb: Annotated[Optional[float], typer.Option(min=0.01, help="Largest request body accepted, MB (default 25).")] = None,
    body_timeout: Annotated[Optional[float], typer.Option(min=0.1, help="Seconds a request body may take to arrive (default 60).")] = None,
    max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS, device: DeviceOpt = Device.auto, vad: VadOpt = True,
    threads: Annotated[int, typer.Option(min=0, help="Intra-op threads per worker (0: ONNX Runtime's choice); scale with --workers.")] = 1,
) -> None:
    """HTTP JSON service: verify, identify, enroll, remove; model and store loaded once (see README)."""
    try:
        from voxfloat.serve import ServeConfig, serve as run_server
    except ImportError as e:
        fail(f"`voxfloat serve` needs its extra: pip install 'voxfloat[serve]' ({e})")
    limits = {k: v for k, v in (("max_body_mb", max_body_mb), ("body_seconds", body_timeout)) if v is not None}
    config = ServeConfig(str(store_path), str(model) if model else None, device.value, threads,
                         str(token_file) if token_file else None, vad=vad, max_seconds=max_seconds, **limits)
    with user_errors():
        run_server(config, host, port, workers)


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(readable=False, help="Float32 ONNX model written by `voxfloat export`.")],
    weights: Annotated[str, typer.Option(help="int8, int4, e4m3 or mxfp4.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    calibration: Annotated[Optional[Path], typer.Option(readable=False, help="Folder of speech: calibrates int8 activations and measures the parity stores check (without it, stores refuse the result).")] = None,
    threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Write MODEL with quantized weights and the parity it measured; stores built with MODEL accept it once
    `voxfloat admit` has measured its parity (>= 0.99 mean cosine) for them."""
    from voxfloat.runtime.quantize import quantize as run

    with user_errors():
        result = run(model, weights, out, calibration, threads=threads)
    report_bad(result.skipped)
    q = result.card.quantization
    parity = q["parity"]
    typer.echo(json.dumps({"model": str(out), "bytes": out.stat().st_size, **q}) if json_out else
               f"wrote {out} ({weights}, {out.stat().st_size / 2**20:.1f} MB; parity to {model.name}: " +
               (f"mean cosine {parity['mean']:.4f}, min {parity['min']:.4f} on {parity['files']} files)" if parity
                else "not measured: no --calibration audio)") + "; `voxfloat admit STORE CHILD` lets a store accept it")
    raise typer.Exit(BAD_INPUT if result.skipped else OK)


@app.command()
def admit(
    store_path: Annotated[Path, typer.Argument(readable=False, help="Store (.vxf) built with the child's parent model.")],
    child: Annotated[Path, typer.Argument(readable=False, help="Quantized model written by `voxfloat quantize`.")],
    calibration: Annotated[Path, typer.Option(readable=False, help="Folder of speech the parity is measured on.")],
    parent: Annotated[Optional[Path], typer.Option(readable=False, help="The store's model (default: the shipped GE2E model).")] = None,
    threads: ThreadsOpt = 0, json_out: JsonOpt = False,
) -> None:
    """Let a store accept a quantized child of its model: parity is measured now and must reach 0.99 mean cosine."""
    from voxfloat.api import admit_child

    done = admit_child(store_path, child, calibration, parent=parent, threads=threads)
    report_bad(done.bad_files)
    typer.echo(json.dumps(done.as_dict()) if json_out else
               f"admitted {done.weights} child {done.fingerprint[:12]} to {store_path}: mean cosine {done.mean:.4f}, "
               f"min {done.min:.4f} on {done.files} files")
    raise typer.Exit(BAD_INPUT if done.bad_files else OK)


def main() -> None:
    """Entry point: warnings from the runtime (such as a CUDA fallback) go to stderr."""
    logging.basicConfig(level=logging.WARNING, format="voxfloat: %(message)s", stream=sys.stderr)
    app()

