"""The shapes world's vocabulary: shapes, colours, sizes, backgrounds and their words."""

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring")

# Saturated reference colours; each object gets a +-15 RGB jitter on top.
COLORS = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 180, 50),
    "cyan": (30, 200, 220),
    "blue": (30, 60, 220),
    "purple": (140, 40, 200),
    "pink": (245, 110, 180),
}
COLOR_NAMES = tuple(COLORS)

SIZES = ("small", "large")
# Radius ranges in pixels at 64 px (scaled with the image size).
SIZE_RADII = {"small": (5.5, 7.5), "large": (11.0, 14.0)}

BACKGROUNDS = ("plain", "striped", "gradient", "noisy")

# Three synonyms per background, used in captions.
BACKGROUND_PHRASES = {
    "plain": ("a plain background", "a solid background", "a background with one tone"),
    "striped": ("a striped background", "stripes", "a background with stripes"),
    "gradient": ("a gradient background", "a gradient", "a background with a gradient"),
    "noisy": ("a noisy background", "noise", "a background with noise"),
}

# Words that name a background in a query (parse_concept).
BACKGROUND_WORDS = {
    "plain": "plain",
    "solid": "plain",
    "striped": "striped",
    "stripes": "striped",
    "stripe": "striped",
    "gradient": "gradient",
    "noisy": "noisy",
    "noise": "noisy",
}

PREFIXES = ("a picture of", "an image of", "a photo of")


def article(word: str) -> str:
    """'an' before a vowel sound (all our words: vowel letter), else 'a'."""
    return "an" if word[:1].lower() in "aeiou" else "a"
