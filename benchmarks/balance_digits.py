"""Class balancing on an imbalanced digits train split, every balancing mode side by side.

    .venv/bin/python benchmarks/balance_digits.py [--modes text img2img mix lora oversample
        feedback feedback-guided text-equal] [--minority 3 5 8 | --cuts 3,5,8 2,4,9]
        [--keep 5] [--strength S] [--mix-text F] [--target max|minority] [--steps N]
        [--set dotted.key=value ...]

The train split (train_test_split(..., test_size=0.25, random_state=0, stratify=y)) has the
minority classes cut to `--keep` samples each; it is written as an image folder and balanced
once per mode:

- `text`: recipes/digits-balance.yaml (the class prompts);
- `img2img`: recipes/digits-balance-img2img.yaml (each top-up starts from one of its class's
  own real images, `--strength` overrides the recipe's);
- `mix`: the img2img recipe with `balance.conditioning: {text: F, img2img: 1 - F}`
  (`--mix-text`, default 0.5): each top-up's mode drawn from (seed, key);
- `lora`: recipes/digits-balance-lora.yaml (a LoRA trained per topped-up class on its real
  images; with `--target max` that is every class short of the largest, so `--target
  minority` is the faster comparison);
- `oversample`: no build, the baseline: the real train set with each minority class repeated
  up to the largest class's count, each copy shifted by one pixel (or not) in x and y and
  given a little Gaussian noise (no flips: a flipped digit is another glyph or none);
- `feedback`: closed-loop balancing, recipes/digits-balance-feedback.yaml (where it is
  missing, the text recipe with `--set balance.strategy=feedback`): each round a probe on
  the CLIP image embeddings decides where the next round's samples go, within the recipe's
  synthetic budget;
- `feedback-guided`: the same with `balance.feedback.guidance=feedback` (sampling steered by
  the round's probe); skipped, with the build's reason, where the build refuses it;
- `text-equal`: text-only balancing at feedback's budget: each short class's shortfall scaled
  so that the targets add up to as many synthetic images as `feedback` accepted (run after
  `feedback`, in the same cut).

`--cuts` runs every mode on each cut (a comma list of minority classes) in one run, e.g.
`--cuts 3,5,8 2,4,9`; `--minority` is the one-cut form. `--target minority` tops up only the
minority classes (each to the largest class) in the open-loop modes; `max` (default) every
class short of the largest. `--set` overrides apply to every mode (e.g. `--set
sampling.guidance_scale=2.0`); `--feedback-set` overrides apply to the feedback modes only
(e.g. `--feedback-set balance.feedback.features=image_embedding`). The same classifier (an
SVC on 8x8 grey pixels) is trained on the imbalanced real set and on each balanced set (real
+ accepted synthetic, read back from the balanced index and the shards), and tested on the
real test split. Reported per mode: minority recall per class, their mean, macro-F1, the
synthetic images used, the diversity of the generated top-up (mean pairwise distance of its
8x8 pixel features, per minority class; the full real train class for comparison), the share
of distinct synthetic images, rounds, rejects and build time; per round, the SVC on the
synthetic images accepted up to that round and (feedback) the build's own probe metrics,
allocation and reason from the manifest. With `feedback` and `text`, the closed-loop goal:
on every cut, feedback reaches text's minority recall with at most half of text's synthetic
images, and is not below `text-equal` (text at feedback's budget).
`--steps` overrides sampling.steps (smaller: faster, for slow machines).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import synthgen
from synthgen.generators.training.data import WORDS, load_split, to_features, to_images
from synthgen.pipelines.build import run_build
from synthgen.storage.tars import iter_tar_samples

TEXT_RECIPE = ROOT / "recipes" / "digits-balance.yaml"
FEEDBACK_RECIPE = ROOT / "recipes" / "digits-balance-feedback.yaml"
RECIPES = {
    "text": TEXT_RECIPE,
    "img2img": ROOT / "recipes" / "digits-balance-img2img.yaml",
    "mix": ROOT / "recipes" / "digits-balance-img2img.yaml",
    "lora": ROOT / "recipes" / "digits-balance-lora.yaml",
    "feedback": FEEDBACK_RECIPE,
    "feedback-guided": FEEDBACK_RECIPE,
    "text-equal": TEXT_RECIPE,
}
MODES = ("oversample", *RECIPES)
# run order within a cut: text-equal needs feedback's count
ORDER = (
    "oversample",
    "text",
    "img2img",
    "mix",
    "lora",
    "feedback",
    "feedback-guided",
    "text-equal",
)
BUILT = tuple(m for m in ORDER if m != "oversample")
GOAL_MINORITY_RECALL = 0.95
GOAL_SHARE = 0.5  # feedback reaches text's minority recall with at most this share of images
NOISE = 0.03  # oversampling: Gaussian noise sigma on [0, 1] pixels


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance over distinct pairs of rows (0 for fewer than two rows)."""
    if len(x) < 2:
        return 0.0
    sq = (x**2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def accepted_pngs(out: Path) -> dict[str, bytes]:
    """key -> PNG bytes of every accepted sample in a build's tars."""
    return {
        s.key: s.members["png"]
        for tar in sorted(out.glob("*.tar"))
        for s in iter_tar_samples(tar, extensions={"png"})
    }


@dataclass(frozen=True)
class Synthetic:
    """The accepted synthetic samples of a balanced build, in the balanced index's order."""

    features: np.ndarray
    labels: np.ndarray
    shas: list[str]
    names: list[str]  # class names
    index: np.ndarray  # each sample's index within its class (the planner's numbering)


def _synthetic(out: Path) -> Synthetic:
    """Features, labels, image sha256 and sample indices of the accepted synthetic samples
    of a balanced build."""
    import pandas as pd
    import torch
    from PIL import Image

    index = synthgen.load(out).balanced().table.to_pandas()
    synth = index[index.source == "synthetic"]
    if synth.empty:
        empty = np.zeros(0, dtype=int)
        return Synthetic(np.zeros((0, 64), dtype=np.float32), empty, [], [], empty)
    data = accepted_pngs(out)
    rows = pd.concat(
        [pd.read_parquet(p, columns=["key", "index"]) for p in sorted(out.glob("*.parquet"))]
    )
    where = dict(zip(rows["key"], rows["index"], strict=True))
    pixels = [np.asarray(Image.open(io.BytesIO(data[k])).convert("RGB")) for k in synth.key]
    imgs = np.stack(pixels).astype(np.float32) / 255.0
    return Synthetic(
        to_features(torch.tensor(imgs.transpose(0, 3, 1, 2))),
        synth.label.to_numpy(),
        [hashlib.sha256(data[k]).hexdigest() for k in synth.key],
        synth.class_name.astype(str).tolist(),
        np.array([int(where[k]) for k in synth.key]),
    )


@dataclass
class Cut:
    """One imbalanced train split: the real images kept, their features, the test split."""

    minority: list[int]
    keep: int
    y: np.ndarray
    images: np.ndarray  # (N, 16, 16, 3) uint8
    features: np.ndarray
    test_features: np.ndarray
    y_test: np.ndarray
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def top(self) -> int:
        return int(np.bincount(self.y).max())

    @property
    def label(self) -> str:
        return " ".join(map(str, self.minority))


def make_cut(split: Any, minority: list[int], keep: int) -> Cut:
    mask = np.ones(len(split.y_train), dtype=bool)
    for c in minority:
        mask[np.flatnonzero(split.y_train == c)[keep:]] = False
    x, y = split.x_train[mask], split.y_train[mask]
    images = (to_images(x, 16).numpy().transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    return Cut(
        minority=list(minority),
        keep=keep,
        y=y,
        images=images,
        features=to_features(to_images(x, 16)),
        test_features=to_features(to_images(split.x_test, 16)),
        y_test=split.y_test,
    )


def evaluate(cut: Cut, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """The benchmark's classifier trained on (x, y): recall per class on the real test
    split, and its macro-F1."""
    from sklearn.metrics import f1_score, recall_score
    from sklearn.svm import SVC

    pred = SVC(gamma="scale", C=10.0).fit(x, y).predict(cut.test_features)
    return (
        recall_score(cut.y_test, pred, average=None, labels=list(range(10))),
        float(f1_score(cut.y_test, pred, average="macro")),
    )


def minority_recall(cut: Cut, recall: np.ndarray) -> float:
    return float(np.mean([recall[c] for c in cut.minority]))


def oversampled(cut: Cut, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's extra training rows: each minority class's real images repeated (in
    turn) up to the largest class's count, each copy shifted by -1, 0 or 1 pixel in x and y
    (zero fill) with Gaussian noise (sigma NOISE) on [0, 1] pixels; features and labels."""
    import torch

    rng = np.random.default_rng(seed)
    copies, labels = [], []
    for c in cut.minority:
        own = cut.images[cut.y == c].astype(np.float32) / 255.0
        for i in range(cut.top - len(own)):
            dy, dx = rng.integers(-1, 2, size=2)
            image = np.zeros_like(own[0])
            src = own[i % len(own)]
            h, w = src.shape[:2]
            image[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = src[
                max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
            ]
            noisy = np.clip(image + rng.normal(0.0, NOISE, size=image.shape), 0.0, 1.0)
            copies.append(noisy.astype(np.float32))
            labels.append(c)
    if not copies:
        return np.zeros((0, 64), dtype=np.float32), np.zeros(0, dtype=int)
    batch = torch.tensor(np.stack(copies).transpose(0, 3, 1, 2))
    return to_features(batch), np.array(labels)


def write_source(cut: Cut, folder: Path) -> None:
    from PIL import Image

    for i, (im, y) in enumerate(zip(cut.images, cut.y, strict=True)):
        d = folder / WORDS[y]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:05d}.png")


def equal_budget_target(cut: Cut, budget: int, minority_only: bool) -> dict[str, int]:
    """Text-only targets that add up to `budget` synthetic images: each short class's
    shortfall to the largest class scaled by the same factor (largest remainders first)."""
    counts = np.bincount(cut.y, minlength=10)
    short = {c: cut.top - int(counts[c]) for c in range(10) if counts[c] < cut.top}
    if minority_only:
        short = {c: n for c, n in short.items() if c in cut.minority}
    total = sum(short.values())
    budget = min(budget, total)
    exact = {c: n * budget / total for c, n in short.items()}
    alloc = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (alloc[c] - exact[c], c))[: budget - sum(alloc.values())]:
        alloc[c] += 1
    return {WORDS[c]: int(counts[c]) + n for c, n in alloc.items() if n > 0}


def mode_overrides(mode: str, cut: Cut, source: Path, args: argparse.Namespace) -> list[str]:
    """The recipe overrides of one mode's build in one cut (the source first)."""
    overrides = [f"balance.source={source}"]
    open_loop = not mode.startswith("feedback")
    if args.target == "minority" and open_loop and mode != "text-equal":
        named = ", ".join(f"{WORDS[c]}: {cut.top}" for c in cut.minority)
        overrides.append(f"balance.target={{{named}}}")
    if mode == "text-equal":
        budget = args.budget or cut.results["feedback"]["synthetic"]
        target = equal_budget_target(cut, budget, False)
        overrides.append(
            "balance.target={" + ", ".join(f"{k}: {v}" for k, v in target.items()) + "}"
        )
    if args.steps is not None:
        overrides.append(f"sampling.steps={args.steps}")
    if args.strength is not None and mode in ("img2img", "mix"):
        overrides.append(f"balance.strength={args.strength}")
    if mode == "mix":
        share = args.mix_text
        overrides.append(f"balance.conditioning={{text: {share}, img2img: {round(1 - share, 6)}}}")
    if not open_loop and not FEEDBACK_RECIPE.exists():
        overrides.append("balance.strategy=feedback")
    if mode == "feedback-guided":
        overrides.append("balance.feedback.guidance=feedback")
    if not open_loop:
        overrides += args.feedback_overrides
    return overrides + args.overrides


def svc_rounds(cut: Cut, manifest: Any, syn: Synthetic) -> list[dict[str, Any]]:
    """The SVC trained on the real images and the synthetic ones planned up to each round
    (a round plans each class's next indices: manifest.balance.rounds)."""
    if manifest.balance is None:
        return []
    end: dict[str, int] = {}
    out = []
    for r in manifest.balance.rounds:
        for cls, n in r.planned.items():
            end[cls] = end.get(cls, 0) + int(n)
        upto = np.array(
            [i < end.get(c, 0) for c, i in zip(syn.names, syn.index, strict=True)], dtype=bool
        )
        recall, f1 = evaluate(
            cut,
            np.concatenate([cut.features, syn.features[upto]]),
            np.concatenate([cut.y, syn.labels[upto]]),
        )
        out.append(
            {
                "round": r.round,
                "synthetic": int(upto.sum()),
                "minority_recall": minority_recall(cut, recall),
                "f1": f1,
            }
        )
    return out


def build_mode(mode: str, cut: Cut, tmp: Path, args: argparse.Namespace) -> None:
    """Build one mode in one cut and score it (cut.results), or record why not
    (cut.skipped)."""
    if mode == "text-equal" and "feedback" not in cut.results and not args.budget:
        cut.skipped[mode] = "needs the feedback build's synthetic count (add feedback or --budget)"
        return
    source = tmp / "source"
    overrides = mode_overrides(mode, cut, source, args)
    t0 = time.monotonic()
    try:
        result = run_build(RECIPES[mode], tmp / mode, overrides=overrides, show_progress=False)
    except ValueError as exc:  # a RecipeError: the build refused the recipe
        if mode != "feedback-guided":
            raise
        cut.skipped[mode] = f"the build refused it: {type(exc).__name__}: {exc}"
        return
    except Exception as exc:
        if not mode.startswith("feedback"):
            raise
        # the other rows still print; the goal counts the row as missing
        cut.skipped[mode] = f"the build FAILED: {type(exc).__name__}: {exc}"
        return
    seconds = time.monotonic() - t0
    syn = _synthetic(result.output)
    recall, f1 = evaluate(
        cut, np.concatenate([cut.features, syn.features]), np.concatenate([cut.y, syn.labels])
    )
    manifest = result.manifest
    feedback = getattr(manifest.balance, "feedback", None) if manifest.balance else None
    cut.results[mode] = {
        "recall": recall,
        "f1": f1,
        "synthetic": len(syn.labels),
        "rounds": len(manifest.balance.rounds) if manifest.balance else 0,
        "rejected": manifest.counts.rejected,
        "seconds": seconds,
        "diversity": {
            c: mean_pairwise_distance(syn.features[syn.labels == c]) for c in cut.minority
        },
        "distinct": len(set(syn.shas)) / max(1, len(syn.shas)),
        "shas": syn.shas,
        "overrides": overrides[1:],
        "svc_rounds": svc_rounds(cut, manifest, syn),
        "feedback": feedback.model_dump(mode="json") if feedback is not None else None,
    }


def run_cut(cut: Cut, modes: list[str], args: argparse.Namespace) -> None:
    """Every requested mode on one cut, in ORDER."""
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.workdir) / "-".join(map(str, cut.minority)) if args.workdir else scratch
        write_source(cut, Path(tmp) / "source")
        # a cache of its own per cut: the shared reference cache keys an image folder by its
        # *.json/*.txt/*.safetensors files only, so every cut's source would read as the first
        os.environ["SYNTHGEN_CACHE_DIR"] = str(Path(tmp) / "cache")
        for mode in (m for m in ORDER if m in modes):
            if mode == "oversample":
                t0 = time.monotonic()
                x_aug, y_aug = oversampled(cut)
                recall, f1 = evaluate(
                    cut, np.concatenate([cut.features, x_aug]), np.concatenate([cut.y, y_aug])
                )
                cut.results[mode] = {
                    "recall": recall,
                    "f1": f1,
                    "synthetic": 0,
                    "augmented": len(y_aug),
                    "seconds": time.monotonic() - t0,
                }
                continue
            build_mode(mode, cut, Path(tmp), args)


def print_modes(cut: Cut, real: tuple[np.ndarray, float]) -> None:
    """The per-class recall table and the per-mode summary of one cut."""
    results = cut.results
    for mode, r in results.items():
        if mode == "oversample":
            print(f"oversample: {r['augmented']} augmented copies of real images, 0 synthetic")
            continue
        print(
            f"{mode}: {r['synthetic']} synthetic, {r['rounds']} round(s), {r['rejected']} "
            f"rejected, build {r['seconds']:.1f}s {' '.join(r['overrides'])}"
        )
    for mode, why in cut.skipped.items():
        print(f"{mode}: SKIPPED ({why})")
    print("class  imbalanced" + "".join(f"  {m:>15}" for m in results))
    for c in range(10):
        mark = "  <- minority" if c in cut.minority else ""
        cells = "".join(f"  {r['recall'][c]:>15.3f}" for r in results.values())
        print(f"{c:>5}  {real[0][c]:>10.3f}{cells}{mark}")
    print("mode             synthetic     minority recall  macro-F1")
    print(f"{'real only':<15}  {0:>12}  {minority_recall(cut, real[0]):>15.3f}  {real[1]:>8.4f}")
    for mode, r in results.items():
        used = r["synthetic"] if mode != "oversample" else f"0 (+{r['augmented']} aug)"
        recall = minority_recall(cut, r["recall"])
        print(f"{mode:<15}  {used!s:>12}  {recall:>15.3f}  {r['f1']:>8.4f}")


def print_built_details(cut: Cut, split: Any) -> None:
    """Diversity, distinct images and the per-round curves of the built modes."""
    built = {m: r for m, r in cut.results.items() if m != "oversample"}
    if not built:
        return
    print("top-up diversity (mean pairwise distance, 8x8 features) per minority class:")
    for c in cut.minority:
        real = mean_pairwise_distance(to_features(to_images(split.x_train[split.y_train == c], 16)))
        cells = "; ".join(f"{m} {r['diversity'][c]:.2f}" for m, r in built.items())
        print(f"  {c}: {cells}; full real train class {real:.2f}")
    print(
        "distinct synthetic images: "
        + "; ".join(f"{m} {100 * r['distinct']:.0f}%" for m, r in built.items())
    )
    if "feedback" in built and "feedback-guided" in built:
        same = set(built["feedback"]["shas"]) & set(built["feedback-guided"]["shas"])
        print(
            f"feedback-guided: {len(same)} of its {len(built['feedback-guided']['shas'])} "
            "synthetic images byte-identical to unguided feedback's"
            + (" (the guidance changed no image)" if same == set(built["feedback"]["shas"]) else "")
        )
    for mode, r in built.items():
        print(f"{mode} per round (SVC on real + the synthetic images planned up to the round):")
        for p in r["svc_rounds"]:
            print(
                f"  round {p['round']}: {p['synthetic']} synthetic, minority recall "
                f"{p['minority_recall']:.3f}, macro-F1 {p['f1']:.4f}"
            )
        if r["feedback"]:
            print_probe_rounds(r["feedback"])


def print_probe_rounds(feedback: dict[str, Any]) -> None:
    """The build's own probe per round, from manifest.balance.feedback."""

    def metrics(m: dict[str, Any]) -> str:
        return (
            f"error {m['error']:.4f}, macro-F1 {m['macro_f1']:.4f}, minority recall "
            f"{m['minority_recall']:.3f}"
        )

    print("  probe (held-out, from the manifest):")
    for key in ("real_only", "baseline"):
        if feedback.get(key):
            print(f"    {key}: {metrics(feedback[key])}")
    for r in feedback["rounds"]:
        alloc = ", ".join(f"{c} {n}" for c, n in r["allocation"].items() if n)
        print(
            f"    round {r['round']}: {r['synthetic_so_far']} synthetic so far, "
            f"{metrics(r['metrics'])}; next: {alloc or 'nothing'} ({r['reason']})"
        )
    print(f"    stop: {feedback['stop']}")


def goal(cut: Cut) -> bool | None:
    """The closed-loop goal on one cut (None where feedback or text was not run); prints
    its lines."""
    res = cut.results
    if "feedback" not in res or "text" not in res:
        return None
    text_recall = minority_recall(cut, res["text"]["recall"])
    cap = GOAL_SHARE * res["text"]["synthetic"]
    fb = res["feedback"]
    reach = [
        p for p in fb["svc_rounds"] if p["synthetic"] <= cap and p["minority_recall"] >= text_recall
    ]
    final = minority_recall(cut, fb["recall"])
    if final >= text_recall and fb["synthetic"] <= cap:
        reach.append({"round": "final", "synthetic": fb["synthetic"], "minority_recall": final})
    first = min(reach, key=lambda p: p["synthetic"]) if reach else None
    print(
        f"GOAL cut {cut.label}: feedback reaches text's minority recall {text_recall:.3f} with "
        f"<= {cap:.0f} synthetic images (50% of {res['text']['synthetic']}): "
        + (
            f"met at round {first['round']} ({first['synthetic']} synthetic, "
            f"{first['minority_recall']:.3f})"
            if first
            else f"NOT MET (feedback: {fb['synthetic']} synthetic, {final:.3f})"
        )
    )
    ok = first is not None
    if "text-equal" in res:
        equal = minority_recall(cut, res["text-equal"]["recall"])
        fine = final >= equal
        print(
            f"GOAL cut {cut.label}: feedback {final:.3f} not below text at equal budget "
            f"({res['text-equal']['synthetic']} synthetic) {equal:.3f}: "
            + ("met" if fine else "NOT MET")
        )
        ok = ok and fine
    else:
        print(f"GOAL cut {cut.label}: equal budget not measured (add text-equal)")
        ok = False
    return ok


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["text", "img2img"])
    parser.add_argument("--minority", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument(
        "--cuts",
        nargs="+",
        default=None,
        help="several cuts in one run, each a comma list of minority classes: 3,5,8 2,4,9",
    )
    parser.add_argument("--keep", type=int, default=5)
    parser.add_argument(
        "--strength", type=float, default=None, help="img2img / mix strength override"
    )
    parser.add_argument(
        "--mix-text", type=float, default=0.5, help="mix: the text share of the top-ups"
    )
    parser.add_argument(
        "--target", choices=["max", "minority"], default="max", help="which classes to top up"
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling.steps override")
    parser.add_argument(
        "--workdir",
        default=None,
        help="keep the builds (and their reports) in WORKDIR/<cut>/<mode> (must not exist)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="text-equal's synthetic images (default: as many as feedback accepted)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="recipe override for every mode, e.g. sampling.guidance_scale=2.0",
    )
    parser.add_argument(
        "--feedback-set",
        dest="feedback_overrides",
        action="append",
        default=[],
        help="recipe override for the feedback modes only, e.g. "
        "balance.feedback.features=image_embedding",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    cuts = (
        [[int(c) for c in cut.split(",") if c] for cut in args.cuts]
        if args.cuts
        else [args.minority]
    )
    split = load_split()
    t0 = time.monotonic()
    print(f"machine: {os.cpu_count()} CPU cores; modes {' '.join(args.modes)}")
    goals, best_ok = [], True
    for minority in cuts:
        cut = make_cut(split, minority, args.keep)
        run_cut(cut, args.modes, args)
        real = evaluate(cut, cut.features, cut.y)
        print(f"\n== cut: minority classes {minority} cut to {args.keep} train samples each")
        print(f"before: {np.bincount(cut.y, minlength=10).tolist()}")
        print_modes(cut, real)
        print_built_details(cut, split)
        synth = {m: minority_recall(cut, r["recall"]) for m, r in cut.results.items() if m in BUILT}
        if synth:
            best = max(synth, key=lambda m: synth[m])
            ok = synth[best] >= GOAL_MINORITY_RECALL
            best_ok = best_ok and ok
            print(
                f"TARGET mean minority recall >= {GOAL_MINORITY_RECALL} with the best mode "
                f"({best} {synth[best]:.3f}) -> {'met' if ok else 'NOT MET'}"
            )
        goals.append(goal(cut))
    measured = [g for g in goals if g is not None]
    if measured:
        met = all(measured) and len(measured) == len(cuts)
        print(f"CLOSED-LOOP GOAL on every cut: {'met' if met else 'NOT MET'}")
        best_ok = best_ok and met
    print(f"total wall time {time.monotonic() - t0:.0f}s")
    return 0 if best_ok else 1


if __name__ == "__main__":
    sys.exit(main())
