"""Train the tiny demo CLIP from scratch on shapes-world (image, caption) pairs.

The recipe is the one measured in ``DEMO-WORLD.md`` (run E): a ModifiedResNet image tower of
width 16 at 64 px, a 2-layer text transformer, batch 128, lr 2e-3 with warm-up + cosine decay,
logit scale starting at 20, and one hard-negative caption for half of each batch. The schedule
is **step-based** (not wall-clock) so a busy machine trains the same model, only slower.

Captions are re-sampled every time an image is drawn; a token cache makes the BPE tokenizer
cost nothing after warm-up. Everything random comes from ``random_state`` (a local numpy
Generator and a forked torch RNG): two runs with the same arguments give the same weights.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..embedding.encoders import (DEMO_MODEL_NAME, DemoPreprocess, Encoder, demo_model_config,
                        demo_preprocess_cfg, register_demo_model)
from .captions import hard_negative_caption, rich_caption
from .world import ShapesWorld

import torch  # noqa: E402  (after encoders, which applies the torchvision import fix)
import torch.nn.functional as F  # noqa: E402

__all__ = ["train_demo_clip"]


def _param_groups(model, weight_decay: float):
    """open_clip's split: decay on matrices only; none on embeddings, biases, norms, logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = (p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
                   or "logit_scale" in name or "embedding" in name)
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def _lr_at(step: int, steps: int, base_lr: float, warmup: int) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * t))


def _clip_loss_with_hard_negatives(img, txt, neg_txt, scale):
    """Symmetric InfoNCE; image->text logits also see the extra negative captions (if any)."""
    n = img.shape[0]
    labels = torch.arange(n)
    candidates = txt if neg_txt is None else torch.cat([txt, neg_txt])
    logits_i = scale * img @ candidates.T
    logits_t = scale * txt @ img.T
    return 0.5 * (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels))


def train_demo_clip(world: ShapesWorld | None = None, *, n_images: int = 50_000, steps: int = 1300,
                    batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 0.1,
                    warmup_fraction: float = 0.03, hard_negatives: float = 0.5,
                    embed_dim: int = 64, images: np.ndarray | None = None, n_jobs: int = 2,
                    random_state: int = 0, threads: int | None = None,
                    progress: bool = True) -> tuple[Encoder, list[dict]]:
    """Train the demo CLIP; return ``(encoder, history)``.

    Parameters
    ----------
    world : the training world (default ``ShapesWorld(seed=1)``; the default catalog uses 777).
    n_images : distinct training images (rendered once, ``n_jobs`` processes).
    steps, batch_size, lr, weight_decay, warmup_fraction : AdamW with linear warm-up then cosine.
    hard_negatives : share of each batch that gets one extra false caption (one word changed).
    embed_dim : width of the shared embedding (64 in the recipe; the catalog reduces it to 32).
    images : optional pre-rendered ``world.images(0, n_images)`` to skip rendering.
    threads : ``torch.set_num_threads`` for the run (restored afterwards); None keeps it.

    ``history`` has one entry per 50 steps: ``step``, ``loss``, ``lr``, ``seconds``.
    """
    if steps < 1 or batch_size < 2 or n_images < batch_size:
        raise ValueError(f"need steps >= 1, batch_size >= 2 and n_images >= batch_size; got "
                         f"steps={steps}, batch_size={batch_size}, n_images={n_images}")
    if not 0.0 <= hard_negatives <= 1.0:
        raise ValueError(f"hard_negatives must be in [0, 1], got {hard_negatives!r}")
    world = ShapesWorld(seed=1) if world is None else world
    if images is None:
        images = world.images(0, n_images, n_jobs=n_jobs)
    elif images.shape[0] < n_images:
        raise ValueError(f"images has {images.shape[0]} rows, fewer than n_images={n_images}")
    metas = [world.metadata(i) for i in range(n_images)]

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    rng = np.random.default_rng(random_state)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(random_state))
            encoder = _fresh_demo_encoder(embed_dim)
            history = _train_loop(encoder, world, images, metas, rng, steps=steps,
                                  batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                  warmup=max(1, round(warmup_fraction * steps)),
                                  hard_negatives=hard_negatives, progress=progress)
    finally:
        torch.set_num_threads(old_threads)
    encoder.model.eval()
    return encoder, history


def _fresh_demo_encoder(embed_dim: int) -> Encoder:
    """A randomly initialised demo CLIP (logit scale 20) wrapped as an :class:`Encoder`."""
    import open_clip

    register_demo_model()
    cfg = demo_model_config(embed_dim)
    net = open_clip.CLIP(**cfg)
    with torch.no_grad():
        net.logit_scale.fill_(math.log(20.0))
    size = cfg["vision_cfg"]["image_size"]
    return Encoder(net, open_clip.get_tokenizer(DEMO_MODEL_NAME), DemoPreprocess(size),
                   model_cfg=cfg, preprocess_cfg=demo_preprocess_cfg(size), name=DEMO_MODEL_NAME,
                   device="cpu", dtype=torch.float32, demo_preprocess=True)


def _train_loop(encoder, world, images, metas, rng, *, steps, batch_size, lr, weight_decay, warmup,
                hard_negatives, progress):
    from tqdm.auto import tqdm

    model = encoder.model.train()
    tokenizer = encoder.tokenizer
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98),
                                  eps=1e-6)
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(texts):
        missing = [t for t in dict.fromkeys(texts) if t not in token_cache]
        if missing:
            for t, row in zip(missing, tokenizer(missing)):
                token_cache[t] = row
        return torch.stack([token_cache[t] for t in texts])

    history, loss_sum, loss_n, t0 = [], 0.0, 0, time.perf_counter()
    n_hard = int(round(hard_negatives * batch_size))
    bar = tqdm(range(steps), desc="train demo CLIP", unit="step", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        idx = rng.choice(len(metas), batch_size, replace=False)
        captions = [rich_caption(metas[i], rng) for i in idx]
        negatives = []
        for i, cap in zip(idx[:n_hard], captions[:n_hard]):
            neg = hard_negative_caption(cap, metas[i]["objects"], rng)
            if neg is not None:
                negatives.append(neg)
        x = DemoPreprocess.from_uint8(images[idx])
        all_tokens = tokens(captions + negatives)
        img = model.encode_image(x, normalize=True)
        txt_all = model.encode_text(all_tokens, normalize=True)
        txt, neg_txt = txt_all[:batch_size], (txt_all[batch_size:] if negatives else None)
        loss = _clip_loss_with_hard_negatives(img, txt, neg_txt, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        loss_sum += float(loss.detach())
        loss_n += 1
        if (step + 1) % 50 == 0 or step + 1 == steps:
            history.append({"step": step + 1, "loss": loss_sum / loss_n,
                            "lr": optimizer.param_groups[0]["lr"],
                            "seconds": time.perf_counter() - t0})
            bar.set_postfix(loss=f"{loss_sum / loss_n:.3f}")
            loss_sum, loss_n = 0.0, 0
    bar.close()
    return history
