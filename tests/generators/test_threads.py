"""torch's thread count is per thread once a thread has run torch: a model call pins the
recipe's `model.cpu_threads` in the thread that makes it (storage.host.pin_torch_threads),
so a long-lived worker thread that first met another count (Beam reuses its threads from
build to build in one process) computes with the same rounding as a fresh one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from synthgen.generators.handler import plan_calls, run_call
from synthgen.generators.model_folder import load_pipeline
from synthgen.generators.planning import plan
from synthgen.pipelines.resolve import generation_settings, resolve
from synthgen.schemas.recipe import recipe_from_dict
from synthgen.storage.host import pin_torch_threads
from tests.conftest import tiny_recipe_dict


def _in_a_thread_that_met(count: int, work: Callable[[], Any]) -> tuple[int, Any]:
    """Run `work` in a thread whose torch thread count was first read while the process
    count was `count` (then set back to 1 from this thread): (its count before, the result)."""
    before = torch.get_num_threads()
    ready, go, out = threading.Event(), threading.Event(), {}

    def body() -> None:
        out["met"] = torch.get_num_threads()  # this thread's count is fixed here
        ready.set()
        go.wait()
        out["before"] = torch.get_num_threads()
        out["result"] = work()

    try:
        torch.set_num_threads(count)
        thread = threading.Thread(target=body)
        thread.start()
        ready.wait()
        torch.set_num_threads(1)  # the loader's call, from another thread
        go.set()
        thread.join()
    finally:
        torch.set_num_threads(before)
    assert out["met"] == count
    return out["before"], out["result"]


def test_a_model_call_computes_on_the_recipes_thread_count_in_a_reused_thread(
    model_dir: Path, tmp_path: Path
) -> None:
    recipe = recipe_from_dict(tiny_recipe_dict(model_dir, count_per_class=1))
    assert recipe.model.cpu_threads == 1
    settings = generation_settings(resolve(recipe, tmp_path))
    pipe = load_pipeline(model_dir / "sd", "native", "float32", "cpu", 1)
    seen: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    call = plan_calls(settings, plan(recipe)[:1])[0]
    before, out = _in_a_thread_that_met(3, lambda: run_call(pipe, settings, call))
    assert before == 3  # the thread still had the count it met, as torch leaves it
    assert seen and set(seen) == {1}  # every UNet pass ran on the recipe's one thread
    assert out.pixels[0].shape == (settings.height, settings.width, 3)


def test_pinning_leaves_other_devices_and_a_matching_count_alone() -> None:
    calls: list[int] = []
    real = torch.set_num_threads
    try:
        torch.set_num_threads = lambda n: (calls.append(n), real(n))[1]  # type: ignore[assignment]
        pin_torch_threads("cuda:0", 7)
        pin_torch_threads("cpu", torch.get_num_threads())
        assert calls == []
        before, _ = _in_a_thread_that_met(2, lambda: pin_torch_threads("cpu", 1))
        assert before == 2 and calls[-1] == 1
    finally:
        torch.set_num_threads = real  # type: ignore[assignment]
