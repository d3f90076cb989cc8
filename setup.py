"""pc3d: 3D point-cloud and voxel perception (detection and registration) on shared ops.

`ops/` is installed as `pc3d.ops` (package_dir mapping) so that no top-level module named
`ops` is installed: that name belongs to an unrelated PyPI package.
"""
from setuptools import find_packages, setup

pc3d_packages = find_packages(include=["pc3d", "pc3d.*"])
ops_packages = ["pc3d.ops"] + ["pc3d.ops." + p for p in find_packages(where="ops")]

setup(
    name="pc3d",
    version="0.1.0",
    description="3D point-cloud and voxel perception: sparse voxel transformers, CenterPoint, RoITr",
    python_requires=">=3.10",
    packages=pc3d_packages + ops_packages,
    package_dir={"pc3d": "pc3d", "pc3d.ops": "ops"},
    include_package_data=True,
    install_requires=[
        # torch is pinned: an unpinned torch pulls a multi-GB CUDA wheel on CPU-only machines.
        "torch==2.13.0",
        "numpy==1.26.4",  # nuscenes-devkit 1.2.0 requires numpy<2
        "numba==0.68.1",
        "spconv==2.3.8",  # GPU users: replace with spconv-cu120 (see README)
        "PyYAML>=6",
        "tqdm>=4.60",
        "tensorboard>=2.15",
        "scipy>=1.10",
        "protobuf>=3.20",
        "matplotlib>=3.7",
    ],
    extras_require={
        "viz": ["open3d-cpu==0.20.0"],
        "nuscenes": ["nuscenes-devkit==1.2.0"],
        "deploy": ["onnx==1.23.2", "onnxruntime==1.31.1", "onnxscript==0.7.2"],
        "test": ["pytest>=8", "hypothesis>=6", "shapely>=2"],
    },
    entry_points={
        "console_scripts": [
            "pc3d-train=pc3d.cli.train:main",
            "pc3d-test=pc3d.cli.test:main",
            "pc3d-infer=pc3d.cli.infer:main",
            "pc3d-convert-checkpoint=pc3d.cli.convert_checkpoint:main",
            "pc3d-demo=pc3d.cli.demo:main",
            "pc3d-create-data=pc3d.cli.create_data:main",
            "pc3d-visualize=pc3d.cli.visualize:main",
            "pc3d-register=pc3d.cli.register:main",
            "pc3d-export=pc3d.cli.export:main",
            "pc3d-eval-waymo=pc3d.cli.eval_waymo:main",
        ]
    },
)
