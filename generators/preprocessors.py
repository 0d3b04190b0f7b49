"""Conditioning-image preprocessors and the resize policy: source image -> model input.

Each preprocessor is a pure function of (image, parameters): the same source bytes give the
same conditioning image on every worker. Names are listed once, in
`synthgen.schemas.recipe.PREPROCESSORS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from synthgen.schemas.recipe import PREPROCESSORS

__all__ = ["PreprocessorError", "decode_image", "fit_image", "preprocess"]


class PreprocessorError(ValueError):
    """An image could not be decoded, fitted or preprocessed; the message names it."""


def decode_image(data: bytes, where: str, mode: str = "RGB") -> Any:
    """Encoded image bytes as a PIL image in `mode` (the package's one decoder,
    `storage.images.decode_image`), or PreprocessorError naming `where`."""
    from synthgen.storage.images import decode_image as decode

    try:
        return decode(data, mode)
    except Exception as exc:
        raise PreprocessorError(f"{where}: unreadable image: {exc}") from None


def fit_image(
    image: Any, width: int, height: int, policy: str, resample_name: str = "bicubic"
) -> Any:
    """`image` fitted to width x height: `center_crop` (scale the short side, crop the centre),
    `stretch`, or `pad` (scale the long side, pad with black). Bicubic (`nearest` for masks,
    which must stay masks), deterministic."""
    from PIL import Image

    w, h = image.size
    if (w, h) == (width, height):
        return image.copy()
    resamplers = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}
    if resample_name not in resamplers:
        raise PreprocessorError(f"unknown resampling {resample_name!r}")
    resample = resamplers[resample_name]
    if policy == "stretch":
        return image.resize((width, height), resample)
    if policy == "center_crop":
        scale = max(width / w, height / h)
        sw, sh = max(width, math.ceil(w * scale)), max(height, math.ceil(h * scale))
        scaled = image.resize((sw, sh), resample)
        left, top = (sw - width) // 2, (sh - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    if policy == "pad":
        scale = min(width / w, height / h)
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new(image.mode, (width, height))
        canvas.paste(image.resize((sw, sh), resample), ((width - sw) // 2, (height - sh) // 2))
        return canvas
    raise PreprocessorError(f"unknown resize policy {policy!r}")


def _identity(image: Any, params: Mapping[str, Any]) -> Any:
    return image


def _canny(image: Any, params: Mapping[str, Any]) -> Any:
    """OpenCV's Canny edges of the grey image, white on black, as RGB."""
    import cv2
    import numpy as np
    from PIL import Image

    grey = np.asarray(image.convert("L"), dtype=np.uint8)
    edges = cv2.Canny(grey, int(params["low_threshold"]), int(params["high_threshold"]))
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


_PREPROCESSORS: dict[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "identity": _identity,
    "canny": _canny,
}
assert set(_PREPROCESSORS) == set(PREPROCESSORS), "one list of preprocessor names"


def preprocess(image: Any, params: Mapping[str, Any], where: str) -> Any:
    """Run the preprocessor `params["name"]` (with its parameters) on a PIL RGB image."""
    name = str(params.get("name", "identity"))
    fn = _PREPROCESSORS.get(name)
    if fn is None:
        raise PreprocessorError(f"{where}: unknown preprocessor {name!r}")
    try:
        out = fn(image, params)
    except PreprocessorError:
        raise
    except Exception as exc:
        raise PreprocessorError(f"{where}: preprocessor {name!r} cannot read it: {exc}") from None
    return out.convert("RGB")
