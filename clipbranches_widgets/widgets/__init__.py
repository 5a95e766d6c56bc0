"""Notebook widgets for clipbranches (anywidget-based, so they also work in Voilà)."""
from .image_grid import ImageGrid

__all__ = ["ImageGrid"]
