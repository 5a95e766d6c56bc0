"""Projection heads: frozen encoder features -> 32-d unit vectors for the uint8 catalog.

The catalog stores 32-d unit vectors quantised to 8 bits and searches them with axis-aligned
boxes. A small head per modality (image, text) maps frozen encoder features (e.g. CLIP
embeddings) into that space. As in the original (reference section 4.2) the heads are
Linear-BatchNorm-ReLU MLPs whose output is L2-normalised, trained on (image, caption) feature
pairs with

    loss = CLIP contrastive loss + koleo_weight * KoLeo,

where KoLeo (Kozachenko-Leonenko entropy estimator) pushes every point away from its nearest
neighbour in the batch. Spreading the points out fills the sphere more evenly, which is what
uniform 8-bit quantisation and box queries want. The best epoch is chosen by validation
image->text top-1 accuracy.

This is the only module of the package that imports torch; the search engine stays torch-free
and only ever sees the numpy arrays returned by :meth:`TrainedHead.embed_images` /
:meth:`TrainedHead.embed_texts`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._atomic import atomic_open

__all__ = [
    "ProjectionHead",
    "TrainedHead",
    "clip_contrastive_loss",
    "koleo_loss",
    "train_head",
]

#: Initial value of the learnable log logit scale, as in CLIP: temperature 0.07.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
#: CLIP clamps the logit scale at 100 so the softmax cannot become arbitrarily sharp.
MAX_LOGIT_SCALE = math.log(100.0)
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Model and losses
# ----------------------------------------------------------------------------------------------


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden (x n_hidden_layers) -> out_dim`` with an L2-normalised output.

    Each hidden layer is Linear -> BatchNorm1d -> ReLU, like the original heads; the default
    (one hidden layer of 512) is smaller than the original. ``n_hidden_layers=0`` gives a plain
    linear projection followed by the normalisation.
    """

    def __init__(self, in_dim: int, out_dim: int = 32, hidden: int = 512, n_hidden_layers: int = 1):
        super().__init__()
        for name, value, low in (("in_dim", in_dim, 1), ("out_dim", out_dim, 1), ("hidden", hidden, 1),
                                 ("n_hidden_layers", n_hidden_layers, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.hidden, self.n_hidden_layers = int(hidden), int(n_hidden_layers)
        layers: list[nn.Module] = []
        width = self.in_dim
        for _ in range(self.n_hidden_layers):
            layers += [nn.Linear(width, self.hidden), nn.BatchNorm1d(self.hidden), nn.ReLU()]
            width = self.hidden
        layers.append(nn.Linear(width, self.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the module before loading a state dict."""
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "hidden": self.hidden,
                "n_hidden_layers": self.n_hidden_layers}


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser: ``-mean_i log(min_{j != i} ||x_i - x_j|| + eps)`` over the batch.

    ``x`` is L2-normalised first. For unit vectors the nearest neighbour is the one with the
    largest inner product, so the neighbour is found on the similarity matrix with the diagonal
    set to -inf (a point is never its own neighbour); the distance is then recomputed directly
    from the two vectors, which keeps the gradient finite even for duplicate points (the eps
    inside ``pairwise_distance`` avoids the sqrt(0) gradient). Lower = better spread.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo_loss needs a (n >= 2, d) batch, got shape {tuple(x.shape)}")
    x = F.normalize(x, dim=-1)
    with torch.no_grad():
        sim = x @ x.T
        sim.fill_diagonal_(-math.inf)
        nn_index = sim.argmax(dim=1)
    dist = F.pairwise_distance(x, x[nn_index], eps=eps)
    return -torch.log(dist + eps).mean()


def clip_contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP cross-entropy over the in-batch logit matrix (matches on the diagonal).

    ``img`` and ``txt`` are (n, d) unit vectors, row i of one paired with row i of the other.
    ``logit_scale`` is the *log* of the multiplier (CLIP's parameterisation), so the logits are
    ``exp(logit_scale) * img @ txt.T``.
    """
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"img and txt must have the same (n, d) shape, got {tuple(img.shape)} "
                         f"and {tuple(txt.shape)}")
    logits = logit_scale.exp() * img @ txt.T
    target = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# ----------------------------------------------------------------------------------------------
# Trained result
# ----------------------------------------------------------------------------------------------


def _as_features(features, name: str, dim: int | None = None) -> np.ndarray:
    """Validate a feature matrix and return it as C-contiguous float32."""
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (n, dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has {arr.shape[1]} columns but the head expects {dim}")
    return arr


class TrainedHead:
    """Result of :func:`train_head`: the two heads (best validation state) and the training log.

    Attributes
    ----------
    image_head, text_head : ProjectionHead
        In eval mode. With ``shared=True`` both names refer to the same module.
    logit_scale : float
        Learned log logit scale (only needed to reproduce the loss; retrieval ignores it).
    history : list of dict
        One entry per epoch; epoch 0 is the untrained state (``train_loss`` None).
        Keys: ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``.
    best_epoch : int
        Epoch whose state is kept (0 = training never beat the initial state).
    config : dict
        The training arguments.
    """

    def __init__(self, image_head: ProjectionHead, text_head: ProjectionHead, logit_scale: float,
                 history: list[dict], best_epoch: int, config: dict):
        self.image_head = image_head.eval()
        self.text_head = text_head.eval()
        self.logit_scale = float(logit_scale)
        self.history = history
        self.best_epoch = int(best_epoch)
        self.config = dict(config)

    @property
    def shared(self) -> bool:
        return self.image_head is self.text_head

    @property
    def out_dim(self) -> int:
        return self.image_head.out_dim

    def __repr__(self) -> str:
        return (f"TrainedHead(image {self.image_head.in_dim}->{self.out_dim}, text "
                f"{self.text_head.in_dim}->{self.out_dim}, shared={self.shared}, "
                f"best_epoch={self.best_epoch})")

    @staticmethod
    def _embed(head: ProjectionHead, features, name: str, batch_size: int = 4096) -> np.ndarray:
        arr = _as_features(features, name, head.in_dim)
        head.eval()  # BatchNorm must use its running statistics, not the batch's
        out = np.empty((arr.shape[0], head.out_dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, arr.shape[0], batch_size):
                chunk = torch.from_numpy(arr[start:start + batch_size])
                out[start:start + batch_size] = head(chunk).numpy()
        return out

    def embed_images(self, features) -> np.ndarray:
        """Map image features (n, image_dim) to float32 unit vectors (n, out_dim)."""
        return self._embed(self.image_head, features, "image features")

    def embed_texts(self, features) -> np.ndarray:
        """Map text features (n, text_dim) to float32 unit vectors (n, out_dim)."""
        return self._embed(self.text_head, features, "text features")

    def save(self, path) -> None:
        """Write one ``.pt`` file (state dicts + config + history), atomically."""
        payload = {
            "format_version": _FORMAT_VERSION,
            "shared": self.shared,
            "image_head_config": self.image_head.config(),
            "image_head_state": self.image_head.state_dict(),
            "text_head_config": self.text_head.config(),
            "text_head_state": None if self.shared else self.text_head.state_dict(),
            "logit_scale": self.logit_scale,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "config": self.config,
        }
        # Temp file in the same folder + os.replace: a crash never leaves a truncated file.
        with atomic_open(Path(path), "wb") as f:
            torch.save(payload, f)

    @classmethod
    def load(cls, path) -> "TrainedHead":
        """Read a file written by :meth:`save` (tensors and plain Python types only)."""
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        if payload.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported head file version {payload.get('format_version')!r}")
        image_head = ProjectionHead(**payload["image_head_config"])
        image_head.load_state_dict(payload["image_head_state"])
        if payload["shared"]:
            text_head = image_head
        else:
            text_head = ProjectionHead(**payload["text_head_config"])
            text_head.load_state_dict(payload["text_head_state"])
        return cls(image_head, text_head, payload["logit_scale"], payload["history"],
                   payload["best_epoch"], payload["config"])


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _batch_loss(img_head, txt_head, logit_scale, x_img, x_txt, koleo_weight):
    img, txt = img_head(x_img), txt_head(x_txt)
    loss = clip_contrastive_loss(img, txt, logit_scale)
    if koleo_weight:
        # KoLeo on each modality separately, averaged (as in the original).
        loss = loss + koleo_weight * 0.5 * (koleo_loss(img) + koleo_loss(txt))
    return loss


def _evaluate(img_head, txt_head, logit_scale, x_img, x_txt, koleo_weight, batch_size):
    """Validation loss (mean of in-batch losses) and image->text top-1 accuracy.

    The accuracy ranks *all* validation captions for every image (harder and less noisy than the
    in-batch accuracy of the original, and independent of the batch size).
    """
    img_head.eval()
    txt_head.eval()
    with torch.no_grad():
        losses, weights = [], []
        for start in range(0, x_img.shape[0], batch_size):
            xb_i, xb_t = x_img[start:start + batch_size], x_txt[start:start + batch_size]
            if xb_i.shape[0] < 2:  # a 1-row batch has no negatives and no neighbour
                continue
            losses.append(float(_batch_loss(img_head, txt_head, logit_scale, xb_i, xb_t, koleo_weight)))
            weights.append(xb_i.shape[0])
        val_loss = float(np.average(losses, weights=weights))
        img, txt = img_head(x_img), txt_head(x_txt)
        correct = 0
        for start in range(0, img.shape[0], 1024):  # chunked: never an n x n matrix at once
            best = (img[start:start + 1024] @ txt.T).argmax(dim=1)
            correct += int((best == torch.arange(start, start + best.shape[0])).sum())
    return val_loss, correct / img.shape[0]


def train_head(image_features, text_features, *, out_dim: int = 32, hidden: int = 512,
               n_hidden_layers: int = 1, koleo_weight: float = 0.1, epochs: int = 20,
               batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.0,
               val_fraction: float = 0.1, shared: bool = False, random_state: int = 0,
               progress: bool = True) -> TrainedHead:
    """Train image and text projection heads on paired features; return the best state.

    Parameters
    ----------
    image_features, text_features : array-like, shape (n, image_dim) and (n, text_dim)
        Row i of both is one (image, caption) pair.
    out_dim, hidden, n_hidden_layers : head architecture (see :class:`ProjectionHead`).
    koleo_weight : weight of the KoLeo spread term (0 disables it).
    epochs, batch_size, lr, weight_decay : AdamW optimisation settings.
    val_fraction : share of pairs held out (at least 2 rows each side) to select the best epoch.
    shared : one head for both modalities (needs image_dim == text_dim).
    random_state : seeds the split, shuffling and initialisation; the global RNGs are untouched.
    progress : show a tqdm bar over epochs.

    The kept state is the epoch with the highest validation image->text top-1 accuracy (ties:
    lower validation loss); the untrained state counts as epoch 0.
    """
    x_img = _as_features(image_features, "image_features")
    x_txt = _as_features(text_features, "text_features")
    n = x_img.shape[0]
    if x_txt.shape[0] != n:
        raise ValueError(f"image_features has {n} rows but text_features has {x_txt.shape[0]}; "
                         "they must be paired row by row")
    if n < 4:
        raise ValueError(f"need at least 4 pairs to split into training and validation, got {n}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if shared and x_img.shape[1] != x_txt.shape[1]:
        raise ValueError(f"shared=True needs equal feature dims, got {x_img.shape[1]} (image) and "
                         f"{x_txt.shape[1]} (text)")
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    if not (math.isfinite(koleo_weight) and koleo_weight >= 0):
        raise ValueError(f"koleo_weight must be finite and >= 0, got {koleo_weight!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")

    config = {"out_dim": int(out_dim), "hidden": int(hidden), "n_hidden_layers": int(n_hidden_layers),
              "koleo_weight": float(koleo_weight), "epochs": int(epochs), "batch_size": int(batch_size),
              "lr": float(lr), "weight_decay": float(weight_decay), "val_fraction": float(val_fraction),
              "shared": bool(shared), "random_state": int(random_state)}

    # A local generator drives the split and the shuffling; initialisation uses the global torch
    # RNG (nn.Linear has no generator argument), so it is seeded only inside fork_rng, which
    # restores the caller's RNG state afterwards.
    gen = torch.Generator().manual_seed(int(random_state))
    # Both sides keep >= 2 rows: a contrastive batch needs a negative, KoLeo a neighbour.
    n_val = min(max(2, round(val_fraction * n)), n - 2)
    perm = torch.randperm(n, generator=gen)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    t_img, t_txt = torch.from_numpy(x_img), torch.from_numpy(x_txt)
    tr_img, tr_txt = t_img[train_idx], t_txt[train_idx]
    va_img, va_txt = t_img[val_idx], t_txt[val_idx]
    n_train = tr_img.shape[0]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(random_state))
        img_head = ProjectionHead(x_img.shape[1], out_dim, hidden, n_hidden_layers)
        txt_head = img_head if shared else ProjectionHead(x_txt.shape[1], out_dim, hidden, n_hidden_layers)
        logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        params = list(img_head.parameters()) + ([] if shared else list(txt_head.parameters()))
        optimizer = torch.optim.AdamW(params + [logit_scale], lr=lr, weight_decay=weight_decay)

        def snapshot():
            return (copy.deepcopy(img_head.state_dict()),
                    None if shared else copy.deepcopy(txt_head.state_dict()),
                    float(logit_scale.detach()))

        val_loss, val_acc = _evaluate(img_head, txt_head, logit_scale, va_img, va_txt, koleo_weight, batch_size)
        history = [{"epoch": 0, "train_loss": None, "val_loss": val_loss, "val_accuracy": val_acc}]
        best_epoch, best_key, best_state = 0, (val_acc, -val_loss), snapshot()

        bar = tqdm(range(1, epochs + 1), desc="train head", disable=not progress, leave=False)
        for epoch in bar:
            img_head.train()
            txt_head.train()
            order = torch.randperm(n_train, generator=gen)
            total, seen = 0.0, 0
            for start in range(0, n_train, batch_size):
                idx = order[start:start + batch_size]
                if idx.shape[0] < 2:  # BatchNorm and the losses need >= 2 rows; drop a lone row
                    continue
                loss = _batch_loss(img_head, txt_head, logit_scale, tr_img[idx], tr_txt[idx], koleo_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():  # CLIP's clamp: keep the temperature >= 0.01
                    logit_scale.clamp_(max=MAX_LOGIT_SCALE)
                total += float(loss.detach()) * idx.shape[0]
                seen += idx.shape[0]
            val_loss, val_acc = _evaluate(img_head, txt_head, logit_scale, va_img, va_txt,
                                          koleo_weight, batch_size)
            history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                            "val_accuracy": val_acc})
            if (val_acc, -val_loss) > best_key:
                best_epoch, best_key, best_state = epoch, (val_acc, -val_loss), snapshot()
            bar.set_postfix(val_acc=f"{val_acc:.3f}", best=best_epoch)
        bar.close()

    img_state, txt_state, best_scale = best_state
    img_head.load_state_dict(img_state)
    if not shared:
        txt_head.load_state_dict(txt_state)
    return TrainedHead(img_head, txt_head, best_scale, history, best_epoch, config)
