"""Class balancing through per-class LoRAs (`balance.conditioning: lora`) on the imbalanced
digits cut of benchmarks/balance_digits.py; prints per-class recall, macro-F1 and diversity.

    .venv/bin/python benchmarks/balance_lora.py [--minority 3 5 8] [--keep 5] [--modes lora text]

The cut is the same: the train split (train_test_split(..., test_size=0.25, random_state=0,
stratify=y)) with the minority classes cut to `--keep` samples each, written as an image
folder. It is balanced with recipes/digits-balance-lora.yaml (a LoRA trained per minority
class on its `--keep` real images, then generated through). `--modes lora text` also
balances the same cut with recipes/digits-balance.yaml (the class prompts only).
Only the minority classes are topped up (`balance.target`: each to the largest class count):
with `target: max` every class a sample or two short of the largest would get its own LoRA.
The same classifier (an SVC on 8x8 grey pixels, gamma=scale, C=10) is trained on the
imbalanced real set and on each balanced set, and tested on the real test split.

Diversity of the top-up: per minority class, the mean pairwise Euclidean distance between
its synthetic samples' 8x8 grey features (0..16), next to the same figure for the class's
real test images, and the share of distinct synthetic images (by sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from synthgen.generators.training.data import WORDS, load_split, to_features, to_images
from synthgen.pipelines.build import run_build

sys.path.insert(0, str(Path(__file__).resolve().parent))
from balance_digits import accepted_pngs
from balance_digits import mean_pairwise_distance as mean_pairwise


def imbalanced_cut(split: Any, minority: list[int], keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The train split with each minority class cut to its first `keep` samples."""
    mask = np.ones(len(split.y_train), dtype=bool)
    for c in minority:
        idx = np.flatnonzero(split.y_train == c)
        mask[idx[keep:]] = False
    return split.x_train[mask], split.y_train[mask]


def write_folder(x: np.ndarray, y: np.ndarray, folder: Path) -> Path:
    from PIL import Image

    images = (to_images(x, 16).numpy().transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    for i, (im, label) in enumerate(zip(images, y, strict=True)):
        d = folder / WORDS[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:05d}.png")
    return folder


def synthetic_set(out: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features, labels and image sha256 of the accepted synthetic samples of a build."""
    import pandas as pd
    import torch
    from PIL import Image

    index = pd.read_parquet(out / "balanced.parquet")
    synth = index[index.source == "synthetic"]
    data = accepted_pngs(out)
    pixels = np.stack(
        [np.asarray(Image.open(io.BytesIO(data[k])).convert("RGB")) for k in synth.key]
    ).astype(np.float32)
    x = to_features(torch.tensor(pixels.transpose(0, 3, 1, 2) / 255.0))
    shas = [hashlib.sha256(data[k]).hexdigest() for k in synth.key]
    return x, synth.label.to_numpy(), shas


def evaluate(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> Any:
    from sklearn.metrics import f1_score, recall_score
    from sklearn.svm import SVC

    pred = SVC(gamma="scale", C=10.0).fit(x, y).predict(test_x)
    recall = recall_score(test_y, pred, average=None, labels=list(range(10)))
    return recall, float(f1_score(test_y, pred, average="macro"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minority", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--keep", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=["lora", "text"], default=["lora"])
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="recipe override, e.g. balance.lora.scale=0.5 (both modes)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    split = load_split()
    x_imb, y_imb = imbalanced_cut(split, args.minority, args.keep)
    real = to_features(to_images(x_imb, 16))
    test = to_features(to_images(split.x_test, 16))
    recipes = {"lora": "digits-balance-lora.yaml", "text": "digits-balance.yaml"}
    modes = [(m, recipes[m]) for m in args.modes]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = write_folder(x_imb, y_imb, Path(tmp) / "source")
        top = int(np.bincount(y_imb).max())
        target = "{" + ", ".join(f"{WORDS[c]}: {top}" for c in args.minority) + "}"
        for mode, recipe in modes:
            t0 = time.monotonic()
            result = run_build(
                ROOT / "recipes" / recipe,
                Path(tmp) / f"out-{mode}",
                overrides=[
                    f"balance.source={source}",
                    f"balance.target={target}",
                    *args.overrides,
                ],
                show_progress=False,
            )
            seconds = time.monotonic() - t0
            x_syn, y_syn, shas = synthetic_set(result.output)
            recall, f1 = evaluate(
                np.concatenate([real, x_syn]), np.concatenate([y_imb, y_syn]), test, split.y_test
            )
            m = result.manifest
            results[mode] = {
                "recall": recall,
                "f1": f1,
                "x": x_syn,
                "y": y_syn,
                "shas": shas,
                "seconds": seconds,
                "rounds": len(m.balance.rounds) if m.balance else 0,
                "rejected": m.counts.rejected,
                "adapters": m.adapters or {},
            }
    rec_a, f1_a = evaluate(real, y_imb, test, split.y_test)

    print(
        f"machine: {os.cpu_count()} CPU cores; minority classes {args.minority} cut to "
        f"{args.keep} train samples each"
    )
    print(f"before: {np.bincount(y_imb, minlength=10).tolist()}")
    for mode, r in results.items():
        extra = " (LoRA training included)" if mode == "lora" else ""
        print(
            f"{mode}: {len(r['y'])} synthetic, {r['rounds']} round(s), {r['rejected']} "
            f"rejected, build {r['seconds']:.1f}s{extra}"
        )
    header = "class  recall(imbalanced)" + "".join(f"  recall({m})" for m in results)
    print(header)
    for c in range(10):
        mark = "  <- minority" if c in args.minority else ""
        cells = "".join(f"  {r['recall'][c]:>{len(m) + 8}.3f}" for m, r in results.items())
        print(f"{c:>5}  {rec_a[c]:>18.3f}{cells}{mark}")
    print(
        f"macro-F1: imbalanced {f1_a:.4f}"
        + "".join(f"; {m} {r['f1']:.4f}" for m, r in results.items())
    )
    for mode, r in results.items():
        gain = np.mean([r["recall"][c] - rec_a[c] for c in args.minority])
        print(f"{mode}: mean minority-class recall gain {100 * gain:+.1f} points")
    print("diversity of the top-up (mean pairwise distance of 8x8 features; distinct images)")
    for c in args.minority:
        real_c = mean_pairwise(test[split.y_test == c])
        cells = []
        for mode, r in results.items():
            sel = r["y"] == c
            distinct = len(set(np.asarray(r["shas"])[sel])) / max(1, int(sel.sum()))
            cells.append(
                f"{mode} {mean_pairwise(r['x'][sel]):.2f} ({100 * distinct:.0f}% distinct)"
            )
        print(f"{c:>5}  real test {real_c:.2f}; " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
