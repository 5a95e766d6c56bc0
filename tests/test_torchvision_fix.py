"""The torchvision import fix lets open_clip import and build a model, offline, on CPU torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_open_clip_tiny_model_offline(tmp_path):
    cfg_dir = tmp_path / "model_configs"
    cfg_dir.mkdir()
    (cfg_dir / "cb-tiny.json").write_text(json.dumps(TINY_CONFIG))
    code = f"""
        import clipbranches_widgets.embedding._torchvision_fix as fix
        state = fix.apply()
        assert fix.apply() == state  # idempotent
        import torch, torchvision, open_clip
        import torchvision.transforms, torchvision.ops.misc
        open_clip.add_model_config({str(cfg_dir)!r})
        model, _, preprocess = open_clip.create_model_and_transforms("cb-tiny", pretrained=None)
        tokenizer = open_clip.get_tokenizer("cb-tiny")
        model.eval()
        with torch.no_grad():
            img = model.encode_image(torch.rand(3, 3, 64, 64))
            txt = model.encode_text(tokenizer(["a photo of a cat", "a dog"]))
        assert tuple(img.shape) == (3, 32), img.shape
        assert tuple(txt.shape) == (2, 32), txt.shape
        assert torch.isfinite(img).all() and torch.isfinite(txt).all()
        n = sum(p.numel() for p in model.parameters())
        assert 1_000_000 < n < 10_000_000, n
        print("OK", state, torch.__version__, torchvision.__version__, n)
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_fix_is_noop_after_torchvision_import(tmp_path):
    """Calling apply() late never raises; it reports that torchvision was already imported."""
    code = """
        import sys
        import clipbranches_widgets.embedding._torchvision_fix as fix
        import torchvision
        fix._state = None
        assert fix.apply() == "already-imported"
        print("OK")
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
