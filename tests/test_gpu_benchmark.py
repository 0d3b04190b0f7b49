"""benchmarks/gpu.py counts FLOPs over whole calls: the sum of every denoiser forward."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

from synthgen.generators.model_folder import load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _gpu_benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def test_call_flops_equal_the_sum_over_the_denoisers_forwards(model_dir: Path) -> None:
    gpu = _gpu_benchmark()
    pipe = load_pipeline(model_dir / "sd", "dpm-solver++", "float32", "cpu", 1)
    arch = gpu.ARCHS["sd15"]
    kwargs = gpu._call(arch, 1, 32, 3, 0)
    per_forward: list[int] = []
    original = pipe.unet.forward

    def counted(*args: Any, **kw: Any) -> Any:
        counter = FlopCounterMode(display=False)
        with counter:
            out = original(*args, **kw)
        per_forward.append(counter.get_total_flops())
        return out

    pipe.unet.forward = counted
    pipe(**kwargs)
    pipe.unet.forward = original
    assert len(per_forward) == 3  # three steps, CFG batched into each forward
    whole = gpu.call_flops(pipe, kwargs)
    assert whole["unet"] == sum(per_forward) > per_forward[-1]
    assert whole["vae"] > 0 and whole["text_encoder"] > 0
    assert whole["total"] >= whole["unet"] + whole["vae"] + whole["text_encoder"]
