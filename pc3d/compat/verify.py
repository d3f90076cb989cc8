"""`--verify-fixture`: run the pc3d module a fixture describes on its inputs and compare with its outputs.

The converter is chosen from `reference.repo`, the module from `model_cfg`'s NAME / type. Voxel rows are
matched by their coordinates (the reference and pc3d may emit voxels in different orders); boxes are
compared in score order. Every output key of the fixture must be produced.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pc3d.compat.fixture import ReferenceFixture, load_fixture
from pc3d.compat.registry import (ConversionError, DetectorConverter, RefContext, convert_sections, converter_for,
                                  family_for_repo, load_into)

TOLERANCE = 1e-4


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs_diff: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE


@dataclass(frozen=True)
class VerifyReport:
    fixture: str
    repo: str
    module: str
    diffs: tuple[OutputDiff, ...]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.diffs)

    @property
    def max_abs_diff(self) -> float:
        return max((d.max_abs_diff for d in self.diffs), default=0.0)

    def as_dict(self) -> dict:
        return {"fixture": self.fixture, "repo": self.repo, "module": self.module, "ok": self.ok,
                "max_abs_diff": self.max_abs_diff, "tolerance": TOLERANCE,
                "outputs": {d.name: {"max_abs_diff": d.max_abs_diff, **({"note": d.note} if d.note else {})}
                            for d in self.diffs}}


def run_fixture(fixture: ReferenceFixture) -> dict:
    """Convert the fixture's weights, build the pc3d module, run it on `inputs`; outputs in reference names."""
    fam = family_for_repo(fixture.reference.repo)
    conv = converter_for(fam, fixture.module_name)
    ctx = RefContext.from_args(fixture.ctor_args)
    if isinstance(conv, DetectorConverter):
        pc3d_cfg, state = convert_sections(fam, fixture.model_cfg, conv.sections, fixture.state_dict, ctx)
    else:
        part = {k[len(conv.prefix):]: v for k, v in fixture.state_dict.items() if k.startswith(conv.prefix)}
        stray = sorted(k for k in fixture.state_dict if not k.startswith(conv.prefix))
        if stray:
            raise ConversionError(f"{fixture.path}: state_dict keys without the {conv.name} prefix "
                                  f"{conv.prefix!r}: {stray[:8]}")
        pc3d_cfg = conv.config(fixture.model_cfg, part, ctx)
        state = conv.weights(part, pc3d_cfg, ctx)
    module = conv.build(pc3d_cfg, ctx, fixture.inputs)
    load_into(module, state, f"{fixture.path} ({conv.name})")
    module.eval()
    with torch.no_grad():
        return conv.run(module, fixture.inputs, pc3d_cfg, ctx)


def verify_fixture(path) -> VerifyReport:
    fixture = load_fixture(path)
    got = run_fixture(fixture)
    diffs = []
    for name, expected in fixture.outputs.items():
        if name not in got:
            raise ConversionError(f"{path}: pc3d produced no output {name!r} (produced: {sorted(got)})")
        diffs += compare(name, expected, got[name], fixture.outputs, got)
    return VerifyReport(str(path), fixture.reference.repo, fixture.module_name, tuple(diffs))


def _voxel_coords_key(name: str, outputs: dict) -> str | None:
    """The coordinates that go with voxel rows `name` (`voxel_features` -> `voxel_coords`,
    `x.features` -> `x.indices`)."""
    for candidate in (name.replace("features", "coords"), name.replace(".features", ".indices")):
        if candidate != name and candidate in outputs:
            return candidate
    return None


def _match_rows(ref_coords: torch.Tensor, got_coords: torch.Tensor) -> torch.Tensor | None:
    """Permutation p with got_coords[p] == ref_coords, or None when the coordinate sets differ."""
    if ref_coords.shape != got_coords.shape:
        return None
    ref_order = _lex_order(ref_coords)
    got_order = _lex_order(got_coords)
    if not torch.equal(ref_coords[ref_order].long(), got_coords[got_order].long()):
        return None
    perm = torch.empty_like(ref_order)
    perm[ref_order] = got_order
    return perm


def _lex_order(coords: torch.Tensor) -> torch.Tensor:
    c = coords.long()
    key = torch.zeros(c.shape[0], dtype=torch.long)
    for col in range(c.shape[1]):
        key = key * (int(c[:, col].max()) + 1 if c.numel() else 1) + c[:, col]
    return torch.argsort(key)


