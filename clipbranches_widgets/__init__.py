"""clipbranches: notebook-first image search with decision branches."""
__version__ = "0.1.0"
