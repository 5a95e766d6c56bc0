"""The demo shapes world: determinism, metadata vs pixels, coverage, captions, concepts."""

import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from clipbranches_widgets.demo import (
    BACKGROUNDS, COLOR_NAMES, COLORS, SHAPES, SIZES, ShapesWorld, all_color_shape_concepts,
    caption_is_true, concept_mask, hard_negative_caption, mentioned_objects, parse_concept,
)

MULTI = {1: 0.4, 2: 0.3, 3: 0.3}


@pytest.fixture(scope="module")
def metas_multi():
    world = ShapesWorld(seed=3, objects_per_image=MULTI)
    return world, [world.metadata(i) for i in range(2000)]


# ---------------------------------------------------------------- determinism
def test_image_is_a_pure_function_of_seed_and_index():
    a, b = ShapesWorld(seed=11), ShapesWorld(seed=11)
    for i in (0, 5, 123456):
        img = a.image(i)
        assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
        assert np.array_equal(img, b.image(i))
    # order of calls does not matter
    assert np.array_equal(a.image(5), ShapesWorld(seed=11).image(5))
    assert not np.array_equal(a.image(0), ShapesWorld(seed=12).image(0))
    assert not np.array_equal(a.image(0), a.image(1))
    assert a.metadata(3) == b.metadata(3)


def test_images_parallel_equals_serial():
    world = ShapesWorld(seed=5, objects_per_image=MULTI)
    serial = world.images(10, 90, n_jobs=1)
    parallel = world.images(10, 90, n_jobs=2, chunk_size=16)
    assert serial.shape == (80, 64, 64, 3) and serial.dtype == np.uint8
    assert np.array_equal(serial, parallel)
    assert np.array_equal(serial[7], world.image(17))
    assert world.images(4, 4).shape == (0, 64, 64, 3)


def test_supersample_and_size():
    world = ShapesWorld(seed=1, image_size=96, supersample=2)
    img = world.image(0)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert np.array_equal(img, ShapesWorld(seed=1, image_size=96, supersample=2).image(0))


def test_bad_settings_raise():
    with pytest.raises(ValueError):
        ShapesWorld(objects_per_image={0: 1.0})
    with pytest.raises(ValueError):
        ShapesWorld(objects_per_image={})


# ------------------------------------------------------------ metadata vs pixels
def test_metadata_colour_is_drawn_at_its_position():
    world = ShapesWorld(seed=21)
    refs = np.array([COLORS[c] for c in COLOR_NAMES], dtype=float)
    for i in range(50):
        meta = world.metadata(i)
        (obj,) = meta["objects"]
        img = world.image(i).astype(float)
        cx, cy = int(obj["x"] * 64), int(obj["y"] * 64)
        if obj["shape"] == "ring":  # hollow: sample on the outline, right of the centre
            r = (5.5 if obj["size"] == "small" else 11.0) * 0.85
            cx = int(round(obj["x"] * 64 + r))
        window = img[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3)
        mean = window.mean(0)
        nearest = COLOR_NAMES[int(np.argmin(((refs - mean) ** 2).sum(1)))]
        assert nearest == obj["color"], (i, obj, mean)


def test_metadata_does_not_disagree_with_image_objects_count():
    world = ShapesWorld(seed=2, objects_per_image=MULTI)
    for i in range(20):
        layout, _ = world._layout(i)
        assert len(layout["objects"]) == len(world.metadata(i)["objects"])


# ---------------------------------------------------------------------- counts
def test_every_attribute_occurs_and_pairs_are_unique(metas_multi):
    _, metas = metas_multi
    objs = [o for m in metas for o in m["objects"]]
    assert set(o["shape"] for o in objs) == set(SHAPES)
    assert set(o["color"] for o in objs) == set(COLOR_NAMES)
    assert set(o["size"] for o in objs) == set(SIZES)
    assert set(m["background"] for m in metas) == set(BACKGROUNDS)
    for m in metas:
        pairs = [(o["color"], o["shape"]) for o in m["objects"]]
        assert len(pairs) == len(set(pairs))
        for o in m["objects"]:
            assert 0.0 <= o["x"] <= 1.0 and 0.0 <= o["y"] <= 1.0


