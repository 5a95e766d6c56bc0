"""Query time: a catalog folder's codes, items and thumbnails, and nearest-neighbour search on them.

Nothing here imports torch: a catalog loads its query encoder (``clipbranches_widgets.embedding``)
only when a text or picture query first needs it.

    from clipbranches_widgets.catalog import open_catalog, write_catalog, DEFAULT_CATALOG
"""

from .default import DEFAULT_CATALOG, DEFAULT_MODEL
from .base import CatalogBase
from .folder import Catalog, check_k, open_catalog, write_catalog
from .sharded import ShardedCatalog, ShardedCatalogWriter

__all__ = ["Catalog", "CatalogBase", "ShardedCatalog", "ShardedCatalogWriter", "open_catalog", "write_catalog",
           "check_k", "DEFAULT_CATALOG", "DEFAULT_MODEL"]
