"""Build time: turn pictures (or precomputed embeddings) into catalog folders; the CLI's work.

    from clipbranches_widgets.build import build_demo_catalog, build_folder_catalog
"""

from ..catalog.default import DEFAULT_CATALOG, DEFAULT_MODEL
from .images import (build_demo_catalog, build_folder_catalog, caption_pairs, embed_images, embed_world, fit_quantizer,
                     fit_reducer, write_encoded_catalog)
from .webdataset import build_webdataset_catalog
from .embeddings import build_embedding_catalog, generate_embeddings, read_embedding_folder, write_embedding_folder

__all__ = ["build_demo_catalog", "build_folder_catalog", "caption_pairs", "embed_images", "embed_world",
           "fit_quantizer", "fit_reducer", "write_encoded_catalog", "DEFAULT_CATALOG", "DEFAULT_MODEL"]
__all__ += ["build_webdataset_catalog"]
__all__ += ["build_embedding_catalog", "generate_embeddings", "read_embedding_folder", "write_embedding_folder"]
