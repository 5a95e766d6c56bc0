"""Two sessions at once: concurrent training and searching from several threads give the same
answers as running alone (Numba's parallel kernels are launched from several Python threads)."""

import threading

import numpy as np

from clipbranches_widgets.engine import BoxIndex, BranchEnsemble, DecisionBranches, feature_subsets
from clipbranches_widgets.testing.synthetic import clustered_catalog, labelled_task

SUBSETS = feature_subsets(32, {4: 64, 6: 32, 8: 8}, seed=42)


def test_concurrent_sessions_agree_with_serial():
    codes, labels = clustered_catalog(80_000, seed=2)
    index = BoxIndex.build(codes, SUBSETS)
    tasks = [labelled_task(codes, labels, c, seed=c) for c in (3, 7, 11)]
    expected = []
    for ids, y in tasks:
        m = DecisionBranches(subsets=SUBSETS, random_state=0).fit(codes[ids], y)
        e = BranchEnsemble(5, subsets=SUBSETS, random_state=0).fit(codes[ids], y)
        expected.append((index.search(m, method="scan").ids, index.search(e, method="scan").ids))
    errors = []

    def session(k):
        try:
            ids, y = tasks[k]
            for _ in range(5):
                m = DecisionBranches(subsets=SUBSETS, random_state=0).fit(codes[ids], y)
                e = BranchEnsemble(5, subsets=SUBSETS, random_state=0).fit(codes[ids], y)
                for method in ("scan", "index"):
                    assert np.array_equal(index.search(m, method=method).ids, expected[k][0])
                    assert np.array_equal(index.search(e, method=method).ids, expected[k][1])
        except Exception as exc:  # collected: an assert in a thread would not fail the test
            errors.append(f"session {k}: {exc!r}")

    threads = [threading.Thread(target=session, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_readers_opening_during_rewrites_get_whole_consistent_catalogs(tmp_path):
    """A catalog rewritten in place again and again: every open succeeds (never a false 'corrupt')
    and every opened catalog is one version throughout (codes, items and thumbnails agree)."""
    import pyarrow as pa

    from clipbranches_widgets.catalog import open_catalog, write_catalog

    path, n = tmp_path / "cat", 2000

    def version(v):
        write_catalog(path, np.full((n, 32), v, np.uint8), pa.table({"caption": [f"v{v}"] * n}),
                      thumbnails=[bytes([v]) * 50] * n)

    version(0)
    stop = threading.Event()

    def rewrite():
        v = 0
        while not stop.wait(0.02):  # a rewrite every ~30 ms: far more often than any real rebuild
            v = (v + 1) % 200
            version(v)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        seen = set()
        for _ in range(60):
            cat = open_catalog(path)
            v = int(cat.codes[0, 0])
            assert cat.items_of([n - 1]).column("caption")[0].as_py() == f"v{v}"
            assert cat.thumbnail(n - 1) == bytes([v]) * 50
            seen.add(v)
    finally:
        stop.set()
        writer.join()
    assert len(seen) > 1  # the readers really ran across rewrites
