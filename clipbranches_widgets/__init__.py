"""clipbranches: notebook-first image search with decision branches.

``open_catalog(path)`` opens a catalog folder (codes, items, thumbnails, query encoder); the
engine (``clipbranches_widgets.engine``) trains and applies branch models on its codes. Importing
the package does not import torch: encoders load when a text or picture query first needs them.
"""
from .catalog import Catalog, open_catalog

__version__ = "0.1.0"
__all__ = ["Catalog", "open_catalog", "__version__"]
