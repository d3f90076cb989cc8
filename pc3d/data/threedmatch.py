"""3DMatch / 3DLoMatch benchmark loader (standard layout) with seeded rotated variants.

Layout under `root`:
    benchmarks/<3DMatch|3DLoMatch>/<scene>/gt.log          blocks `i j n` + 4x4 T (T maps fragment j into i)
    benchmarks/<3DMatch|3DLoMatch>/<scene>/gt.info         blocks `i j n` + 6x6 information matrix
    benchmarks/<3DMatch|3DLoMatch>/<scene>/gt_overlap.log  CSV `i,j,overlap`
    metadata/<3DMatch|3DLoMatch>.pkl                        optional GeoTransformer pair list
    fragments: any of  data/test/<scene>/cloud_bin_<k>.pth | test/<scene>/cloud_bin_<k>.pth |
               fragments/<scene>/cloud_bin_<k>.(ply|pth|npy)  | <scene>/cloud_bin_<k>.(ply|pth|npy)
A pair is `src = fragment j`, `ref = fragment i`, `transform` maps src into ref (the gt.log matrix).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

# the real benchmarks, and the synthetic ones `tools/create_data.py registration` writes in the same layout
BENCHMARKS = ("3DMatch", "3DLoMatch", "SynMatch", "SynLoMatch")
TEST_SCENES = (
    "7-scenes-redkitchen", "sun3d-home_at-home_at_scan1_2013_jan_1", "sun3d-home_md-home_md_scan9_2012_sep_30",
    "sun3d-hotel_uc-scan3", "sun3d-hotel_umd-maryland_hotel1", "sun3d-hotel_umd-maryland_hotel3",
    "sun3d-mit_76_studyroom-76-1studyroom2", "sun3d-mit_lab_hj-lab_hj_tea_nov_2_2012_scan1_erika",
)


@dataclass
class RegistrationPair:
    """One benchmark pair. `transform (4, 4)` maps fragment `frag_j` (src) into `frag_i` (ref).

    `information` is the gt.info 6x6 matrix (None once the pair is rotated: it no longer applies).
    `src_rotation` / `ref_rotation` are the extra rotations applied to the loaded clouds (identity if none).
    """

    scene: str
    frag_i: int
    frag_j: int
    transform: np.ndarray
    information: np.ndarray | None = None
    overlap: float | None = None
    src_rotation: np.ndarray | None = None
    ref_rotation: np.ndarray | None = None

    @property
    def consecutive(self) -> bool:
        return abs(self.frag_j - self.frag_i) <= 1


def _read_blocks(path: Path, rows: int) -> dict[tuple[int, int], np.ndarray]:
    """Parse `i j n` headers each followed by `rows` rows of numbers."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if len(lines) % (rows + 1):
        raise ValueError(f"{path}: expected blocks of 1 + {rows} lines, got {len(lines)} lines")
    out = {}
    for b in range(0, len(lines), rows + 1):
        header = lines[b]
        if len(header) < 2:
            raise ValueError(f"{path}: bad header line {' '.join(header)!r}")
        mat = np.array(lines[b + 1:b + 1 + rows], dtype=np.float64)
        if mat.shape != (rows, rows):
            raise ValueError(f"{path}: block {header} is not {rows}x{rows}")
        out[(int(header[0]), int(header[1]))] = mat
    return out


def read_gt_log(path) -> dict[tuple[int, int], np.ndarray]:
    """`{(i, j): T (4, 4)}` with T mapping fragment j into fragment i's frame."""
    return _read_blocks(Path(path), 4)


def read_gt_info(path) -> dict[tuple[int, int], np.ndarray]:
    """`{(i, j): information matrix (6, 6)}`."""
    return _read_blocks(Path(path), 6)


