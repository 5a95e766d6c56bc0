import numpy as np
import pytest

from clipbranches_widgets.engine import DecisionBranches
from clipbranches_widgets.engine.training_set import make_training_set

CODES = np.random.default_rng(0).integers(0, 256, (5000, 32)).astype(np.uint8)


def test_training_set_contents():
    ts = make_training_set(CODES, [5, 3, 3], [7], n_random_negatives=100, negative_weight=10, exclude_ids=range(100, 200),
                           random_state=0)
    assert ts.ids[:3].tolist() == [3, 5, 7] and ts.y[:3].tolist() == [1, 1, 0]
    assert ts.n_random == 100 and (ts.source == "random").sum() == 100
    rand = ts.ids[ts.source == "random"]
    assert len(set(rand)) == 100 and not set(rand) & {3, 5, 7} and not set(rand) & set(range(100, 200))
    assert ts.sample_weight.tolist()[:3] == [1.0, 1.0, 10.0] and (ts.sample_weight[3:] == 1).all()
    np.testing.assert_array_equal(ts.X, CODES[ts.ids])
    again = make_training_set(CODES, [5, 3], [7], n_random_negatives=100, exclude_ids=range(100, 200), random_state=0)
    assert again.ids.tolist() == ts.ids.tolist()  # seeded
    DecisionBranches(random_state=0).fit(ts.X, ts.y, ts.sample_weight)


def test_more_random_negatives_than_candidates():
    small = CODES[:10]
    ts = make_training_set(small, [0], [1], n_random_negatives=1000, random_state=0)
    assert ts.n_random == 8 and sorted(ts.ids.tolist()) == list(range(10))


@pytest.mark.parametrize("kwargs, msg", [
    ({"positive_ids": []}, "no positives"),
    ({"positive_ids": [5000]}, "outside the catalog"),
    ({"positive_ids": [-1]}, "outside the catalog"),
    ({"positive_ids": [1.5]}, "integer"),
    ({"positive_ids": ["a"]}, "integer"),
    ({"positive_ids": [1], "negative_ids": [1]}, "both positive and negative"),
    ({"positive_ids": [1], "n_random_negatives": 0}, "no negatives"),
    ({"positive_ids": [1], "n_random_negatives": -5}, "n_random_negatives"),
    ({"positive_ids": [1], "negative_weight": 0}, "negative_weight"),
    ({"positive_ids": [1], "negative_weight": float("nan")}, "negative_weight"),
])
def test_training_set_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        make_training_set(CODES, **kwargs)
