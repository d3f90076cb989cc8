#!/usr/bin/env bash
# make gpu-prep: on the CPU machine, gather what `make gpu-check` needs on a GPU machine without network into .gpu/
# (git-ignored; the device run carries it): the pure-Python wheels pc3d needs there and the image lacks, for
# Python 3.12 / manylinux x86_64, and the few real scans the GPU tests read (copied from ../shared/data, which does
# not travel). Prints the total size (the working tree plus carried paths must stay under 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${PC3D_SHARED_DATA:-../shared/data}
DEST=.gpu
# spconv-triton: spconv's API on Triton kernels (spconv has no CUDA 13 wheel; its CUDA 12 wheels are 98 MB).
WHEELS="spconv-triton==1.0.0"
SCANS="kitti/object/training/velodyne/000001.bin
nuscenes/mmdet3d_demo/samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"

mkdir -p "$DEST/wheels" "$DEST/data"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST/wheels" $WHEELS
for scan in $SCANS; do
  if [ ! -f "$DATA/$scan" ]; then echo "gpu-prep: $DATA/$scan missing (set PC3D_SHARED_DATA)" >&2; exit 1; fi
  mkdir -p "$DEST/data/$(dirname "$scan")"
  cp -f "$DATA/$scan" "$DEST/data/$scan"
done
carried=$(du -sb "$DEST" | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "gpu-prep: $DEST = $((carried / 1024)) KiB ($(ls "$DEST/wheels" | tr '\n' ' ')); working tree $((tree / 1024)) KiB;" \
     "total $(((carried + tree) / 1024 / 1024)) MiB of 64 MiB"
