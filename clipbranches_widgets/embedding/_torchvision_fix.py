"""Make ``import torchvision`` (and so ``import open_clip``) work with CPU torch 2.13.0.

The pinned pair torch==2.13.0 (CPU build) + torchvision==0.28.0 fails on import with
``RuntimeError: operator torchvision::nms does not exist``: torchvision's compiled ops
library ``_C.so`` links CUDA libraries that the CPU torch lacks, so it cannot be loaded, and
torchvision's Python-side meta registrations then refer to ops that were never defined.
open_clip imports torchvision (transforms, ops.misc) at import time, so it fails too.

:func:`apply` must run before the first ``import torchvision``. It first tries to load
torchvision's ``_C.so`` with :func:`torch.ops.load_library` (this works on a matching
build, e.g. torch 2.14.1 + torchvision 0.29.1); if that fails, it defines just the op
*schemas* ``torchvision::nms`` and ``torchvision::qnms`` with
``torch.library.Library("torchvision", "DEF")``. That is enough for everything open_clip
uses (transforms, ``torchvision.ops.misc``); torchvision's C++ detection and io ops
(``nms``, ``roi_align``, image decoding, ...) stay unavailable and raise if called.

The function is idempotent and cheap after the first call. Importing this module applies
the fix.
"""

from __future__ import annotations

import importlib.util
import os
import sys

__all__ = ["apply"]

_state: str | None = None  # "native", "schemas", "already-imported" or "unavailable"
_LIB = None  # keep the Library alive: its definitions are removed when it is collected

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def apply() -> str:
    """Ensure torchvision can be imported; return how (``"native"``, ``"schemas"``, ...)."""
    global _state, _LIB
    if _state is not None:
        return _state
    if "torchvision" in sys.modules:
        # Someone imported torchvision already; it either worked or it is too late.
        _state = "already-imported"
        return _state
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        _state = "unavailable"
        return _state

    import torch

    if _op_exists("nms"):
        _state = "native"
        return _state
    so_path = os.path.join(os.path.dirname(spec.origin), "_C.so")
    try:
        torch.ops.load_library(so_path)
    except Exception:  # OSError on the CPU build; any failure -> fall back to schemas
        pass
    if _op_exists("nms"):
        _state = "native"
        return _state

    _LIB = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        if not _op_exists(schema.split("(", 1)[0]):
            _LIB.define(schema)
    _state = "schemas"
    return _state


apply()
