"""The decision-branch engine: numpy + Numba, scikit-learn for the estimator API (no torch, no widgets).

    from clipbranches_widgets.engine import feature_subsets, DecisionBranches, BranchEnsemble, LinearCodes, BoxIndex
"""

from .boxes import Box, BoxSet, apply_boxes_numpy
from .branches import DecisionBranches
from .index import BoxIndex
from .ensemble import BranchEnsemble
from .linear import LinearCodes
from .selection import BestFamily
from .result import SearchResult
from .subsets import default_subsets, feature_subsets
from .apply import apply_model, merge_results
from .training_set import TrainingSet, draw_training_rows, make_training_set

__all__ = ["BestFamily", "Box", "BoxIndex", "BoxSet", "BranchEnsemble", "DecisionBranches", "LinearCodes", "SearchResult",
           "TrainingSet", "apply_boxes_numpy", "apply_model", "merge_results",
           "default_subsets", "draw_training_rows", "feature_subsets", "make_training_set"]
