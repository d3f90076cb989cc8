"""The op benchmarks run on a given scan and print the documented JSON rows, with identical outputs.

Timings are printed, never asserted (speed is measured in benchmarks/, not in tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = {"name", "seconds", "reference", "reference_seconds", "ratio", "identical"}


@pytest.mark.parametrize("bench", ["bench_partition.py", "bench_voxelize.py"])
def test_benchmark_json_rows_on_a_real_scan(bench, shared_data):
    scan = shared_data / "kitti/object/training/velodyne/000001.bin"
    if not scan.exists():
        pytest.skip(f"{scan} missing")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / bench), "--points", str(scan), "--dim", "4",
                          "--json", "--repeat", "1"], check=True, capture_output=True, text=True, timeout=600).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(rows) >= 8
    for row in rows:
        assert KEYS <= row.keys(), row
        assert row["identical"] is True, row["name"]
        assert row["seconds"] > 0 and row["reference_seconds"] > 0
        assert row["ratio"] == pytest.approx(row["reference_seconds"] / row["seconds"])
