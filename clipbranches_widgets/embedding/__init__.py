"""Build and query time with torch: CLIP encoders, projection heads, reducers, the query encoder.

Importing this package imports nothing heavy; each module imports torch / open_clip itself
(``encoders`` applies the CPU torchvision import fix first, see ``_torchvision_fix``).

    from clipbranches_widgets.embedding.encoders import load_encoder
    from clipbranches_widgets.embedding.reducers import PCAReducer, load_reducer
    from clipbranches_widgets.embedding.query import QueryEncoder
"""
