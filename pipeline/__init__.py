"""The sweep pipeline: validated YAML grids, Ray fan-out, Parquet results, MLflow tracking."""

from .config import ConfigError, SweepConfig, load_config, parse_config
from .driver import SweepReport, run_sweep

__all__ = ["ConfigError", "SweepConfig", "SweepReport", "load_config", "parse_config", "run_sweep"]
