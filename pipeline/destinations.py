"""Where an invocation may write: its output directory and its MLflow store, checked before any work.

- :func:`check_output_dir`: the one output check (the CLI's and every library caller's): a
  directory is made and removed in the nearest existing parent, since permissions alone do not
  tell (root under ``/proc``, a read-only mount).
- Under ``python -m pipeline submit`` the command runs in the job's working directory, where Ray
  unpacked the upload (``.../runtime_resources/working_dir_files/_ray_pkg_<hash>/``), which is
  gone with the cluster session. So nothing may be written there: the client refuses a relative
  ``--out`` (or a relative ``output`` in the config) and a tracking store it does not name or
  names by a relative path (:func:`check_submittable`); the driver of a Ray job refuses an output
  or an SQLite/file store that resolves inside its working directory
  (:func:`check_job_destinations`), which also catches a ``ray job submit`` by hand.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from pathlib import Path

from .config import SweepConfig
from .errors import SetupError, nearest_existing
from .options import RunOptions

KEEP = "on storage the head keeps"
TRACKING_FIX = (f"pass --tracking-uri http://HOST:PORT (an MLflow server) or sqlite:////ABSOLUTE/PATH.db (an "
                f"absolute path {KEEP}), or --no-mlflow")


def check_output_dir(out: Path) -> None:
    """Refuse an output directory that cannot be created, before Ray starts or anything is written:
    a directory is made and removed in its nearest existing parent."""
    probe = nearest_existing(out)
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a directory")
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=probe))
    except OSError as exc:
        raise SetupError(f"output: cannot write to {out} ({exc.strerror or exc}); choose another --out") from None


def uri_path(uri: str | None) -> Path | None:
    """The file behind an ``sqlite:///`` or ``file:`` tracking URI (relative as written), else None."""
    if not uri:
        return None
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    parts = urllib.parse.urlsplit(uri)
    return Path(parts.path) if parts.scheme == "file" else None


def job_working_dir(env=None) -> Path | None:
    """The temporary working directory of the Ray job this process drives (Ray passes the job's
    runtime environment to its driver in ``RAY_JOB_CONFIG_JSON_ENV_VAR``), or None."""
    raw = (os.environ if env is None else env).get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return Path.cwd().resolve() if runtime_env.get("working_dir") else None


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def check_job_destinations(out: Path, uri: str | None, job_dir: Path | None) -> None:
    """Under a Ray job with a working directory ``job_dir``: refuse an output or a file-backed
    MLflow store inside it."""
    if job_dir is None:
        return
    if _inside(Path(out), job_dir):
        raise SetupError(f"output: {out} would be inside the job's temporary working directory {job_dir}, gone with "
                         f"the cluster session; pass --out with an absolute path {KEEP}, e.g. /shared/results/NAME")
    store = uri_path(uri)
    if store is not None and _inside(store, job_dir):
        raise SetupError(f"tracking: the MLflow store {uri} would be inside the job's temporary working directory "
                         f"{job_dir}, gone with the cluster session; {TRACKING_FIX}")


def check_submittable(command: str, cfg: SweepConfig, options: RunOptions) -> None:
    """What ``submit`` checks on the client, before uploading: the output is an absolute path and
    the MLflow store is named (by ``--tracking-uri`` or the config), by a server URI or an
    absolute path. (The job does not see the client's environment, so ``MLFLOW_TRACKING_URI``
    here does not count.)"""
    out = options.output(cfg)
    if not out.is_absolute():
        raise SetupError(f"output: {out} is relative: under submit it would be written inside the job's temporary "
                         f"working directory, gone with the cluster session; pass --out with an absolute path {KEEP}, "
                         f"e.g. --out /shared/results/{cfg.name}")
    if command not in ("run", "search", "sync") or not (options.mlflow and cfg.tracking.enabled):
        return
    uri = options.tracking_uri or cfg.tracking.uri
    if not uri:
        raise SetupError(f"tracking: no --tracking-uri and no tracking.uri in the config: the job would keep MLflow in "
                         f"an SQLite file inside its temporary working directory, gone with the cluster session; "
                         f"{TRACKING_FIX}")
    store = uri_path(uri)
    if store is not None and not store.is_absolute():
        raise SetupError(f"tracking: {uri} is a relative path: under submit it would be inside the job's temporary "
                         f"working directory; {TRACKING_FIX}")
