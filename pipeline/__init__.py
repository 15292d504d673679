"""The sweep pipeline: validated YAML grids, Ray fan-out, Parquet results, MLflow tracking.

Submodules are imported on first use, so that ``pipeline.schema`` (and the analysis, which
reads with it) can be imported without the driver's dependencies."""

import importlib

_EXPORTS = {"ConfigError": "config", "SweepConfig": "config", "load_config": "config", "parse_config": "config",
            "SweepReport": "session", "run_sweep": "driver"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
