"""Registration methods by name (kept out of `api` so that the methods can import `api` without a cycle)."""
from __future__ import annotations

from .api import Registration


def build_registration(method: str, **kwargs) -> Registration:
    """Factory: `"fpfh"` -> FPFHRansacRegistration, `"roitr"` -> RoITrRegistration (kwargs passed through)."""
    if method == "fpfh":
        from .fpfh_ransac import FPFHRansacRegistration
        return FPFHRansacRegistration(**kwargs)
    if method == "roitr":
        from .roitr import RoITrRegistration
        return RoITrRegistration.from_checkpoint(**kwargs)
    raise ValueError(f"method: unknown registration method {method!r} (expected 'fpfh' or 'roitr')")
