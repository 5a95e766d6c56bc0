"""Shared pytest setup for clipbranches.

Tests run offline: with ``HF_HUB_OFFLINE=1`` a model lookup on the Hugging Face hub fails
at once instead of retrying a download for about a minute. Set at import time so that it
also reaches subprocesses started by tests.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_catalog_path(tmp_path_factory):
    """A small but real demo catalog, built once per test run by the real pipeline.

    3,000 shapes-world items; a demo CLIP trained for 30 steps (it learns little beyond colour),
    a head with KoLeo trained for 3 epochs, global 8-bit codes, and the encoder stored in the
    catalog so text and picture queries work offline. Tests must not modify it: copy it first.
    """
    from clipbranches_widgets.build import build_demo_catalog

    path = tmp_path_factory.mktemp("catalogs") / "tiny"
    build_demo_catalog(path, n_items=3000, train_steps=30, n_train_images=1000, n_head_pairs=1000,
                       reducer="head-koleo", head_epochs=3, progress=False)
    return path


@pytest.fixture
def tiny_catalog(tiny_catalog_path):
    """The tiny demo catalog, opened afresh for each test."""
    from clipbranches_widgets import open_catalog

    return open_catalog(tiny_catalog_path)
