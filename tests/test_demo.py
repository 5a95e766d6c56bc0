"""The terminal engine demo (`make engine-demo`, ``python -m clipbranches_widgets.demo_engine``) runs end to end and reports."""

import re
import subprocess
import sys


def test_engine_demo_runs_and_finds_the_concept():
    out = subprocess.run([sys.executable, "-m", "clipbranches_widgets.demo_engine", "--rows", "30000"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "index: 104 feature subsets" in out
    found = re.findall(r"found ([\d,]+) items: precision ([\d.]+), recall ([\d.]+)", out)
    assert len(found) == 2  # branches and ensemble
    for count, precision, recall in found:
        assert int(count.replace(",", "")) > 0
        assert float(recall) > 0.3 and float(precision) > 0.1
    assert "SELECT id FROM items" in out
