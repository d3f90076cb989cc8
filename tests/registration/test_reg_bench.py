"""benchmarks/bench_registration.py: held-out pair ranges, dataset selection and the documented JSON rows.

Recall and timings are printed, never asserted (they are measured in benchmarks/, not in tests)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_registration.py"
KEYS = {"name", "seconds", "reference", "reference_seconds", "ratio", "identical"}


def test_first_pair_selects_the_same_pairs_as_a_longer_run():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_registration
    finally:
        sys.path.remove(str(BENCH.parent))
    tail = bench_registration.synthetic_pairs(2, rotated=True, first=3)
    full = bench_registration.synthetic_pairs(5, rotated=True)
    assert [p["index"] for p in tail] == [3, 4] and [p["overlap"] for p in tail] == ["low", "high"]
    for a, b in zip(tail, full[3:]):
        np.testing.assert_array_equal(a["src"], b["src"])
        np.testing.assert_array_equal(a["ref"], b["ref"])
        np.testing.assert_array_equal(a["gt"], b["gt"])


def test_one_rotated_pair_prints_every_method_with_recall_by_overlap():
    out = subprocess.run([sys.executable, str(BENCH), "--pairs", "1", "--first-pair", "3", "--datasets", "synthetic_rotated",
                          "--verify", "2", "--json"], check=True, capture_output=True, text=True, timeout=600).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    names = {row["name"].split("/")[-1] for row in rows}
    assert names == {"roitr_lgr", "roitr_svd", "roitr_ransac", "fpfh_ransac", "roitr_lgr+icp", "roitr_svd+icp",
                     "roitr_ransac+icp", "fpfh_ransac+icp", "roitr_lgr+verify", "fpfh_ransac+verify"}
    for row in rows:
        assert KEYS <= row.keys(), row
        assert row["name"].startswith("registration/synthetic_rotated/")
        assert [(p["index"], p["overlap"]) for p in row["per_pair"]] == [(3, "low")]
        assert row["rr_low"] == row["rr"] == float(row["per_pair"][0]["hit"]) and "rr_high" not in row


@pytest.mark.parametrize("flag", ["--pairs", "--first-pair"])
def test_negative_pair_counts_are_rejected_by_name(flag):
    res = subprocess.run([sys.executable, str(BENCH), flag, "-1", "--datasets", "synthetic"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2 and flag in res.stderr
