"""Quality and speed of the bundled default models; prints every target and whether it is met.

    .venv/bin/python benchmarks/default_models.py [--per-class 100] [--grid FILE.png]

Label fidelity, Classification Accuracy Score, diversity and near-copies use an SVC trained on
the real train split's 8x8 grey pixels; CLIP figures use the real test split; speed is the
default build (recipes/digits.yaml) end to end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from synthgen.generators.handler import generate_batch
from synthgen.generators.model_folder import load_pipeline
from synthgen.generators.planning import plan
from synthgen.generators.training.clip import zero_shot
from synthgen.generators.training.data import EVAL_TEMPLATE, load_split, to_features, to_images
from synthgen.pipelines.build import run_build
from synthgen.pipelines.resolve import generation_settings, resolve
from synthgen.schemas.recipe import load_recipe
from synthgen.storage.images import decode_image

TARGETS = {
    "label_fidelity_min_class": 0.95,
    "cas_ratio": 0.90,
    "diversity_ratio": 0.60,
    "near_copy_fraction_max": 0.05,
    "clip_zero_shot": 0.95,
    "clip_right_prompt_wins": 0.95,
    "build_images_per_s": 5.0,
}


def classifier():
    from sklearn.svm import SVC

    return SVC(gamma="scale", C=10.0)


def generate(recipe_path: Path, per_class: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Generate per_class images of each digit with the recipe's model and sampler."""
    import torch

    recipe, base = load_recipe(recipe_path, [f"count_per_class={per_class}"])
    resolved = resolve(recipe, base)
    settings = generation_settings(resolved)
    pipe = load_pipeline(
        resolved.model_path,
        settings.scheduler,
        settings.dtype,
        settings.device,
        settings.cpu_threads,
    )
    torch.set_num_threads(os.cpu_count() or 1)
    requests = plan(recipe)
    images, labels = [], []
    for start in range(0, len(requests), 64):
        chunk = requests[start : start + 64]
        for s in generate_batch(pipe, settings, chunk):
            arr = np.asarray(decode_image(s.image), dtype=np.float32) / 255.0
            images.append(arr)
            labels.append(s.request.class_label)
    stack = np.stack(images).transpose(0, 3, 1, 2)
    return to_features(torch.tensor(stack)), np.array(labels), images


def spread(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance of a sample to its class centroid, averaged over classes."""
    out = []
    for c in np.unique(labels):
        f = features[labels == c]
        out.append(np.linalg.norm(f - f.mean(axis=0), axis=1).mean())
    return float(np.mean(out))


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d, 0)).min(axis=1)


def write_grid(images: list[np.ndarray], labels: np.ndarray, path: Path, per_row: int = 10) -> None:
    from PIL import Image

    rows = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)[:per_row]
        rows.append(np.concatenate([images[i] for i in idx], axis=1))
    grid = (np.concatenate(rows, axis=0) * 255).astype(np.uint8)
    img = Image.fromarray(grid)
    img = img.resize((img.width * 4, img.height * 4), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def build_speed(recipe_path: Path) -> tuple[float, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        result = run_build(recipe_path, Path(tmp) / "out", show_progress=False)
    n = result.manifest.counts.planned
    return n / result.seconds, n, result.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "digits.yaml"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--grid", default=None, help="write a 10x10 sample grid PNG here")
    parser.add_argument("--skip-build", action="store_true", help="skip the end-to-end speed run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import open_clip
    import torch

    from synthgen.validators.clip_folder import load_clip

    split = load_split()
    real_tr = to_features(to_images(split.x_train, 16))
    real_te = to_features(to_images(split.x_test, 16))
    clf = classifier().fit(real_tr, split.y_train)
    real_acc = float((clf.predict(real_te) == split.y_test).mean())

    t0 = time.monotonic()
    gen, gen_y, gen_images = generate(Path(args.recipe), args.per_class)
    gen_seconds = time.monotonic() - t0
    if args.grid:
        write_grid(gen_images, gen_y, Path(args.grid))

    pred = clf.predict(gen)
    fidelity = {c: float((pred[gen_y == c] == c).mean()) for c in range(10)}
    cas_clf = classifier().fit(gen, gen_y)
    cas_acc = float((cas_clf.predict(real_te) == split.y_test).mean())
    div_ratio = spread(gen, gen_y) / spread(real_tr, split.y_train)
    nn_gen = nearest(gen, real_tr)
    nn_test = nearest(real_te, real_tr)
    copy_threshold = float(np.percentile(nn_test, 1))
    near_copies = float((nn_gen < copy_threshold).mean())

    recipe, base = load_recipe(Path(args.recipe))
    resolved = resolve(recipe, base)
    bundle = load_clip(resolved.clip.config.parent)
    size = bundle.model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    clip_metrics = zero_shot(
        bundle.model, bundle.tokenizer, to_images(split.x_test, size), split.y_test
    )
    del open_clip, torch

    figures = {
        "label_fidelity_min_class": min(fidelity.values()),
        "cas_ratio": cas_acc / real_acc,
        "diversity_ratio": div_ratio,
        "near_copy_fraction_max": near_copies,
        "clip_zero_shot": clip_metrics["zero_shot_accuracy"],
        "clip_right_prompt_wins": clip_metrics["right_prompt_wins"],
    }
    print(f"machine: {os.cpu_count()} CPU cores; recipe {args.recipe}; {args.per_class}/class")
    print(f"real-train classifier test accuracy: {real_acc:.4f}")
    print("label fidelity per class: " + ", ".join(f"{c}:{v:.3f}" for c, v in fidelity.items()))
    print(f"mean label fidelity: {np.mean(list(fidelity.values())):.4f}")
    print(f"CAS: generated-trained test accuracy {cas_acc:.4f} = {cas_acc / real_acc:.3f} of real")
    print(f"diversity: within-class spread ratio generated/real {div_ratio:.3f}")
    print(
        f"near-copies: {near_copies:.4f} of generated images closer to a train image than "
        f"{copy_threshold:.2f} (1st percentile of real test->train distance)"
    )
    print(
        f"CLIP zero-shot ('{EVAL_TEMPLATE}'): accuracy {clip_metrics['zero_shot_accuracy']:.4f}, "
        f"right prompt beats every wrong one {clip_metrics['right_prompt_wins']:.4f}, "
        f"mean right sim {clip_metrics['mean_right_similarity']:.3f} vs best wrong "
        f"{clip_metrics['mean_best_wrong_similarity']:.3f}"
    )
    print(
        f"generation only: {len(gen)} images in {gen_seconds:.1f}s "
        f"({len(gen) / gen_seconds:.1f} images/s)"
    )
    if not args.skip_build:
        rate, n, secs = build_speed(Path(args.recipe))
        figures["build_images_per_s"] = rate
        print(f"default build end to end: {n} images in {secs:.1f}s = {rate:.2f} images/s")
    ok = True
    for name, target in TARGETS.items():
        if name not in figures:
            continue
        value = figures[name]
        met = value <= target if name.endswith("_max") else value >= target
        ok &= met
        print(
            f"TARGET {name}: {value:.4f} {'<=' if name.endswith('_max') else '>='} {target} "
            f"-> {'met' if met else 'NOT MET'}"
        )
    print("ALL TARGETS MET" if ok else "SOME TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
