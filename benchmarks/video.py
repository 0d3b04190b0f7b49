"""Moving digits: speed and quality of clips from the bundled motion model (models/digits-motion).

    .venv/bin/python benchmarks/video.py [--per-class 10] [--skip-build] [--card]

Side by side in one run: a bare diffusers loop (AnimateDiffPipeline on the recipe's model,
scheduler, steps, guidance, size, frames and compute batch, stopping at float frames) and a
synthgen build of recipes/moving-digits.yaml (encoding, scoring, checks, shards). Each reports
clips/s and host CPU seconds per clip (this process and its ended children). Quality uses the
digits judge of benchmarks/default_models.py (an SVC on the real train split's 8x8 grey
pixels), frame by frame: per-frame digit accuracy, identity consistency (share of clips whose
frames all get one digit / all get the clip's class) and motion (mean absolute difference of
consecutive frames, 0-1), beside the same figures for real moving digits (the test split,
moved as the motion model was trained). `--card` writes the figures into the model card.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from default_models import classifier  # the digits judge

from synthgen.generators.training.data import load_split, to_features, to_images
from synthgen.generators.training.motion import MotionTrainConfig, model_card, moving_digits

RECIPE = ROOT / "recipes" / "moving-digits.yaml"


def cpu_seconds() -> float:
    """CPU seconds of this process and of its ended children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def recipe_settings(path: Path) -> dict[str, Any]:
    """The recipe's generation settings, read from its YAML (model folder resolved)."""
    data = yaml.safe_load(path.read_text("utf-8"))
    s = data["sampling"]
    return {
        "model": (path.parent / data["model"]["path"]).resolve(),
        "threads": int(data["model"].get("cpu_threads", 1)),
        "batch": int(data["model"].get("compute_batch", 10)),
        "scheduler": s["scheduler"],
        "steps": int(s["steps"]),
        "guidance": float(s["guidance_scale"]),
        "height": int(s["height"]),
        "width": int(s["width"]),
        "frames": int(s["num_frames"]),
        "negative": s.get("negative_prompt", ""),
        "seed": int(data.get("seed", 0)),
        "classes": [(int(c["id"]), list(c["prompts"])) for c in data["classes"]],
    }


def requests(s: dict[str, Any], per_class: int) -> list[tuple[int, str, int]]:
    """(class, prompt, seed) for per_class clips of every class, prompts in turn."""
    out = []
    for cid, prompts in s["classes"]:
        for i in range(per_class):
            out.append((cid, prompts[i % len(prompts)], s["seed"] * 1_000_003 + len(out)))
    return out