def read_gt_overlap(path) -> dict[tuple[int, int], float]:
    """`{(i, j): overlap ratio}` from the `i,j,overlap` CSV."""
    out = {}
    for ln in Path(path).read_text().splitlines():
        if ln.strip():
            i, j, ov = ln.strip().split(",")
            out[(int(i), int(j))] = float(ov)
    return out


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Haar-uniform SO(3) rotation (QR of a Gaussian with the sign fix, then det = +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotate_pair(pair: RegistrationPair, src_rotation: np.ndarray, ref_rotation: np.ndarray) -> RegistrationPair:
    """The pair after rotating src by `src_rotation` and ref by `ref_rotation` (about the origin).

    New GT: `[R_ref 0] @ T @ [R_src^T 0]`. The information matrix is dropped (it is tied to the original
    frames); evaluate rotated pairs with RMSE recall instead.
    """
    rs = np.eye(4)
    rs[:3, :3] = src_rotation
    rr = np.eye(4)
    rr[:3, :3] = ref_rotation
    prev_s = pair.src_rotation if pair.src_rotation is not None else np.eye(3)
    prev_r = pair.ref_rotation if pair.ref_rotation is not None else np.eye(3)
    return replace(pair, transform=rr @ pair.transform @ np.linalg.inv(rs), information=None,
                   src_rotation=src_rotation @ prev_s, ref_rotation=ref_rotation @ prev_r)


class ThreeDMatchBenchmark:
    """Pairs of the 3DMatch / 3DLoMatch test benchmark, optionally rotated (`rotated=True`).

    Args:
        root: directory with `benchmarks/` (and fragments, for `load_pair`).
        benchmark: "3DMatch" or "3DLoMatch".
        scenes: subset of scene names (default: every scene folder present).
        rotated: apply seeded rotations to the clouds of every pair.
        seed: base seed; the rotation of a pair depends only on (seed, scene, i, j).
        rotation_protocol: "haar" (pc3d: Haar-uniform rotations of both clouds) or "roitr" (RoITr's rotated
            benchmark: pair number `index` in benchmark order, all scenes sorted, gets the rotation of
            `pc3d.evaluation.roitr_protocol.roitr_rotation(index)` on its source or its target; `seed` unused).
    """

    def __init__(self, root, benchmark: str = "3DMatch", scenes=None, rotated: bool = False, seed: int = 0,
                 rotation_protocol: str = "haar"):
        if benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark: expected one of {BENCHMARKS}, got {benchmark!r}")
        if rotation_protocol not in ("haar", "roitr"):
            raise ValueError(f"rotation_protocol: expected 'haar' or 'roitr', got {rotation_protocol!r}")
        self.rotation_protocol = rotation_protocol
        self.root = Path(root)
        bench_dir = self.root / "benchmarks" / benchmark
        if not bench_dir.is_dir():
            raise FileNotFoundError(f"benchmark folder not found: {bench_dir}")
        self.benchmark = benchmark
        self.rotated = rotated
        self.seed = int(seed)
        available = sorted(p.name for p in bench_dir.iterdir() if (p / "gt.log").is_file())
        self.scenes = list(scenes) if scenes is not None else available
        missing = [s for s in self.scenes if s not in available]
        if missing:
            raise ValueError(f"scenes: not in {bench_dir}: {missing}")
        self.pairs: list[RegistrationPair] = []
        # global pair numbers in benchmark order (every scene, sorted): RoITr seeds its rotations with them
        first_index, count = {}, 0
        for scene in available:
            first_index[scene] = count
            count += len(read_gt_log(bench_dir / scene / "gt.log"))
        for scene in self.scenes:
            sdir = bench_dir / scene
            logs = read_gt_log(sdir / "gt.log")
            infos = read_gt_info(sdir / "gt.info") if (sdir / "gt.info").is_file() else {}
            overlaps = read_gt_overlap(sdir / "gt_overlap.log") if (sdir / "gt_overlap.log").is_file() else {}
            for position, ((i, j), transform) in enumerate(logs.items()):
                pair = RegistrationPair(scene, i, j, transform, infos.get((i, j)), overlaps.get((i, j)))
                if rotated and rotation_protocol == "roitr":
                    pair = rotate_pair(pair, *_roitr_rotations(first_index[scene] + position))
                elif rotated:
                    pair = rotate_pair(pair, *self._pair_rotations(scene, i, j))
                self.pairs.append(pair)

    def _pair_rotations(self, scene: str, i: int, j: int):
        scene_index = TEST_SCENES.index(scene) if scene in TEST_SCENES else sum(map(ord, scene))
        rng = np.random.default_rng([self.seed, scene_index, i, j])
        return random_rotation(rng), random_rotation(rng)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> RegistrationPair:
        return self.pairs[index]

    def fragment_path(self, scene: str, index: int) -> Path:
        """First existing file among the common fragment layouts (FileNotFoundError listing them otherwise)."""
        name = f"cloud_bin_{index}"
        candidates = []
        for base in (self.root / "data" / "test" / scene, self.root / "test" / scene,
                     self.root / "fragments" / scene, self.root / scene):
            for ext in (".pth", ".ply", ".npy", ".pcd"):
                candidates.append(base / (name + ext))
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(f"fragment {name} of {scene} not found; tried e.g. {candidates[0]} and {candidates[1]}")

    def load_pair(self, index: int):
        """`(src (N, 3) float64, ref (M, 3) float64, pair)` with the pair's rotations applied."""
        pair = self.pairs[index]
        src = load_fragment(self.fragment_path(pair.scene, pair.frag_j))
        ref = load_fragment(self.fragment_path(pair.scene, pair.frag_i))
        if pair.src_rotation is not None:
            src = src @ pair.src_rotation.T
            ref = ref @ pair.ref_rotation.T
        return src, ref, pair


def roitr_rotation(index: int) -> tuple[np.ndarray, bool]:
    """`(R (3, 3), rotates_source)` that RoITr's rotated benchmark applies to pair `index` (benchmark order):
    a legacy numpy stream seeded with `index` gives Euler angles `rand(3) * 2pi` (scipy 'zyx'), then the
    source is rotated if a further `rand() > 0.5`, else the target."""
    from scipy.spatial.transform import Rotation

    rng = np.random.RandomState(index)
    euler = rng.rand(3) * np.pi * 2.0
    rot = Rotation.from_euler("zyx", euler).as_matrix()
    return rot, bool(rng.rand(1)[0] > 0.5)


def _roitr_rotations(index: int):
    rot, on_source = roitr_rotation(index)
    return (rot, np.eye(3)) if on_source else (np.eye(3), rot)


def load_fragment(path) -> np.ndarray:
    """Fragment file -> `(N, 3)` float64. `.pth`/`.pkl` go through the restricted unpickler."""
    path = Path(path)
    if path.suffix in (".pth", ".pkl"):
        from pc3d.io.safe_pickle import safe_load
        arr = safe_load(path)
        if isinstance(arr, dict):  # some toolkits store {"points": ...}
            arr = arr.get("points", arr.get("pcd"))
        arr = np.asarray(arr)
    elif path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        from pc3d.io.points import read_points
        arr = read_points(path)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{path}: expected an (N, 3+) point array, got shape {arr.shape}")
    arr = arr[:, :3].astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN or inf coordinates")
    return arr


def load_metadata_pairs(path) -> list[RegistrationPair]:
    """GeoTransformer's `metadata/<bench>.pkl` list of dicts -> pairs (rotation/translation = gt.log T)."""
    from pc3d.io.safe_pickle import safe_load
    records = safe_load(path)
    pairs = []
    for rec in records:
        transform = np.eye(4)
        transform[:3, :3] = rec["rotation"]
        transform[:3, 3] = rec["translation"]
        pairs.append(RegistrationPair(rec["scene_name"], int(rec["frag_id0"]), int(rec["frag_id1"]), transform,
                                      None, float(rec["overlap"])))
    return pairs
