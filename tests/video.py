"""What the clip tests share: the smallest clip each tiny video model makes, a tiny clip
recipe, and PyAV as the independent reader of an mp4."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import tiny_recipe_dict

# family -> (pipeline class, height, width, frames): the smallest clip each tiny model makes
CLIPS = {
    "wan": ("WanPipeline", 16, 16, 5),
    "ltx": ("LTXPipeline", 32, 32, 9),
    "cogvideox": ("CogVideoXPipeline", 16, 16, 9),
    "animatediff": ("AnimateDiffPipeline", 16, 16, 6),
}
FPS = 8


def clip_recipe(folder: Path, family: str, model_dir: Path, fps: int = FPS) -> dict[str, Any]:
    """Four clips of two classes in two shards of two, two steps, two clips a call."""
    _, height, width, frames = CLIPS[family]
    data = tiny_recipe_dict(model_dir)
    data["model"] = {"path": str(folder), "compute_batch": 2}
    data["sampling"] = {
        "scheduler": "native",
        "steps": 2,
        "guidance_scale": 2.0,
        "height": height,
        "width": width,
        "negative_prompt": "blurry",
        "num_frames": frames,
        "fps": fps,
    }
    data["classes"] = data["classes"][:2]
    data["count_per_class"] = 2
    data["checks"] = {"clip_score": None}
    data["output"] = {"shard_size": 2}
    return data


def pyav_frames(data: bytes) -> tuple[Any, int]:
    """An independent reader's view of an mp4: its frames (rgb24) and frame rate."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), int(stream.average_rate or 0)


def clips_and_sidecars(out: Path) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """A build's clips (mp4 bytes) and sidecars (parsed JSON), by key, from its tars."""
    clips: dict[str, bytes] = {}
    sidecars: dict[str, dict[str, Any]] = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                member = tf.extractfile(m)
                assert member is not None
                key, _, ext = m.name.partition(".")
                if ext == "mp4":
                    clips[key] = member.read()
                elif ext == "json":
                    sidecars[key] = json.loads(member.read())
    return clips, sidecars
