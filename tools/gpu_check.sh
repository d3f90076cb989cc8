#!/usr/bin/env bash
# make gpu-check: one run on a fresh GPU machine (no network), at most ~8 minutes; logs and JSON under $OUT.
#   1. installs spconv-triton from the carried wheels (pip --no-index --find-links .gpu/wheels) and pc3d itself
#      (editable, no dependencies: the machine's torch / numpy / numba / onnx stay as they are), nothing else;
#   2. runs `pytest -m gpu tests/gpu` (PC3D_GPU_TEST_DEVICE, default cuda) with the carried scans (.gpu/data);
#   3. runs benchmarks/bench_gpu.py --json on the carried KITTI scan and a synthetic Waymo-size frame;
#   4. prints ONE summary line (also in $OUT/summary.txt).
# Prepare .gpu/ first on the CPU machine with `make gpu-prep`; docs/gpu.md has the exact device call.
# Dry run on a CPU machine: PC3D_GPU_TEST_DEVICE=cpu PC3D_GPU_PYTHON=.venv/bin/python make gpu-check
# Knobs: PYTEST_TIMEOUT (s, default 250), BENCH_BUDGET (s, default 130), BENCH_ARGS (split on spaces),
# PYTEST_K (a -k expression, e.g. a rerun of what failed).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
PY=${PC3D_GPU_PYTHON:-python3}
CARRY=${PC3D_GPU_CARRY:-.gpu}
DEVICE=${PC3D_GPU_TEST_DEVICE:-cuda}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-250}
BENCH_BUDGET=${BENCH_BUDGET:-130}
mkdir -p "$OUT"
start=$(date +%s)
log() { echo "[gpu-check +$(($(date +%s) - start))s] $*" | tee -a "$OUT/gpu_check.log"; }

log "environment -> $OUT/env.txt"
{ nvidia-smi 2>&1 | head -15
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|numpy|numba|onnx|onnxruntime|onnxscript|triton|scipy|pyyaml|open3d|spconv)[ -]'
} > "$OUT/env.txt" 2>&1

log "install (no network) -> $OUT/install.log"
install_ok=1
"$PY" -m pip install -q --no-index --no-deps --find-links "$CARRY/wheels" spconv-triton==1.0.0 >> "$OUT/install.log" 2>&1 \
  || install_ok=0
# pc3d itself, editable (a regular install if the machine's setuptools cannot do editable ones). `python -P`
# keeps the checkout's pc3d/ (which lacks the pc3d.ops mapping of setup.py) off sys.path everywhere below.
"$PY" -P -c "import pc3d.ops" > /dev/null 2>&1 \
  || "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1 \
  || "$PY" -m pip install -q --no-index --no-deps --no-build-isolation . >> "$OUT/install.log" 2>&1 || install_ok=0
"$PY" -P -c "import pc3d.ops, pc3d.models.detector" >> "$OUT/install.log" 2>&1 || install_ok=0

export PC3D_SHARED_DATA="$PWD/$CARRY/data" PC3D_GPU_TEST_DEVICE="$DEVICE" PYTHONUNBUFFERED=1
export PC3D_GPU_TEST_CPU_THREADS=${PC3D_GPU_TEST_CPU_THREADS:-8} TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/pc3d_triton}
per_test=""
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test="--timeout 120"
log "pytest -m gpu (timeout ${PYTEST_TIMEOUT}s) -> $OUT/pytest_gpu.log"
pytest_start=$(date +%s)
select=()
[ -n "${PYTEST_K:-}" ] && select=(-k "$PYTEST_K")
timeout "$PYTEST_TIMEOUT" "$PY" -P -m pytest -m gpu tests/gpu -q -rfEs --durations=15 $per_test \
  --junitxml "$OUT/pytest_gpu.xml" "${select[@]}" > "$OUT/pytest_gpu.log" 2>&1
pytest_rc=$?
pytest_s=$(($(date +%s) - pytest_start))

scan="$CARRY/data/kitti/object/training/velodyne/000001.bin"
log "bench_gpu.py (budget ${BENCH_BUDGET}s) -> $OUT/bench_gpu.jsonl"
bench_start=$(date +%s)
timeout $((BENCH_BUDGET + 60)) "$PY" -P benchmarks/bench_gpu.py --device "$DEVICE" --json --points "$scan" --dim 4 \
  --budget-s "$BENCH_BUDGET" ${BENCH_ARGS:-} > "$OUT/bench_gpu.jsonl" 2> "$OUT/bench_gpu.log"
bench_rc=$?
bench_s=$(($(date +%s) - bench_start))

"$PY" - "$OUT" "$install_ok" "$pytest_rc" "$pytest_s" "$bench_rc" "$bench_s" "$(($(date +%s) - start))" <<'PYEOF' | tee "$OUT/summary.txt"
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, install_ok, pytest_rc, pytest_s, bench_rc, bench_s, total_s = sys.argv[1:]
env = Path(out, "env.txt").read_text(errors="replace").splitlines()
torch_line = next((line for line in env if " torch " in line), "torch ?")
try:
    suite = ET.parse(Path(out, "pytest_gpu.xml")).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    tests = f"{n - f - e - s} passed, {f} failed, {e} errors, {s} skipped"
except (OSError, ET.ParseError, IndexError):
    tests = f"no junit report (rc {pytest_rc}: timed out or crashed, see pytest_gpu.log)"
rows = []
for line in Path(out, "bench_gpu.jsonl").read_text(errors="replace").splitlines() if Path(out, "bench_gpu.jsonl").exists() else []:
    if line.startswith("{"):
        rows.append(json.loads(line))
ok = [r for r in rows if r.get("seconds")]
key = next((r for r in ok if r["name"].startswith("gpu/dsvt_pillar/") and r["name"].endswith("/fp32/forward")), None)
dsvt = f"DSVT-P fp32 {key['name'].split('/')[2]} {key['seconds'] * 1e3:.1f} ms vs 67 ms RTX 3090" if key else "DSVT-P n/a"
print(f"gpu-check: {torch_line.strip()} | install {'ok' if install_ok == '1' else 'FAILED'} | pytest -m gpu: {tests} "
      f"(rc {pytest_rc}, {pytest_s}s) | bench: {len(ok)} rows, {len(rows) - len(ok)} not run (rc {bench_rc}, {bench_s}s) | "
      f"{dsvt} | {total_s}s | logs: {out}")
PYEOF
