"""The one error hierarchy: every user-facing failure is a VoxfloatError whose message is one line naming the file."""
from __future__ import annotations


class VoxfloatError(Exception):
    """Base of every error voxfloat reports to a user; str(e) is one line, "<file>: <problem>" where a file is involved."""

    def __str__(self) -> str:
        lines = super().__str__().strip().splitlines()
        return lines[0] if lines else type(self).__name__


class UsageError(VoxfloatError, ValueError):
    """An argument value a caller passed is out of range or of the wrong kind (a threshold of NaN, an unknown device)."""


class OutputError(VoxfloatError):
    """An output file (embeddings, report, plot) that cannot be written safely."""


class ListError(VoxfloatError):
    """An enrollment list (CSV or speaker folders) that cannot be used; the message names the file and line."""
