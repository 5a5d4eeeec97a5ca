"""The store's one error type: every bad input or bad file becomes one line naming the file and the problem."""
from __future__ import annotations

from voxfloat.errors import VoxfloatError


class StoreError(VoxfloatError):
    """A store, its header or its input is unusable; the message is a single user-facing line."""
