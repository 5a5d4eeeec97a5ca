"""Merging stores of one model, format and scale: packed rows are copied byte for byte, never re-encoded.

Threshold rule: when every input carries the same thresholds from the same source, the merged store keeps
them; otherwise it keeps those of the input named by `thresholds_from`, or none (verification then falls back
to the model's default threshold and says so, until `voxfloat calibrate` sets new ones).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxfloat.store import vxf
from voxfloat.store.errors import StoreError
from voxfloat.store.store import VoiceprintStore

REPLACE_RULES = ("first", "last")


@dataclass
class MergeReport:
    """What a merge wrote: the output, its speaker count, who was replaced, and where its thresholds came from."""

    out: Path
    speakers: int
    utterances: int
    replaced: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_source: str | None = None


def _identity(store: VoiceprintStore) -> tuple:
    """The fields two stores must share to be merged: model, format, scale, width, enrollment and trimming."""
    h = store.header
    return (h["model"]["fingerprint"], h["format"], h["scale"], h["dim"], h.get("enrollment"),
            repr(h.get("preprocessing")))


def merge(inputs: Sequence[str | Path], out: str | Path, *, replace: str | None = None,
          thresholds_from: str | Path | None = None) -> MergeReport:
    """Merge `inputs` into `out` (written atomically under its lock; `out` may be one of the inputs).

    A speaker in two inputs is refused unless `replace` is "first" (the earliest input wins) or "last".
    """
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if len(paths) < 2:
        raise StoreError("merge needs at least two input stores")
    if replace not in (None, *REPLACE_RULES):
        raise StoreError(f"replace must be one of {', '.join(REPLACE_RULES)}, not {replace!r}")
    if len({p.resolve() for p in paths}) != len(paths):
        raise StoreError("an input store is named twice")
    if out.exists() and out.resolve() not in {p.resolve() for p in paths}:
        raise StoreError(f"{out}: already exists and is not one of the inputs; choose a new output file")
    if thresholds_from is not None and Path(thresholds_from).resolve() not in {p.resolve() for p in paths}:
        raise StoreError(f"{thresholds_from}: --thresholds-from must name one of the inputs")
    with vxf.locked(out):
        stores = [VoiceprintStore.open(p) for p in paths]
        first = stores[0]
        for p, s in zip(paths[1:], stores[1:]):
            if _identity(s) != _identity(first):
                raise StoreError(f"{p}: cannot merge with {paths[0]}: model, format, scale, dimension, enrollment "
                                 "or speech trimming differ")
        order = list(zip(paths, stores))
        if replace == "first":
            order.reverse()  # later writes win, so the earliest input is written last
        owner: dict[str, Path] = {}
        replaced: list[str] = []
        for p, s in order:
            for sid in s.speakers:
                if sid in owner:
                    if replace is None:
                        raise StoreError(f"{p}: speaker {sid!r} is also in {owner[sid]}; "
                                         "say which wins with --replace first|last")
                    replaced.append(sid)
                owner[sid] = p
        merged = first._editable()
        merged.path = out
        for _, s in order:
            if s is not first:
                merged.add_packed(s.speakers, np.asarray(s.packed), s.n_utterances, replace=True)
        if replace == "first":
            merged.add_packed(first.speakers, np.asarray(first.packed), first.n_utterances, replace=True)
        pick = next((s for p, s in zip(paths, stores) if thresholds_from is not None
                     and p.resolve() == Path(thresholds_from).resolve()), None)
        same = all((s.thresholds, s.header.get("threshold_source")) ==
                   (first.thresholds, first.header.get("threshold_source")) for s in stores)
        source = pick or (first if same else None)
        merged.set_thresholds(source.thresholds if source else {},
                              source.header.get("threshold_source") if source else None, replace=True)
        merged._write()
        report = MergeReport(out, len(merged), int(merged.n_utterances.sum()), sorted(set(replaced)),
                             merged.thresholds, merged.header.get("threshold_source"))
        for s in stores:
            s.close()
    return report