def test_objects_per_image_respected(metas_multi):
    _, metas = metas_multi
    counts = Counter(len(m["objects"]) for m in metas)
    assert set(counts) <= {1, 2, 3}
    n = len(metas)
    # an object that does not fit is dropped, so 3 may lose a little to 2
    assert abs(counts[1] / n - 0.4) < 0.05
    assert 0.25 < counts[2] / n < 0.40
    assert 0.20 < counts[3] / n < 0.35
    single = ShapesWorld(seed=3)
    assert all(len(single.metadata(i)["objects"]) == 1 for i in range(300))


def test_objects_do_not_overlap(metas_multi):
    world, _ = metas_multi
    for i in range(300):
        objs = world._layout(i)[0]["objects"]
        for a in range(len(objs)):
            for b in range(a + 1, len(objs)):
                d = np.hypot(objs[a]["cx"] - objs[b]["cx"], objs[a]["cy"] - objs[b]["cy"])
                assert d >= objs[a]["r"] + objs[b]["r"]


# --------------------------------------------------------------------- captions
def test_canonical_caption_is_deterministic_and_resampled_with_rng():
    world = ShapesWorld(seed=8)
    assert world.caption(4) == ShapesWorld(seed=8).caption(4)
    rng = np.random.default_rng(0)
    assert len({world.caption(4, rng) for _ in range(30)}) > 3


def test_captions_name_objects_with_correct_articles(metas_multi):
    world, metas = metas_multi
    rng = np.random.default_rng(1)
    full = 0
    for i in range(400):
        meta = metas[i]
        cap = world.caption(i, rng)
        named = mentioned_objects(cap)
        assert 1 <= len(named) <= len(meta["objects"])
        assert caption_is_true(cap, meta["objects"])
        if len(named) == len(meta["objects"]):
            full += 1
            for o in meta["objects"]:
                assert re.search(rf"\b{o['color']} {o['shape']}\b", cap), (cap, meta)
        assert not re.search(r"\ba [aeiou]", cap), cap
        assert not re.search(r"\ban [^aeiou]", cap), cap
    assert full > 300
    caps = " ".join(world.caption(i, rng) for i in range(400))
    assert "an orange" in caps and "a red" in caps
    assert "a orange" not in caps and "an red" not in caps


def test_hard_negatives_are_false_and_well_formed(metas_multi):
    world, metas = metas_multi
    rng = np.random.default_rng(2)
    made = 0
    for i in range(400):
        cap = world.caption(i, rng)
        neg = hard_negative_caption(cap, metas[i]["objects"], rng)
        if neg is None:
            continue
        made += 1
        assert neg != cap
        assert not caption_is_true(neg, metas[i]["objects"]), (cap, neg, metas[i])
        assert len(neg.split()) == len(cap.split())
        assert not re.search(r"\ba [aeiou]", neg) and not re.search(r"\ban [^aeiou]", neg), neg
    assert made > 380


def test_hard_negative_kinds_and_article_fix():
    objects = [{"shape": "star", "color": "red", "size": "large", "x": .5, "y": .5},
               {"shape": "ring", "color": "orange", "size": "small", "x": .2, "y": .2}]
    cap = "a large red star and an orange ring"
    rng = np.random.default_rng(0)
    negs = [hard_negative_caption(cap, objects, rng) for _ in range(300)]
    assert None not in negs
    assert "a large orange star and a red ring" in negs  # binding swap, articles fixed
    assert any(re.fullmatch(r"a large red \w+ and an orange ring", n) and "star" not in n for n in negs)
    assert hard_negative_caption("a picture of nothing", objects, rng) is None


