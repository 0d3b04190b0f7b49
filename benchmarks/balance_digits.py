"""Class balancing on an imbalanced digits train split; prints per-class recall and macro-F1.

    .venv/bin/python benchmarks/balance_digits.py [--minority 3 5 8] [--keep 5]

The train split (train_test_split(..., test_size=0.25, random_state=0, stratify=y)) has the
minority classes cut to `--keep` samples each; it is written as an image folder and balanced
with recipes/digits-balance.yaml (target: max). The same classifier (an SVC on 8x8 grey
pixels) is trained on (a) the imbalanced real set and (b) the balanced set (real + accepted
synthetic, read back from balanced.parquet and the shards), and tested on the real test split.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from synthgen.generators.training.data import WORDS, load_split, to_features, to_images
from synthgen.pipelines.build import run_build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minority", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--keep", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import pandas as pd
    import torch
    from PIL import Image
    from sklearn.metrics import f1_score, recall_score
    from sklearn.svm import SVC

    split = load_split()
    keep = np.ones(len(split.y_train), dtype=bool)
    for c in args.minority:
        idx = np.flatnonzero(split.y_train == c)
        keep[idx[args.keep :]] = False
    x_imb, y_imb = split.x_train[keep], split.y_train[keep]
    images = (to_images(x_imb, 16).numpy().transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        for i, (im, y) in enumerate(zip(images, y_imb, strict=True)):
            d = source / WORDS[y]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(d / f"{i:05d}.png")
        t0 = time.monotonic()
        result = run_build(
            ROOT / "recipes" / "digits-balance.yaml",
            Path(tmp) / "out",
            overrides=[f"balance.source={source}"],
            show_progress=False,
        )
        seconds = time.monotonic() - t0
        out = result.output
        index = pd.read_parquet(out / "balanced.parquet")
        synth = index[index.source == "synthetic"]
        pixels: dict[str, np.ndarray] = {}
        for tar in sorted(out.glob("*.tar")):
            with tarfile.open(tar) as tf:
                for m in tf:
                    if m.name.endswith(".png"):
                        data = tf.extractfile(m).read()
                        pixels[m.name[:-4]] = np.asarray(
                            Image.open(io.BytesIO(data)).convert("RGB")
                        )
        synth_imgs = np.stack([pixels[k] for k in synth.key]).astype(np.float32) / 255.0
        x_syn = to_features(torch.tensor(synth_imgs.transpose(0, 3, 1, 2)))
        y_syn = synth.label.to_numpy()
        manifest = result.manifest

    real_feats = to_features(to_images(x_imb, 16))
    test_feats = to_features(to_images(split.x_test, 16))
    x_bal = np.concatenate([real_feats, x_syn])
    y_bal = np.concatenate([y_imb, y_syn])

    def evaluate(x, y):
        pred = SVC(gamma="scale", C=10.0).fit(x, y).predict(test_feats)
        return (
            recall_score(split.y_test, pred, average=None, labels=list(range(10))),
            f1_score(split.y_test, pred, average="macro"),
        )

    rec_a, f1_a = evaluate(real_feats, y_imb)
    rec_b, f1_b = evaluate(x_bal, y_bal)
    print(
        f"machine: {os.cpu_count()} CPU cores; minority classes {args.minority} cut to "
        f"{args.keep} train samples each"
    )
    print(f"before: {np.bincount(y_imb, minlength=10).tolist()}")
    print(
        f"after:  {np.bincount(y_bal, minlength=10).tolist()}  "
        f"({len(y_syn)} synthetic, {len(manifest.balance.rounds)} round(s), "
        f"{manifest.counts.rejected} rejected, build {seconds:.1f}s)"
    )
    print("class  recall(imbalanced)  recall(balanced)")
    for c in range(10):
        mark = "  <- minority" if c in args.minority else ""
        print(f"{c:>5}  {rec_a[c]:>18.3f}  {rec_b[c]:>16.3f}{mark}")
    gain = np.mean([rec_b[c] - rec_a[c] for c in args.minority])
    print(f"macro-F1: imbalanced {f1_a:.4f} -> balanced {f1_b:.4f}")
    print(f"mean minority-class recall gain: {100 * gain:+.1f} points")
    ok = gain >= 0.25 and f1_b > f1_a
    print(f"TARGET minority recall +25 points and macro-F1 up -> {'met' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
