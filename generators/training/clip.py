"""Training the default CLIP: an open_clip model from our config JSON, label-aware contrastive."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthgen.generators.training.data import caption, random_shift
from synthgen.generators.training.diffusion import cosine_lr

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

DIGITS_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 16, "layers": 3, "width": 96, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class ClipTrainConfig:
    name: str = "digits-clip"
    config: dict[str, Any] = field(default_factory=lambda: dict(DIGITS_CLIP_CONFIG))
    steps: int = 1500
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0


def normalize(images: Any) -> Any:
    """[0, 1] images -> open_clip's normalisation (the transform the scorer applies)."""
    import torch

    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def train_clip(
    model: Any, tokenizer: Any, images: Any, labels: np.ndarray, cfg: ClipTrainConfig, report: Any
) -> float:
    """Contrastive image-caption training on the train split.

    Captions of the same digit are all positives for an image (supervised-contrastive targets),
    so same-class pairs inside a batch are not pushed apart as if they were negatives.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(cfg.seed + 2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    model.train()
    running = 0.0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr)
        idx = torch.randint(0, len(images), (cfg.batch,), generator=g)
        x = normalize(random_shift(images[idx], g))
        y = torch.as_tensor(labels[idx.numpy()])
        templates = torch.randint(0, 1000, (cfg.batch,), generator=g).tolist()
        tokens = tokenizer(
            [caption(int(lbl), t) for lbl, t in zip(y.tolist(), templates, strict=True)]
        )
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        same = (y[:, None] == y[None, :]).float()
        target = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (
            -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
            - (target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = 0.98 * running + 0.02 * float(loss.detach()) if step else float(loss.detach())
        report("clip", step + 1, cfg.steps, running)
    model.eval()
    return running


def zero_shot(
    bundle_model: Any, tokenizer: Any, images: Any, labels: np.ndarray
) -> dict[str, float]:
    """Zero-shot accuracy and right-prompt-wins rate with EVAL_TEMPLATE prompts."""
    import torch

    from synthgen.generators.training.data import EVAL_TEMPLATE

    prompts = [EVAL_TEMPLATE.format(d=d) for d in range(10)]
    with torch.inference_mode():
        txt = bundle_model.encode_text(tokenizer(prompts), normalize=True)
        img = bundle_model.encode_image(normalize(images), normalize=True)
    sims = (img @ txt.T).numpy()
    pred = sims.argmax(axis=1)
    right = sims[np.arange(len(labels)), labels]
    wrong = sims.copy()
    wrong[np.arange(len(labels)), labels] = -np.inf
    return {
        "zero_shot_accuracy": float((pred == labels).mean()),
        "right_prompt_wins": float((right > wrong.max(axis=1)).mean()),
        "mean_right_similarity": float(right.mean()),
        "mean_best_wrong_similarity": float(wrong.max(axis=1).mean()),
    }
