"""The production path on a simulated device: the real build (Beam, the generating stage,
scorers, checks, staging, the writer, the gate, the report) with the denoiser replaced by a
stand-in that holds neither the GIL nor a core for a fixed device time per call
(`time.sleep`) and returns deterministic full-size images, made and quantised at no host
cost (a device does both in its own time; the host copies their uint8 bytes).

Device times per call, from published H100 figures:
    sd15     512x512,   batch 8,  0.53 s  (about 15 images/s)
    sdxl     1024x1024, batch 4,  2.0 s   (about 2 images/s)
    onestep  512x512,   batch 16, 0.10 s  (a one-step distilled model)

    .venv/bin/python benchmarks/device_sim.py [--profiles sd15 sdxl onestep] [--images N]
        [--c2pa both|off|on] [--threads-check] [--rss 2000 20000]

For each profile (and C2PA off / on) it prints: device-busy fraction (calls x device time /
wall, for the whole build and for the generating stage alone), images/s, host CPU ms per
image (all of this process's CPU time over the build, divided by the images), peak RSS, and
beside it the stand-in alone in a loop. `--threads-check` also times a 4-thread build against
the in-process one on the default digits recipe; `--rss A B` runs two builds of A and B
images of the sd15 profile (one-step device time, so they finish) in fresh processes and
prints their peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Profile:
    name: str
    size: int
    batch: int
    device_s: float
    images: int  # default number of images for a run


PROFILES = {
    "sd15": Profile("sd15", 512, 8, 0.53, 1200),
    "sdxl": Profile("sdxl", 1024, 4, 2.0, 240),
    "onestep": Profile("onestep", 512, 16, 0.10, 2000),
}


def image_bank(size: int, n: int = 16) -> Any:
    """Test images (N, 3, H, W) in [0, 1]: a colour gradient, a soft low-frequency field and
    grain (PNG level 1 makes about 440 KB of a 512x512 one, as of a photo). Stronger
    low-frequency colour swings than these make synthgen's DWT-DCT watermark unreadable
    (`watermark` rejects), so the simulation would measure the reject path instead."""
    import numpy as np
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=0) * 255 * 0.6 + 40
    out = []
    for _ in range(n):
        low = torch.from_numpy(rng.random((1, 3, 16, 16), dtype=np.float32))
        field = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[0]
        grain = rng.normal(0, 4, base.shape)
        out.append(np.clip(base + 40 * (field.numpy() - 0.5) + grain, 0, 255) / 255)
    return torch.from_numpy(np.stack(out).astype(np.float32))


class DeviceImages:
    """A call's images as they sit on the simulated device: uint8 (H, W, C) views of the
    stand-in's bank, quantised "on the device" as `handler.to_pixels` quantises on a real
    one. `sim_to_pixels` copies them to the host, the one host cost of a real device's
    output (its uint8 copy)."""

    def __init__(self, crops: list[Any]):
        self.crops = crops

    def __getitem__(self, part: slice) -> DeviceImages:
        return DeviceImages(self.crops[part])

    def __len__(self) -> int:
        return len(self.crops)


class SimulatedPipeline:
    """A diffusers-pipeline stand-in: sleeps `device_s` per call (no GIL, no core) and
    returns images from a fixed bank chosen by each request's generator seed. Making them
    costs the host nothing (views of a bank quantised and tiled once, before the build), as a
    real device makes and quantises its images in its own time, not the host's."""

    def __init__(self, profile: Profile):
        import numpy as np

        self.profile = profile
        bank = (image_bank(profile.size).mul(255).clamp_(0, 255).round_()).to(torch.uint8)
        # each image tiled 2 x 2 (H, W, C): a roll by s is the crop at (size - s, size - s)
        self.tiled = [np.tile(b.permute(1, 2, 0).numpy(), (2, 2, 1)) for b in bank]
        self.calls = 0
        self.busy_s = 0.0
        self.first: float | None = None
        self.last = 0.0
        self._lock = threading.Lock()

    def _image(self, seed: int) -> Any:
        """A distinct image per seed: a bank image rolled by a seed-dependent offset along its
        diagonal (no two samples are duplicates, as with a real model; the picture's kind is
        kept, the grain differs). A view: no pixel is copied."""
        size = self.profile.size
        tiled = self.tiled[seed % len(self.tiled)]
        at = size - (seed // len(self.tiled)) % size
        return tiled[at : at + size, at : at + size]

    def __call__(self, *, generator: list[Any], output_type: str = "pt", **_: Any) -> Any:
        start = time.monotonic()
        images = DeviceImages([self._image(g.initial_seed()) for g in generator])
        time.sleep(max(0.0, self.profile.device_s - (time.monotonic() - start)))
        with self._lock:
            self.calls += 1
            self.busy_s += self.profile.device_s
            self.first = start if self.first is None else min(self.first, start)
            self.last = max(self.last, time.monotonic())

        class Out:
            pass

        out = Out()
        out.images = images  # type: ignore[attr-defined]
        return out


def sim_to_pixels(original: Any) -> Any:
    """`handler.to_pixels` for the stand-in's `DeviceImages`: their uint8 bytes copied to
    the host (what `.cpu()` of a real device's quantised images costs); anything else goes
    through `original`."""
    import numpy as np

    from synthgen.generators.handler import CallOutput

    def to_pixels(images: Any) -> Any:
        if isinstance(images, DeviceImages):
            return CallOutput(np.stack(images.crops), [True] * len(images))
        return original(images)

    return to_pixels


def _models(tmp: Path) -> Path:
    from synthgen.generators.clip_layout import make_random_clip
    from synthgen.generators.sd_layout import make_random_pipeline
    from tests.conftest import TINY_CLIP, TINY_SD

    make_random_pipeline(tmp / "sd", TINY_SD, seed=0)
    make_random_clip(tmp / "clip", name="tiny-clip", config=TINY_CLIP, seed=0)
    return tmp


def recipe_dict(models: Path, profile: Profile, images: int, c2pa: dict[str, str] | None) -> dict:
    per_class = max(1, images // 4)
    return {
        "name": f"sim-{profile.name}",
        "seed": 0,
        "model": {"path": str(models / "sd"), "compute_batch": profile.batch},
        "sampling": {
            "scheduler": "dpm-solver++",
            "steps": 25,
            "guidance_scale": 7.5,
            "height": profile.size,
            "width": profile.size,
            "negative_prompt": "blurry",
        },
        "classes": [
            {"id": i, "name": n, "prompts": [f"a photo of a {n}"]}
            for i, n in enumerate(("cat", "dog", "car", "tree"))
        ],
        "count_per_class": per_class,
        "scoring": {
            "clip_model": str(models / "clip"),
            "scorers": [{"name": "clip"}, {"name": "image_stats"}, {"name": "clip_embedding"}],
        },
        "checks": {"clip_score": None, "label_margin": None},  # random CLIP: keep everything
        "validation": {"min_accepted_fraction": 0.0},
        "output": {
            "shard_size": 8 * profile.batch,
            "image_format": "png",
            **({"c2pa": c2pa} if c2pa else {}),
        },
        "batch_size": profile.batch,
    }


def run_profile(
    profile: Profile, images: int, c2pa: bool, beam_args: list[str] | None = None
) -> dict[str, Any]:
    """One simulated build in this process; its figures."""
    from synthgen.generators import handler
    from synthgen.pipelines.build import run_build
    from synthgen.pipelines.runcontext import RunContext
    from synthgen.validators.gate_process import ENV
    from tests.conftest import write_recipe

    os.environ[ENV] = "1"  # every build its own gate process, as a command-line build has
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = _models(tmp / "models")
        signing = None
        if c2pa:
            from tests.pipelines.test_c2pa import make_pki

            pki = make_pki(tmp / "pki")
            signing = {"cert_chain": str(pki.chain), "key": str(pki.key)}
        data = recipe_dict(models, profile, images, signing)
        recipe = write_recipe(tmp / "recipe.yaml", data)
        sim = SimulatedPipeline(profile)
        original = handler.DiffusersHandler.load_model
        original_to_pixels = handler.to_pixels
        handler.DiffusersHandler.load_model = lambda self: sim  # type: ignore[method-assign]
        handler.to_pixels = sim_to_pixels(original_to_pixels)  # type: ignore[assignment]
        try:
            cpu0 = _cpu()
            start = time.monotonic()
            run = RunContext()
            run.prestart_gate()  # as `synthgen build` and `synthgen.build` do: it loads meanwhile
            result = run_build(
                recipe, tmp / "out", show_progress=False, beam_args=beam_args, run=run
            )
            wall = time.monotonic() - start
            cpu = _cpu() - cpu0
        finally:
            handler.DiffusersHandler.load_model = original  # type: ignore[method-assign]
            handler.to_pixels = original_to_pixels  # type: ignore[assignment]
        made = result.manifest.counts.attempted
        failed = result.manifest.counts.failed
        if failed:
            raise SystemExit(f"{profile.name}: {failed} samples failed: the figures would mislead")
        gen_wall = (sim.last - sim.first) if sim.first is not None else float("nan")
        return {
            "profile": profile.name,
            "c2pa": c2pa,
            "images": made,
            "accepted": result.manifest.counts.accepted,
            "calls": sim.calls,
            "wall_s": round(wall, 2),
            "device_busy": round(sim.busy_s / wall, 3),
            "device_busy_generating": round(sim.busy_s / gen_wall, 3),
            "images_per_s": round(made / wall, 2),
            "host_cpu_ms_per_image": round(1000 * cpu / made, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 0),
            "standin_alone_images_per_s": round(profile.batch / profile.device_s, 2),
            "generate_calls": result.metrics.get("generate_calls"),
        }


def _cpu() -> float:
    """CPU seconds of this process and of its ended children (the gate's process)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux the kernel's high-water mark of the
    process's own memory (`VmHWM`): `ru_maxrss` keeps, across fork and exec, the peak of the
    process that started this one, so a child started by a large parent would report the
    parent's figure."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def host_path_ms(profile: Profile, n: int = 40) -> float:
    """The post-generation path of one image on one thread, alone: watermark, encode, hash,
    phash, image stats, the watermark check, CLIP preprocessing and the CLIP forward."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from synthgen.generators.handler import finish_image
    from synthgen.generators.planning import plan
    from synthgen.pipelines.resolve import generation_settings, resolve
    from synthgen.schemas.recipe import recipe_from_dict
    from synthgen.validators.base import record_pixel_checks
    from synthgen.validators.build_checks import make_checks
    from synthgen.validators.scoring import ScoreSamples, prepare_sample, score_prepared

    with tempfile.TemporaryDirectory() as tmp_name:
        models = _models(Path(tmp_name))
        recipe = recipe_from_dict(recipe_dict(models, profile, n, None), "sim")
        resolved = resolve(recipe, Path(tmp_name))
        settings = generation_settings(resolved)
        checks, _ = make_checks(recipe, [*resolved.score_columns])
        loaded = ScoreSamples(list(resolved.scorers), "cpu", 1).load_model()
        bank = (image_bank(profile.size, 8) * 255).round().to(dtype=__import__("torch").uint8)
        pixels = bank.permute(0, 2, 3, 1).numpy()
        requests = plan(recipe)[:n]
        t0 = time.process_time()
        prepared = []
        for i, r in enumerate(requests):
            sample, px = finish_image(r, np.ascontiguousarray(pixels[i % 8]), True, settings)
            sample = record_pixel_checks(sample, px, checks)
            prepared.append(prepare_sample(loaded, sample, Image.fromarray(px)))
        score_prepared(loaded, prepared)
        _ = dataclasses  # (kept for symmetry with the build's path)
        return 1000 * (time.process_time() - t0) / n


def rss_child(images: int) -> None:
    profile = dataclasses_replace(PROFILES["sd15"], device_s=PROFILES["onestep"].device_s)
    figures = run_profile(profile, images, c2pa=False)
    print(json.dumps(figures))


def dataclasses_replace(p: Profile, **changes: Any) -> Profile:
    import dataclasses

    return dataclasses.replace(p, **changes)


def threads_check() -> dict[str, float]:
    """The default digits recipe built in-process and on four Beam threads, side by side."""
    from synthgen.pipelines.build import run_build

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in (
            ("in_process", []),
            ("four_threads", ["--direct_running_mode=multi_threading", "--direct_num_workers=4"]),
        ):
            start = time.monotonic()
            result = run_build(
                ROOT / "recipes" / "digits.yaml",
                Path(tmp) / name,
                overrides=["count_per_class=20", "output.shard_size=50"],
                show_progress=False,
                beam_args=args,
            )
            out[name] = round(time.monotonic() - start, 2)
            out[f"{name}_failed"] = result.manifest.counts.failed
    out["ratio"] = round(out["four_threads"] / out["in_process"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profiles",
        nargs="+",
        choices=list(PROFILES),
        help="default: every profile, or none with --rss / --threads-check",
    )
    parser.add_argument("--images", type=int, default=None, help="images per build")
    parser.add_argument("--c2pa", choices=("both", "off", "on"), default="both")
    parser.add_argument("--threads-check", action="store_true")
    parser.add_argument("--rss", type=int, nargs=2, metavar=("SMALL", "LARGE"))
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rss_child:
        rss_child(args.rss_child)
        return
    rows = []
    names = args.profiles
    if names is None:
        names = [] if args.rss or args.threads_check else list(PROFILES)
    for name in names:
        profile = PROFILES[name]
        for c2pa in {"both": (False, True), "off": (False,), "on": (True,)}[args.c2pa]:
            rows.append(run_profile(profile, args.images or profile.images, c2pa))
            print(json.dumps(rows[-1]), flush=True)
        print(
            json.dumps(
                {
                    "profile": name,
                    "host_path_ms_per_image_one_thread": round(host_path_ms(profile), 1),
                }
            ),
            flush=True,
        )
    if args.threads_check:
        print(json.dumps({"threads_check": threads_check()}), flush=True)
    if args.rss:
        small, large = (
            json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--rss-child", str(n)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            for n in args.rss
        )
        print(
            json.dumps(
                {
                    "rss": {
                        "small_images": small["images"],
                        "small_peak_rss_mb": small["peak_rss_mb"],
                        "large_images": large["images"],
                        "large_peak_rss_mb": large["peak_rss_mb"],
                        "ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
                    }
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
