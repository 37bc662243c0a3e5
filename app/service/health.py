"""Readiness: the checks behind GET /readyz."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.service.intake import Service

__all__ = ["readiness"]


def readiness(service: Service) -> dict[str, dict[str, Any]]:
    """Each readiness check: ok and what was found."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        service.store.ping()
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        checks["queue"] = {"ok": True, "depth": service.queue.depth()}
    except Exception as exc:
        checks["queue"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    free_mb = shutil.disk_usage(service.settings.spool).free // 2**20
    floor = service.settings.spool_min_free_mb
    checks["spool"] = {"ok": free_mb >= floor, "free_mb": free_mb, "floor_mb": floor}
    from app.config import load_settings
    from operators.inference import select_providers

    try:  # the pipeline's settings, read once for both checks that need them
        pipeline_settings = load_settings()
    except Exception as exc:
        problem = {"ok": False, "detail": str(exc)[:300]}
        checks["models"], checks["onnxruntime"] = problem, problem
    else:
        checks["models"] = _models_check(pipeline_settings.models_dir)
        try:
            checks["onnxruntime"] = {"ok": True, "providers": select_providers(pipeline_settings.providers)}
        except Exception as exc:
            checks["onnxruntime"] = {"ok": False, "detail": str(exc)[:300]}
    if service.dicom is not None:
        try:
            checks.update(service.dicom.readiness())
        except Exception as exc:
            checks["dicom_node"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    return checks


_models_verified: dict[str, Any] = {}


def _models_check(models_dir: Path) -> dict[str, Any]:
    """Every installed model's file matches its manifest's sha256 (checked once per process and model file)."""
    from operators.model_manifest import ModelManifest

    found: dict[str, str] = {}
    for manifest_path in sorted(models_dir.glob("*/manifest.json")):
        stamp = f"{manifest_path}:{manifest_path.stat().st_mtime_ns}"
        if stamp not in _models_verified:
            try:
                ModelManifest.load(manifest_path)
                _models_verified[stamp] = "verified"
            except Exception as exc:
                _models_verified[stamp] = f"failed: {exc}"[:300]
        found[manifest_path.parent.name] = _models_verified[stamp]
    ok = bool(found) and all(v == "verified" for v in found.values())
    return {"ok": ok, "models": found}