def bare_loop(
    s: dict[str, Any], per_class: int, still: bool = False
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Clips (N, F, H, W, 3) in [0, 1] from AnimateDiffPipeline alone, their classes, wall
    seconds and CPU seconds of the generation. `still`: the motion modules' output
    projections zeroed, so every frame is the image model's own, independent sample."""
    import torch
    from diffusers import AnimateDiffPipeline

    from synthgen.generators.model_folder import make_scheduler

    torch.set_num_threads(s["threads"])
    pipe = AnimateDiffPipeline.from_pretrained(str(s["model"]), local_files_only=True)
    pipe.scheduler = make_scheduler(s["scheduler"], pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if still:
        for name, module in pipe.unet.named_modules():
            if "motion_modules" in name and name.endswith("proj_out"):
                torch.nn.init.zeros_(module.weight)
                torch.nn.init.zeros_(module.bias)
    todo = requests(s, per_class)
    clips, labels = [], []
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i in range(0, len(todo), s["batch"]):
        chunk = todo[i : i + s["batch"]]
        with torch.inference_mode():
            out = pipe(
                prompt=[p for _, p, _ in chunk],
                negative_prompt=[s["negative"]] * len(chunk),
                num_frames=s["frames"],
                num_inference_steps=s["steps"],
                guidance_scale=s["guidance"],
                height=s["height"],
                width=s["width"],
                generator=[torch.Generator("cpu").manual_seed(seed) for _, _, seed in chunk],
                output_type="np",
            ).frames
        clips.append(np.asarray(out, dtype=np.float32))
        labels.extend(c for c, _, _ in chunk)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return np.concatenate(clips), np.array(labels), wall, cpu


def decode_mp4(data: bytes) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of an mp4, decoded by PyAV."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def build_clips(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every clip the build's WebDataset shards hold, (N, F, H, W, 3) in [0, 1], and classes."""
    members: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.rpartition(".")
                f = tar.extractfile(m)
                if f is not None and ext in ("mp4", "cls"):
                    members.setdefault(f"{shard}:{key}", {})[ext] = f.read()
    clips = [decode_mp4(v["mp4"]) for v in members.values() if "mp4" in v]
    labels = [int(v["cls"]) for v in members.values() if "mp4" in v]
    return np.stack(clips).astype(np.float32) / 255.0, np.array(labels)


def build(path: Path, per_class: int) -> dict[str, Any]:
    """A synthgen build of the recipe: its clips, clips/s and CPU per clip, or why not."""
    from synthgen.pipelines.build import run_build

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), cpu_seconds()
        try:
            result = run_build(
                path,
                Path(tmp) / "out",
                overrides=[f"count_per_class={per_class}"],
                show_progress=False,
            )
        except Exception as exc:  # the build path is what is being measured: say why not
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        clips, labels = build_clips(Path(tmp) / "out")
    n = result.manifest.counts.planned
    return {
        "clips": clips,
        "labels": labels,
        "n": n,
        "wall": wall,
        "cpu": cpu,
        "accepted": result.manifest.counts.accepted,
    }


def judge(shifts: bool = False) -> Any:
    """The digits judge; `shifts`: trained on every one-pixel shift of the train split too
    (the positions a moving digit passes through)."""
    split = load_split()
    images = to_images(split.x_train, 16)
    if not shifts:
        return classifier().fit(to_features(images), split.y_train)
    moved = torch_shifts(images)
    return classifier().fit(to_features(moved), np.tile(split.y_train, 9))


def torch_shifts(images: Any) -> Any:
    """All nine shifts of at most a pixel of `images` (N, C, H, W), stacked (9 N, C, H, W)."""
    import torch

    from synthgen.generators.training.motion import shifted

    return torch.cat([shifted(images, i, 1) for i in range(9)])


def aligned_residual(clips: np.ndarray) -> np.ndarray:
    """Per clip, the mean over consecutive frames of how far a frame is from its predecessor
    moved by the best shift of at most a pixel (zero fill), grey, 0-1: near 0 when a clip is
    one digit moving, large when each frame is another digit."""
    grey = clips.mean(axis=-1)  # (N, F, H, W)
    n, f, h, w = grey.shape
    padded = np.pad(grey[:, :-1], ((0, 0), (0, 0), (1, 1), (1, 1)))
    best = np.full((n, f - 1), np.inf)
    for dy in range(3):
        for dx in range(3):
            moved = padded[:, :, dy : dy + h, dx : dx + w]
            best = np.minimum(best, np.abs(grey[:, 1:] - moved).mean(axis=(2, 3)))
    return best.mean(axis=1)


def quality(clf: Any, clips: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-frame judge accuracy, identity consistency and motion of clips (N, F, H, W, 3)."""
    import torch

    n, f = clips.shape[:2]
    frames = torch.tensor(clips.reshape(n * f, *clips.shape[2:])).permute(0, 3, 1, 2)
    pred = clf.predict(to_features(frames)).reshape(n, f)
    diffs = np.abs(np.diff(clips, axis=1)).mean(axis=(2, 3, 4))  # (N, F-1)
    jump = diffs.max(axis=1) / np.maximum(np.median(diffs, axis=1), 1e-6)
    return {
        "clips": n,
        "frame_accuracy": float((pred == labels[:, None]).mean()),
        "worst_class_frame_accuracy": float(
            min((pred[labels == c] == c).mean() for c in np.unique(labels))
        ),
        "same_digit_all_frames": float((pred == pred[:, :1]).all(axis=1).mean()),
        "class_on_all_frames": float((pred == labels[:, None]).all(axis=1).mean()),
        "motion_mean": float(diffs.mean()),
        "motion_min_clip": float(diffs.mean(axis=1).min()),
        "max_jump_median": float(np.median(jump)),
        "aligned_residual": float(aligned_residual(clips).mean()),
    }


def real_clips(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Real moving digits from the test split, moved as the motion model was trained."""
    split = load_split()
    clips, rows = moving_digits(split.x_test, 10 * per_class, MotionTrainConfig(), seed=1)
    return clips.permute(0, 1, 3, 4, 2).numpy(), split.y_test[rows]


def _line(name: str, q: dict[str, float]) -> str:
    return (
        f"{name}: {q['clips']} clips; per-frame digit accuracy {q['frame_accuracy']:.3f} "
        f"(worst class {q['worst_class_frame_accuracy']:.3f}); same digit on all frames "
        f"{q['same_digit_all_frames']:.3f}, the class on all frames "
        f"{q['class_on_all_frames']:.3f}; "
        f"motion {q['motion_mean']:.4f} (least-moving clip {q['motion_min_clip']:.4f}), "
        f"max jump / median {q['max_jump_median']:.2f}; residual after the best one-pixel "
        f"shift {q['aligned_residual']:.4f}"
    )


def card_section(s: dict[str, Any], figures: dict[str, Any]) -> str:
    """The model card's quality section (Markdown) from this run's figures."""
    rows = []
    for name, key in (
        ("generated (bare diffusers loop)", "bare"),
        ("synthgen build (mp4, decoded)", "build"),
        ("image model alone, frames independent", "independent"),
        ("real moving digits (test split)", "real"),
        ("generated (bare loop), judge trained on shifts too", "bare_shift_judge"),
        ("real moving digits, judge trained on shifts too", "real_shift_judge"),
    ):
        if key not in figures:
            continue
        q = figures[key]
        rows.append(
            f"| {name} | {q['clips']} | {q['frame_accuracy']:.3f} | "
            f"{q['worst_class_frame_accuracy']:.3f} | {q['same_digit_all_frames']:.3f} | "
            f"{q['class_on_all_frames']:.3f} | {q['motion_mean']:.4f} | "
            f"{q['aligned_residual']:.4f} |"
        )
    return f"""
## Quality (`.venv/bin/python benchmarks/video.py`, {s["scheduler"]}, {s["steps"]} steps, \
guidance {s["guidance"]})
The digits judge (an SVC on the real train split's 8x8 grey pixels; in the last two rows
trained on their nine one-pixel shifts too) classifies every frame;
motion is the mean absolute difference of consecutive frames (0-1); the residual is what is
left of it after moving the earlier frame by its best shift of at most one pixel (near 0: one
digit moving; large: each frame another digit).

| clips | n | per-frame digit accuracy | worst class | same digit on all frames | \
the class on all frames | motion | residual |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Bare diffusers loop: {figures["bare_clips_per_s"]:.2f} clips/s, \
{figures["bare_cpu_per_clip"]:.2f} CPU s per clip ({s["threads"]} thread(s)).
"""


def measure_build(
    recipe: Path, per_class: int, clf: Any, figures: dict[str, Any], bare_wall: float
) -> None:
    """The synthgen build's speed and clips, beside the bare loop's, into `figures`."""
    b = build(recipe, per_class)
    if "error" in b:
        print(f"synthgen build: not run ({b['error']})")
        figures["build_error"] = b["error"]
        return
    figures["build"] = quality(clf, b["clips"], b["labels"])
    figures["build_clips_per_s"] = b["n"] / b["wall"]
    figures["build_cpu_per_clip"] = b["cpu"] / b["n"]
    print(
        f"synthgen build: {b['n']} clips ({b['accepted']} accepted) in "
        f"{b['wall']:.1f}s = {b['n'] / b['wall']:.2f} clips/s, "
        f"{b['cpu'] / b['n']:.2f} CPU s per clip; "
        f"{b['wall'] / bare_wall:.2f}x the bare loop's wall time"
    )
    print(_line("synthgen build clips (mp4, decoded)", figures["build"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--skip-build", action="store_true", help="the bare loop only")
    parser.add_argument(
        "--independent",
        action="store_true",
        help="also the image model alone (motion modules zeroed): frames sampled independently",
    )
    parser.add_argument("--card", action="store_true", help="write the figures into the card")
    parser.add_argument("--json", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    s = recipe_settings(Path(args.recipe))
    clf, clf_shifts = judge(), judge(shifts=True)
    clips, labels, wall, cpu = bare_loop(s, args.per_class)
    n = len(clips)
    real = real_clips(args.per_class)
    figures: dict[str, Any] = {
        "bare": quality(clf, clips, labels),
        "real": quality(clf, *real),
        "bare_shift_judge": quality(clf_shifts, clips, labels),
        "real_shift_judge": quality(clf_shifts, *real),
        "bare_clips_per_s": n / wall,
        "bare_cpu_per_clip": cpu / n,
    }
    print(f"machine: {os.cpu_count()} CPU cores; {args.recipe}; {args.per_class} clips/class")
    print(
        f"bare diffusers loop: {n} clips in {wall:.1f}s = {n / wall:.2f} clips/s, "
        f"{cpu / n:.2f} CPU s per clip"
    )
    if args.independent:
        still, still_labels, _, _ = bare_loop(s, args.per_class, still=True)
        figures["independent"] = quality(clf, still, still_labels)
    if not args.skip_build:
        measure_build(Path(args.recipe), args.per_class, clf, figures, wall)
    print(_line("bare loop clips", figures["bare"]))
    if "independent" in figures:
        print(_line("image model alone, frames independent", figures["independent"]))
    print(_line("real moving digits (test split)", figures["real"]))
    print("judge trained on the one-pixel shifts too:")
    print(_line("  bare loop clips", figures["bare_shift_judge"]))
    print(_line("  real moving digits (test split)", figures["real_shift_judge"]))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if args.card:
        folder = Path(s["model"])
        summary = json.loads((folder / "training.json").read_text("utf-8"))
        (folder / "README.md").write_text(model_card(summary, card_section(s, figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
