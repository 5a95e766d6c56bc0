"""Where the default catalog (the generated demo world) lives.

In a checkout (and an editable install) it is the repository's ``data/demo``. An installed wheel
carries its own copy as package data, ``clipbranches_widgets/_data/demo`` (copied in by
``setup.py`` at build time), so ``SearchApp.default()`` works offline from any folder. That copy may
sit in a read-only site-packages folder.
"""

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: the repository's data folder (a checkout or an editable install; absent in an installed wheel)
DATA_DIR = _PACKAGE_DIR.parent / "data"
#: the demo catalog a built wheel ships inside the package
PACKAGED_CATALOG = _PACKAGE_DIR / "_data" / "demo"


def _checkout_catalog() -> Path | None:
    """The checkout's ``data/demo`` when this package is a checkout's source tree and it holds a catalog."""
    catalog = DATA_DIR / "demo"
    in_checkout = (_PACKAGE_DIR.parent / "pyproject.toml").is_file()
    return catalog if in_checkout and (catalog / "manifest.json").is_file() else None


#: the checkout's ``data/demo`` when there is one, else the copy shipped in the wheel
DEFAULT_CATALOG = _checkout_catalog() or PACKAGED_CATALOG
#: the tiny demo CLIP the demo build trains (kept for rebuilding the demo catalog)
DEFAULT_MODEL = DATA_DIR / "models" / "cb-shapes-rn16"


def default_catalog_path() -> Path:
    """``$CB_CATALOG`` if set (and non-empty), else :data:`DEFAULT_CATALOG`."""
    env = os.environ.get("CB_CATALOG", "").strip()
    return Path(env).expanduser().resolve() if env else Path(DEFAULT_CATALOG)
