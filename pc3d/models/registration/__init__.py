"""Point-cloud registration: RoITr (rotation-invariant, pure PyTorch) and an FPFH + RANSAC baseline.

Every method implements `api.Registration.register(src (N, 3), ref (M, 3)) -> RegistrationResult`
(`transform` maps src into ref). Build one with `build.build_registration("fpfh" | "roitr", ...)`.
Modules: `ppf_attention`, `geometric_embedding`, `roitr`, `matching`, `optimal_transport`, `pose`,
`fpfh_ransac`, `losses`, `training`, `api`, `build`.
"""
from .api import Registration, RegistrationResult
from .build import build_registration

__all__ = ["Registration", "RegistrationResult", "build_registration"]
