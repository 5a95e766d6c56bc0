"""The decision-branch engine: numpy + Numba only (no torch, no widgets).

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
from .training_set import TrainingSet, make_training_set

__all__ = ["BestFamily", "Box", "BoxIndex", "BoxSet", "BranchEnsemble", "DecisionBranches", "LinearCodes", "SearchResult",
           "TrainingSet", "apply_boxes_numpy",
           "default_subsets", "feature_subsets", "make_training_set"]
