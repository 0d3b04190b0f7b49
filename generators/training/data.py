"""The digits data for the default models: scikit-learn's handwritten digits, fixed split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten digit {d}",
    "the number {w}",
    "a handwritten {w}",
    "the digit {d}",
    "an image of the number {w}",
    "a drawing of the digit {d}",
    "handwritten number {d}",
    "{w}",
)
# The prompt CLIP zero-shot evaluation and the default recipe use.
EVAL_TEMPLATE = "a handwritten digit {d}"
SPLIT = {"test_size": 0.25, "random_state": 0, "stratify": "y"}


@dataclass(frozen=True)
class DigitsSplit:
    x_train: np.ndarray  # (N, 64) in 0..16
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_split() -> DigitsSplit:
    """`train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)`.

    The test part is never used for training or model selection.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return DigitsSplit(x_tr, y_tr, x_te, y_te)


def caption(label: int, template: int) -> str:
    t = CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)]
    return t.format(d=label, w=WORDS[label])


def to_images(x: np.ndarray, size: int) -> Any:
    """(N, 64) digits in 0..16 -> float tensor (N, 3, size, size) in [0, 1], white ink on black."""
    import torch
    import torch.nn.functional as F

    t = torch.tensor(np.asarray(x, dtype=np.float32) / 16.0).view(-1, 1, 8, 8)
    if size != 8:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.clamp(0, 1).repeat(1, 3, 1, 1)


def to_features(images: Any) -> np.ndarray:
    """Images (N, 3, H, W) in [0, 1] -> (N, 64) grey 8x8 features in 0..16 (classifier input)."""
    import torch.nn.functional as F

    grey = images.float().mean(dim=1, keepdim=True)
    small = F.adaptive_avg_pool2d(grey, (8, 8))
    return (small.reshape(len(images), 64) * 16.0).cpu().numpy()


def random_shift(images: Any, generator: Any, max_shift: int = 1) -> Any:
    """Translate each image by up to `max_shift` pixels (zero fill): cheap augmentation."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(images)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out
