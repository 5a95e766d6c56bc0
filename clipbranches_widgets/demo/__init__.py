"""The demo "shapes world": generated images with exact metadata, captions and concepts."""

from .captions import caption_is_true, hard_negative_caption, mentioned_objects, rich_caption
from .concepts import all_color_shape_concepts, concept_mask, parse_concept
from .vocab import BACKGROUNDS, COLOR_NAMES, COLORS, SHAPES, SIZES
from .world import ITEMS_SCHEMA, ShapesWorld, world_of

__all__ = [
    "ShapesWorld", "ITEMS_SCHEMA", "world_of",
    "rich_caption", "hard_negative_caption", "caption_is_true", "mentioned_objects",
    "parse_concept", "concept_mask", "all_color_shape_concepts",
    "SHAPES", "COLOR_NAMES", "COLORS", "SIZES", "BACKGROUNDS",
]
