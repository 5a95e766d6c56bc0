"""CLIP encoders: turn images and texts into L2-normalised float32 embeddings.

This is the only module of the package that imports torch and open_clip; the search engine
works on the numpy arrays it returns and stays torch-free. Nothing imports this module from
``clipbranches_widgets/__init__.py``.

Typical use (with internet access once, to download the weights into the Hugging Face cache)::

    from clipbranches_widgets.embedding.encoders import load_encoder
    enc = load_encoder("ViT-B-32", "laion2b_s34b_b79k")
    img = enc.encode_images(list_of_pil_images)      # (n, 512) float32, unit rows
    txt = enc.encode_texts(["a red star"])           # (1, 512) float32, unit rows

Offline, use a checkpoint folder in open_clip's own ``local-dir`` format (a folder with
``open_clip_config.json`` and ``open_clip_pytorch_model.bin``), e.g. one written by
:meth:`Encoder.save_local_dir`::

    enc = load_encoder("local-dir:/path/to/folder")

The small demo model :data:`DEMO_MODEL_NAME` (a ModifiedResNet image tower for 64 px images)
can always be created, with random weights unless a local-dir checkpoint is given.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from clipbranches_widgets.embedding import _torchvision_fix  # noqa: F401  (must precede open_clip)
from clipbranches_widgets._atomic import atomic_open

import open_clip  # noqa: E402
import torch  # noqa: E402

__all__ = [
    "DEMO_MODEL_NAME",
    "Encoder",
    "EncoderUnavailableError",
    "demo_model_config",
    "load_encoder",
    "register_demo_model",
]

DEMO_MODEL_NAME = "cb-shapes-rn16"
"""open_clip model name of the tiny demo CLIP (ModifiedResNet width 16, 64 px images)."""

LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"

_DEMO_LOGIT_SCALE = math.log(20.0)
_DEMO_MEAN = (0.5, 0.5, 0.5)
_DEMO_STD = (0.25, 0.25, 0.25)
_DEMO_PREPROCESS_TAG = "demo-simple"  # stored under the "clipbranches" key of the config JSON

_registered_dir: str | None = None


class EncoderUnavailableError(ValueError):
    """The requested encoder (model name, weights) cannot be created here."""


# ---------------------------------------------------------------------------------------------
# demo model


def demo_model_config(embed_dim: int = 64) -> dict:
    """The demo CLIP's open_clip model config (``model_cfg``) as a fresh dict.

    ModifiedResNet image tower (``layers`` [1, 1, 1, 1], width 16, 64 px) and a 2-layer,
    width-64 text transformer with a 24-token context; ~4.6 M parameters in all.
    """
    return {
        "embed_dim": int(embed_dim),
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    }


def demo_preprocess_cfg(size: int = 64) -> dict:
    """open_clip ``preprocess_cfg`` describing :class:`DemoPreprocess` (saved with checkpoints)."""
    return {"size": int(size), "mean": list(_DEMO_MEAN), "std": list(_DEMO_STD),
            "interpolation": "bilinear", "resize_mode": "squash"}


def register_demo_model() -> str:
    """Make :data:`DEMO_MODEL_NAME` known to open_clip; return the config folder (idempotent).

    Writes ``cb-shapes-rn16.json`` into a temporary folder and calls
    ``open_clip.add_model_config(folder)``.
    """
    global _registered_dir
    if _registered_dir is not None and DEMO_MODEL_NAME in open_clip.list_models():
        return _registered_dir
    folder = tempfile.mkdtemp(prefix="clipbranches-models-")
    with open(os.path.join(folder, DEMO_MODEL_NAME + ".json"), "w", encoding="utf-8") as f:
        json.dump(demo_model_config(), f)
    open_clip.add_model_config(folder)
    _registered_dir = folder
    return folder


# ---------------------------------------------------------------------------------------------
# preprocessing


class DemoPreprocess:
    """The demo recipe's preprocessing: RGB, squash-resize to ``size``, ``(x/255 - 0.5)/0.25``.

    Callable on a PIL image, returns a float32 tensor (3, size, size).
    """

    def __init__(self, size: int = 64):
        self.size = int(size)

    def __call__(self, image) -> "torch.Tensor":
        from PIL import Image

        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        return self.from_uint8(np.asarray(image)[None])[0]

    @staticmethod
    def from_uint8(arr: np.ndarray) -> "torch.Tensor":
        """(n, H, W, 3) uint8 -> (n, 3, H, W) float32 normalised tensor (no resizing)."""
        x = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).float()
        return (x / 255.0 - 0.5) / 0.25

    def __repr__(self) -> str:
        return f"DemoPreprocess(size={self.size})"


# ---------------------------------------------------------------------------------------------
# the encoder


def _tqdm():
    from tqdm.auto import tqdm

    return tqdm


class Encoder:
    """A CLIP model with its tokenizer and image preprocessing.

    Attributes: ``model`` (an open_clip ``CLIP`` in eval mode), ``tokenizer``, ``preprocess``
    (PIL image -> tensor), ``embed_dim``, ``device``, ``dtype``, ``name`` (what was loaded),
    ``model_cfg`` and ``preprocess_cfg`` (what :meth:`save_local_dir` writes), ``pretrained``
    (the open_clip tag or file the weights came from, None for local-dir or random weights).
    """

    def __init__(self, model, tokenizer, preprocess, *, model_cfg: dict, preprocess_cfg: dict,
                 name: str, device, dtype, demo_preprocess: bool = False,
                 pretrained: str | None = None):
        self.model = model.eval()
        self.pretrained = pretrained
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.model_cfg = copy.deepcopy(model_cfg)
        self.preprocess_cfg = dict(preprocess_cfg)
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.demo_preprocess = bool(demo_preprocess)
        self.embed_dim = int(model_cfg.get("embed_dim") or model.text_projection.shape[1])
        size = preprocess_cfg.get("size", 224)
        self.image_size = int(size if isinstance(size, int) else size[0])

    def __repr__(self) -> str:
        return (f"Encoder({self.name!r}, embed_dim={self.embed_dim}, device={self.device}, "
                f"dtype={self.dtype})")

    # -- images ---------------------------------------------------------------------------------

    def _image_batches(self, images, batch_size: int):
        """Yield preprocessed (b, 3, S, S) float tensors."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                raise ValueError("encode_images expects a list of PIL images or a uint8 array "
                                 f"(n, H, W, 3); got array {images.dtype} {images.shape}")
            fast = self.demo_preprocess and images.shape[1:3] == (self.image_size,) * 2
            for s in range(0, len(images), batch_size):
                chunk = images[s:s + batch_size]
                if fast:
                    yield DemoPreprocess.from_uint8(chunk)
                else:
                    from PIL import Image

                    yield torch.stack([self.preprocess(Image.fromarray(a)) for a in chunk])
        else:
            images = list(images)
            for s in range(0, len(images), batch_size):
                yield torch.stack([self.preprocess(im) for im in images[s:s + batch_size]])

    def encode_images(self, images, batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """Embed images: a list of PIL images or a uint8 array (n, H, W, 3).

        Returns float32 (n, embed_dim) with unit-length rows.
        """
        n = len(images)
        out = np.empty((n, self.embed_dim), np.float32)
        batch_size = max(1, int(batch_size))
        bar = _tqdm()(total=n, desc="encode images", unit="img", disable=not progress or n == 0)
        pos = 0
        with torch.inference_mode(), bar:
            for x in self._image_batches(images, batch_size):
                x = x.to(self.device, dtype=self.dtype)
                feats = self.model.encode_image(x, normalize=True)
                out[pos:pos + len(x)] = feats.float().cpu().numpy()
                pos += len(x)
                bar.update(len(x))
        return _renorm(out)

    # -- texts ----------------------------------------------------------------------------------

    def encode_texts(self, texts, batch_size: int = 1024, progress: bool = False) -> np.ndarray:
        """Embed a list of strings (or one string); float32 (n, embed_dim) with unit rows."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        # Encode each distinct string once: repeats in one call get bit-identical rows.
        uniq = list(dict.fromkeys(texts))
        out = np.empty((len(uniq), self.embed_dim), np.float32)
        batch_size = max(1, int(batch_size))
        bar = _tqdm()(total=len(uniq), desc="encode texts", unit="text",
                      disable=not progress or not uniq)
        with torch.inference_mode(), bar:
            for s in range(0, len(uniq), batch_size):
                tokens = self.tokenizer(uniq[s:s + batch_size]).to(self.device)
                feats = self.model.encode_text(tokens, normalize=True)
                out[s:s + len(feats)] = feats.float().cpu().numpy()
                bar.update(len(feats))
        _renorm(out)
        if len(uniq) == len(texts):
            return out
        row = {t: i for i, t in enumerate(uniq)}
        return out[[row[t] for t in texts]]

    # -- saving ---------------------------------------------------------------------------------

    def save_local_dir(self, path) -> Path:
        """Write the model in open_clip's ``local-dir`` format; return the folder.

        The folder gets ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``) and
        ``open_clip_pytorch_model.bin`` (the state dict, fp32). Each file is written under a
        temporary name and renamed into place. Reload with ``load_encoder("local-dir:" + path)``.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                 for k, v in self.model.state_dict().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}
        if self.demo_preprocess:
            config["clipbranches"] = {"preprocess": _DEMO_PREPROCESS_TAG}
        with atomic_open(path / WEIGHTS_FILE, "wb") as f:
            f.write(buf.getvalue())
        with atomic_open(path / CONFIG_FILE, "w") as f:
            json.dump(config, f, indent=2)
        return path


