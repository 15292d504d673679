"""The sweep pipeline: validated YAML grids, Ray fan-out, Parquet results, MLflow tracking.

Above ``analysis`` and ``records`` (which read and write the results without it) and ``sobolev``;
Ray and MLflow are imported only where a sweep uses them."""

from .config import SweepConfig, load_config, parse_config
from .driver import run_sweep
from .errors import ConfigError
from .options import RunOptions
from .session import SweepReport

__all__ = ["ConfigError", "SweepConfig", "load_config", "parse_config", "RunOptions", "SweepReport", "run_sweep"]
