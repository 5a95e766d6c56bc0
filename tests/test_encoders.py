"""Tests for clipbranches_widgets.embedding.encoders (offline: HF_HUB_OFFLINE=1 comes from conftest.py)."""

import json
import os
import time

import numpy as np
import pytest

from clipbranches_widgets.embedding import _torchvision_fix  # noqa: F401  (before open_clip)

pytest.importorskip("open_clip")

from clipbranches_widgets.embedding import encoders as E  # noqa: E402
from clipbranches_widgets.demo import ShapesWorld  # noqa: E402

TEXTS = ["a red star", "a blue circle", "a red star", "a large green square"]


@pytest.fixture(scope="module")
def images():
    return ShapesWorld(seed=1).images(0, 8)


@pytest.fixture(scope="module")
def enc():
    return E.load_encoder(E.DEMO_MODEL_NAME, device="cpu")


def _unit(x):
    return np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_demo_config_and_registration():
    cfg = E.demo_model_config()
    assert cfg["embed_dim"] == 64 and cfg["vision_cfg"]["layers"] == [1, 1, 1, 1]
    assert E.demo_model_config(32)["embed_dim"] == 32
    a = E.register_demo_model()
    b = E.register_demo_model()
    assert a == b
    import open_clip

    assert E.DEMO_MODEL_NAME in open_clip.list_models()


def test_demo_model_random_weights(enc):
    assert enc.embed_dim == 64
    assert str(enc.device) == "cpu"
    assert abs(enc.model.logit_scale.item() - np.log(20.0)) < 1e-6
    assert isinstance(enc.preprocess, E.DemoPreprocess)


def test_encode_images_array_and_pil_agree(enc, images):
    from PIL import Image

    a = enc.encode_images(images, batch_size=3, progress=False)
    assert a.shape == (8, 64) and a.dtype == np.float32 and _unit(a)
    pil = [Image.fromarray(im) for im in images]
    b = enc.encode_images(pil, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # the recipe's normalisation on the raw array
    x = enc.preprocess(pil[0]).numpy()
    np.testing.assert_allclose(x, (images[0].transpose(2, 0, 1) / 255.0 - 0.5) / 0.25, atol=1e-6)
    # other sizes are resized to 64 px
    big = enc.encode_images([pil[0].resize((100, 100))], progress=False)
    assert big.shape == (1, 64) and _unit(big)
    big_arr = enc.encode_images(np.asarray(pil[0].resize((100, 100)))[None], progress=False)
    np.testing.assert_allclose(big, big_arr, atol=1e-6)
    assert enc.encode_images([], progress=False).shape == (0, 64)


def test_encode_texts(enc):
    t = enc.encode_texts(TEXTS, batch_size=2)
    assert t.shape == (4, 64) and t.dtype == np.float32 and _unit(t)
    np.testing.assert_array_equal(t[0], t[2])  # same text twice in one call: identical
    assert not np.allclose(t[0], t[1])
    np.testing.assert_array_equal(enc.encode_texts(TEXTS, batch_size=2), t)  # deterministic
    # another batch composition: equal up to float rounding
    np.testing.assert_allclose(enc.encode_texts("a red star")[0], t[0], atol=1e-6)
    assert enc.encode_texts([]).shape == (0, 64)


def test_bad_image_input(enc):
    with pytest.raises(ValueError):
        enc.encode_images(np.zeros((2, 64, 64), np.uint8), progress=False)


def test_save_local_dir_roundtrip(enc, images, tmp_path):
    folder = enc.save_local_dir(tmp_path / "ckpt")
    names = sorted(os.listdir(folder))
    assert names == [E.CONFIG_FILE, E.WEIGHTS_FILE]
    cfg = json.loads((folder / E.CONFIG_FILE).read_text())
    assert cfg["model_cfg"] == E.demo_model_config()
    assert cfg["preprocess_cfg"]["size"] == 64

    enc2 = E.load_encoder("local-dir:" + str(folder), device="cpu")
    assert isinstance(enc2.preprocess, E.DemoPreprocess)
    np.testing.assert_array_equal(enc.encode_images(images, progress=False),
                                  enc2.encode_images(images, progress=False))
    np.testing.assert_array_equal(enc.encode_texts(TEXTS), enc2.encode_texts(TEXTS))
    assert enc2.model.logit_scale.item() == pytest.approx(enc.model.logit_scale.item())

    # the demo name with a local-dir checkpoint as `pretrained` loads those weights too
    enc3 = E.load_encoder(E.DEMO_MODEL_NAME, "local-dir:" + str(folder), device="cpu")
    np.testing.assert_array_equal(enc.encode_texts(TEXTS), enc3.encode_texts(TEXTS))


def test_offline_pretrained_fails_fast():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    t0 = time.perf_counter()
    with pytest.raises(E.EncoderUnavailableError) as ei:
        E.load_encoder("ViT-B-32", "laion2b_s34b_b79k", device="cpu")
    assert time.perf_counter() - t0 < 10
    msg = str(ei.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg and "local-dir" in msg
    assert "HF_HUB_OFFLINE" in msg
    assert isinstance(ei.value, ValueError)


def test_unknown_model_and_tag():
    with pytest.raises(E.EncoderUnavailableError, match="Unknown CLIP model name 'NoSuchModel"):
        E.load_encoder("NoSuchModel", device="cpu")
    with pytest.raises(E.EncoderUnavailableError, match="Unknown pretrained tag 'bogus'"):
        E.load_encoder("ViT-B-32", "bogus", device="cpu")


def test_bad_local_dir(tmp_path):
    with pytest.raises(E.EncoderUnavailableError, match="not found"):
        E.load_encoder("local-dir:" + str(tmp_path / "missing"))
    with pytest.raises(E.EncoderUnavailableError, match="open_clip_config.json"):
        E.load_encoder("local-dir:" + str(tmp_path))


def test_auto_device_precision():
    import torch

    dev = E._resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert E._resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert E._resolve_precision("auto", torch.device("cuda")) == "fp16"
    with pytest.raises(ValueError):
        E._resolve_precision("fp8", torch.device("cpu"))
