"""Synthetic clips for the codec tests (imported by the tests and by their subprocesses)."""

from __future__ import annotations

import numpy as np


def clip(frames: int, height: int, width: int, shift: float = 0) -> np.ndarray:
    """A smooth, slowly moving colour pattern: uint8 (frames, height, width, 3)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = [
        np.stack(
            [
                128 + 60 * np.sin((x + 1.5 * t + shift) / 5),
                128 + 60 * np.cos((y - t) / 6),
                128 + 50 * np.sin((x + y + 2 * t) / 8),
            ],
            -1,
        )
        for t in range(frames)
    ]
    return np.stack(out).round().astype(np.uint8)


def blob(frames: int, size: int, shift: float = 0) -> np.ndarray:
    """A bright ellipse moving right a pixel a frame over a dark ground (a moving digit)."""
    y, x = np.mgrid[0:size, 0:size]
    out = []
    for t in range(frames):
        dx = (x - size / 3 - t - shift) / (size / 6)
        dy = (y - size / 2) / (size / 4)
        grey = np.where(dx**2 + dy**2 < 1, 230.0, 20.0) + 10 * np.sin(x / 3)
        out.append(np.stack([grey, grey * 0.8, grey * 0.5], -1))
    return np.clip(np.stack(out), 0, 255).round().astype(np.uint8)