def _compare_boxes(name: str, expected: dict, got: dict) -> list[OutputDiff]:
    """Decoded boxes: the same number, each reference box matched to the closest pc3d box of its label.

    Score order alone is not enough: equal scores (common with random weights, whose empty BEV cells all
    give the same logits) may come out of top-k / NMS in either order.
    """
    if not isinstance(got, dict) or not {"pred_boxes", "pred_scores", "pred_labels"} <= set(got):
        return [OutputDiff(name, float("inf"), "pc3d produced no pred_boxes / pred_scores / pred_labels")]
    rb, rs, rl = expected["pred_boxes"].double(), expected["pred_scores"].double(), expected["pred_labels"].long()
    gb, gs, gl = (torch.as_tensor(got["pred_boxes"]).double(), torch.as_tensor(got["pred_scores"]).double(),
                  torch.as_tensor(got["pred_labels"]).long())
    if rb.shape != gb.shape:
        return [OutputDiff(f"{name}.pred_boxes", float("inf"), f"{gb.shape[0]} boxes vs reference {rb.shape[0]}")]
    if rb.shape[0] == 0:
        return [OutputDiff(f"{name}.{k}", 0.0, "no boxes") for k in ("pred_boxes", "pred_scores", "pred_labels")]
    ref_rows = torch.cat([rb, rs[:, None]], 1)
    got_rows = torch.cat([gb, gs[:, None]], 1)
    cost = (ref_rows[:, None, :] - got_rows[None, :, :]).abs().amax(-1)
    cost[rl[:, None] != gl[None, :]] = float("inf")
    taken = torch.zeros(len(gb), dtype=torch.bool)
    match = []
    for i in torch.argsort(rs, descending=True).tolist():  # greedy, best-scored reference boxes first
        row = cost[i].masked_fill(taken, float("inf"))
        j = int(torch.argmin(row))
        if not torch.isfinite(row[j]):
            return [OutputDiff(f"{name}.pred_labels", float("inf"), "labels of the boxes differ")]
        taken[j] = True
        match.append((i, j))
    ri = torch.tensor([m[0] for m in match])
    gi = torch.tensor([m[1] for m in match])
    note = "boxes matched by label and value"
    return [OutputDiff(f"{name}.pred_boxes", (rb[ri] - gb[gi]).abs().max().item(), note),
            OutputDiff(f"{name}.pred_scores", (rs[ri] - gs[gi]).abs().max().item(), note),
            OutputDiff(f"{name}.pred_labels", 0.0, note)]


def compare(name: str, expected, got, ref_outputs: dict, got_outputs: dict) -> list[OutputDiff]:
    """Max abs difference per leaf; lists / dicts recurse with `name[i].key` names."""
    if isinstance(expected, dict) and {"pred_boxes", "pred_scores", "pred_labels"} <= set(expected):
        return _compare_boxes(name, expected, got)
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(expected) - set(got):
            return [OutputDiff(name, float("inf"), f"missing keys {sorted(set(expected) - set(got or {}))}")]
        out = []
        for key in expected:
            out += compare(f"{name}.{key}", expected[key], got[key], expected, got)
        return out
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return [OutputDiff(name, float("inf"), f"expected {len(expected)} entries, got "
                                                   f"{len(got) if isinstance(got, (list, tuple)) else type(got).__name__}")]
        out = []
        for i, (e, g) in enumerate(zip(expected, got)):
            out += compare(f"{name}[{i}]", e, g, {}, {})
        return out
    if not isinstance(expected, torch.Tensor):
        same = expected == got
        return [OutputDiff(name, 0.0 if same else float("inf"), "" if same else f"expected {expected!r}, got {got!r}")]
    got = torch.as_tensor(got)
    note = ""
    if name.endswith("coords") or name.endswith(".indices"):
        # voxel coordinates: the same set of rows, in any order
        if tuple(got.shape) != tuple(expected.shape):
            return [OutputDiff(name, float("inf"), f"{tuple(got.shape)[0] if got.ndim else 0} voxels vs reference "
                                                   f"{tuple(expected.shape)[0] if expected.ndim else 0}")]
        same = _match_rows(expected, got) is not None
        return [OutputDiff(name, 0.0 if same else float("inf"), "same voxel set" if same else "voxel sets differ")]
    coords_key = _voxel_coords_key(name, ref_outputs)
    if coords_key is not None and coords_key in got_outputs:
        perm = _match_rows(ref_outputs[coords_key], torch.as_tensor(got_outputs[coords_key]))
        if perm is None:
            return [OutputDiff(name, float("inf"), f"voxel coordinates differ from the reference's {coords_key}")]
        got = got[perm]
        note = "rows matched by coordinates"
    if tuple(got.shape) != tuple(expected.shape):
        return [OutputDiff(name, float("inf"), f"shape {tuple(got.shape)} vs reference {tuple(expected.shape)}")]
    if expected.numel() == 0:
        return [OutputDiff(name, 0.0, "empty")]
    diff = (got.double() - expected.double()).abs().max().item()
    return [OutputDiff(name, diff, note)]
