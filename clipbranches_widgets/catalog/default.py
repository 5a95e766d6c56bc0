"""Where the default catalog (the generated demo world) lives."""

from pathlib import Path

#: the repository's data folder (a checkout or an editable install)
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
DEFAULT_CATALOG = DATA_DIR / "demo"
#: the tiny demo CLIP the demo build trains (kept for rebuilding the demo catalog)
DEFAULT_MODEL = DATA_DIR / "models" / "cb-shapes-rn16"