# --------------------------------------------------------------------- concepts
def test_parse_concept():
    assert parse_concept("a red star") == {"color": "red", "shape": "star", "size": None, "background": None}
    assert parse_concept("a star")["shape"] == "star"
    assert parse_concept("a red shape") == {"color": "red", "shape": None, "size": None, "background": None}
    assert parse_concept("a striped background")["background"] == "striped"
    assert parse_concept("a large star") == {"color": None, "shape": "star", "size": "large", "background": None}
    assert parse_concept("a small blue circle") == {"color": "blue", "shape": "circle", "size": "small",
                                                    "background": None}
    assert parse_concept("A large red star on stripes") == {"color": "red", "shape": "star", "size": "large",
                                                            "background": "striped"}
    for bad in ("", "xyzzy"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_concept(bad)
    with pytest.raises(ValueError):
        parse_concept("a red blue star")
    concepts = all_color_shape_concepts()
    assert len(concepts) == 64 == len(set(concepts)) and "a red star" in concepts


def _meta(bg, *objs):
    return {"background": bg, "objects": [{"color": c, "shape": s, "size": z, "x": .5, "y": .5}
                                          for c, s, z in objs]}


HAND_MADE = [
    _meta("striped", ("red", "star", "large")),
    _meta("plain", ("red", "circle", "small"), ("blue", "star", "large")),  # no red star (binding)
    _meta("noisy", ("blue", "circle", "small"), ("red", "star", "small")),
    _meta("gradient", ("green", "ring", "large")),
]


@pytest.mark.parametrize("as_table", [False, True])
def test_concept_mask_on_hand_made_metadata(as_table):
    items = HAND_MADE
    if as_table:
        items = pa.table({"id": pa.array(range(4), pa.int64()),
                          "background": [m["background"] for m in HAND_MADE],
                          "objects": [m["objects"] for m in HAND_MADE]})
    def mask(q):
        return concept_mask(items, parse_concept(q)).tolist()
    assert mask("a red star") == [True, False, True, False]
    assert mask("a large red star") == [True, False, False, False]
    assert mask("a star") == [True, True, True, False]
    assert mask("a red shape") == [True, True, True, False]
    assert mask("a small circle") == [False, True, True, False]
    assert mask("a large star") == [True, True, False, False]
    assert mask("a striped background") == [True, False, False, False]
    assert mask("a large red star on stripes") == [True, False, False, False]
    assert mask("a red star on noise") == [False, False, True, False]
    assert concept_mask(items, "a green ring").tolist() == [False, False, False, True]
    assert concept_mask(items, "a pink heart").dtype == bool


def test_concept_mask_table_equals_list(metas_multi):
    world, metas = metas_multi
    table = world.items(500)
    for q in ["a red star", "a star", "a large cyan ring", "a noisy background", "a small shape on stripes"]:
        assert np.array_equal(concept_mask(table, q), concept_mask(metas[:500], q)), q
    # prevalence of a colour+shape concept is near 1/64 per object
    m = concept_mask(metas, "a red star")
    assert 0 < m.sum() < 150


# ------------------------------------------------------------------------ items
def test_items_schema():
    world = ShapesWorld(seed=4, objects_per_image=MULTI)
    table = world.items(50)
    obj = pa.struct([("shape", pa.string()), ("color", pa.string()), ("size", pa.string()),
                     ("x", pa.float32()), ("y", pa.float32())])
    assert table.schema.names == ["id", "caption", "background", "objects"]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("caption").type == pa.string()
    assert table.schema.field("background").type == pa.string()
    assert table.schema.field("objects").type.value_type == obj
    assert table.num_rows == 50
    assert table.column("id").to_pylist() == list(range(50))
    assert table.column("caption").to_pylist()[7] == world.caption(7)
    row = table.slice(7, 1).to_pylist()[0]
    meta = world.metadata(7)
    assert row["background"] == meta["background"]
    assert [(o["shape"], o["color"], o["size"]) for o in row["objects"]] == \
        [(o["shape"], o["color"], o["size"]) for o in meta["objects"]]
    assert np.allclose([o["x"] for o in row["objects"]], [o["x"] for o in meta["objects"]], atol=1e-6)


def test_objects_per_image_accepts_json_style_keys():
    from clipbranches_widgets.demo import ShapesWorld

    w = ShapesWorld(seed=2, objects_per_image={"1": 0.5, "3": 0.5})
    assert w.objects_per_image == {1: 0.5, 3: 0.5}
    counts = [len(w.metadata(i)["objects"]) for i in range(60)]
    assert 1 in counts and 3 in counts and set(counts) <= {1, 2, 3}  # an object that does not fit is dropped
    import pytest

    with pytest.raises(ValueError, match="objects_per_image"):
        ShapesWorld(objects_per_image=[1, 2])
