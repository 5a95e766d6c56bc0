"""Notebook widgets for clipbranches (anywidget-based, so they also work in Voilà)."""
from .app import SearchApp, default_app
from .image_grid import ImageGrid

__all__ = ["ImageGrid", "SearchApp", "default_app"]