def _renorm(x: np.ndarray) -> np.ndarray:
    """Re-normalise rows in float32 (fp16 models leave rows slightly off unit length)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, np.maximum(norms, 1e-12), out=x)
    return x


# ---------------------------------------------------------------------------------------------
# factory


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision is None or precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'fp16' or 'bf16', not {precision!r}")
    return precision


_HOW_TO_FIX = (
    "To fix: connect to the internet once so open_clip can download the weights into the "
    "Hugging Face cache (and leave HF_HUB_OFFLINE unset for that run), or pass a checkpoint "
    "folder in open_clip's local-dir format: load_encoder('local-dir:/path/to/folder') with "
    f"{CONFIG_FILE} and {WEIGHTS_FILE} in it (Encoder.save_local_dir writes one)."
)


def _unavailable(model: str, pretrained, why: str) -> EncoderUnavailableError:
    asked = f"model {model!r}" + (f" with pretrained {pretrained!r}" if pretrained else "")
    return EncoderUnavailableError(f"Cannot load CLIP encoder: {asked}. {why} {_HOW_TO_FIX}")


def _check_known(model: str, pretrained) -> None:
    """Raise a clear error for an unknown model name or pretrained tag (before any download)."""
    name = model.replace("/", "-")
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower()[:5] in m.lower()][:10]
        hint = f" Similar names: {close}." if close else ""
        raise EncoderUnavailableError(
            f"Unknown CLIP model name {model!r}: open_clip has no config by that name.{hint} "
            "See open_clip.list_models(), use 'local-dir:/path' for a checkpoint folder, or "
            f"{DEMO_MODEL_NAME!r} for the demo model.")
    if pretrained and not os.path.isfile(str(pretrained)):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise EncoderUnavailableError(
                f"Unknown pretrained tag {pretrained!r} for model {model!r}. Known tags: {tags}. "
                "Or pass a local-dir checkpoint: load_encoder('local-dir:/path/to/folder').")


def _read_local_dir(folder: str) -> dict:
    p = Path(folder)
    if not p.is_dir():
        raise EncoderUnavailableError(
            f"local-dir checkpoint folder not found: {folder!r}. It must be a folder holding "
            f"{CONFIG_FILE} and {WEIGHTS_FILE} (Encoder.save_local_dir writes one).")
    cfg_path = p / CONFIG_FILE
    if not cfg_path.is_file():
        raise EncoderUnavailableError(
            f"local-dir folder {folder!r} has no {CONFIG_FILE}; open_clip's local-dir format "
            f"needs {CONFIG_FILE} (with model_cfg and preprocess_cfg) and {WEIGHTS_FILE}.")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    if "model_cfg" not in cfg:
        raise EncoderUnavailableError(f"{cfg_path} lacks the 'model_cfg' key.")
    return cfg


def load_encoder(model: str = "ViT-B-32", pretrained: str | None = None, *,
                 device="auto", precision: str = "auto") -> Encoder:
    """Create a CLIP :class:`Encoder`.

    ``model`` is one of

    - an open_clip model name (``open_clip.list_models()``), with ``pretrained`` a tag such as
      ``"laion2b_s34b_b79k"`` (downloaded from the Hugging Face hub on first use, then cached),
      a checkpoint file path, or ``None`` for random weights;
    - ``"local-dir:/path"``: open_clip's local-dir schema, a folder with
      ``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` (``pretrained`` ignored);
    - :data:`DEMO_MODEL_NAME`: the tiny demo CLIP, random weights unless ``pretrained`` is a
      local-dir folder (``"local-dir:/path"`` or a plain folder path) or checkpoint file.

    ``device="auto"`` picks CUDA when available, else CPU; ``precision="auto"`` is fp16 on
    CUDA and fp32 on CPU.

    Raises :class:`EncoderUnavailableError` (a ``ValueError``) when the model name or tag is
    unknown or the weights cannot be had (offline, ``HF_HUB_OFFLINE=1``, no cached copy).
    With ``HF_HUB_OFFLINE=1`` this fails at once; online-but-unreachable hub lookups are
    bounded by huggingface_hub's own timeouts.
    """
    if not isinstance(model, str) or not model:
        raise EncoderUnavailableError(f"model must be a non-empty string, not {model!r}")
    dev = _resolve_device(device)
    prec = _resolve_precision(precision, dev)

    # A local-dir folder given as `pretrained` (e.g. for the demo model) means: load that folder.
    if pretrained and model.startswith(LOCAL_DIR_PREFIX) is False:
        p = str(pretrained)
        if p.startswith(LOCAL_DIR_PREFIX):
            model, pretrained = p, None
        elif os.path.isdir(p):
            model, pretrained = LOCAL_DIR_PREFIX + p, None

    register_demo_model()
    demo_pre = False
    if model.startswith(LOCAL_DIR_PREFIX):
        folder = model[len(LOCAL_DIR_PREFIX):]
        cfg = _read_local_dir(folder)
        model_cfg = cfg["model_cfg"]
        demo_pre = cfg.get("clipbranches", {}).get("preprocess") == _DEMO_PREPROCESS_TAG
        if not any(Path(folder).glob(g) for g in ("*.bin", "*.pth", "*.safetensors")):
            raise EncoderUnavailableError(
                f"local-dir folder {folder!r} has a config but no weights ({WEIGHTS_FILE}).")
        pretrained = None
        model = LOCAL_DIR_PREFIX + str(Path(folder))
    else:
        _check_known(model, pretrained)
        model_cfg = open_clip.get_model_config(model.replace("/", "-"))
        demo_pre = model.replace("/", "-") == DEMO_MODEL_NAME

    try:
        net, _, val_transform = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, device=dev, precision=prec)
    except EncoderUnavailableError:
        raise
    except Exception as e:  # download failure, hub offline, bad checkpoint, ...
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = ("HF_HUB_OFFLINE is set, so nothing can be downloaded and the weights are not in "
               "the local Hugging Face cache." if offline and pretrained else
               f"open_clip failed: {type(e).__name__}: {e}.")
        raise _unavailable(model, pretrained, why) from e
    tokenizer = open_clip.get_tokenizer(model)

    if demo_pre:
        size = int(model_cfg["vision_cfg"].get("image_size", 64))
        preprocess = DemoPreprocess(size)
        preprocess_cfg = demo_preprocess_cfg(size)
        if model.replace("/", "-") == DEMO_MODEL_NAME and pretrained is None:
            with torch.no_grad():  # random init: the recipe's starting temperature
                net.logit_scale.fill_(_DEMO_LOGIT_SCALE)
    else:
        preprocess = val_transform
        preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(net))
        for k, v in list(preprocess_cfg.items()):
            if isinstance(v, tuple):
                preprocess_cfg[k] = list(v)

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec, torch.float32)
    return Encoder(net, tokenizer, preprocess, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg,
                   name=model, device=dev, dtype=dtype, demo_preprocess=demo_pre,
                   pretrained=pretrained)
