"""The result type every engine search returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SearchResult:
    """Every catalog id a model calls positive, ranked.

    ids: int64 catalog row ids, best first. scores: float64, same length (meaning depends on the
    model: vote fraction for ensembles, depth inside the best box for branch models, class
    probability for scikit-learn baselines). stats: timings in seconds (keys ending in ``_s``) and
    counts (method used, boxes, rows checked, ...).
    """

    ids: np.ndarray
    scores: np.ndarray
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def count(self) -> int:
        return len(self)
