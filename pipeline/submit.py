"""``python -m pipeline submit``: ``ray job submit`` of a pipeline command to a running cluster,
with what a plain ``ray job submit`` misses:

- the token of Ray's token authentication (on by default since Ray 2.5x once a token exists):
  ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (the file ``ray start``
  and ``ray get-auth-token --generate`` write) switch the client to ``RAY_AUTH_MODE=token``;
- the commit of this checkout, passed as ``SOBOLEV_GIT_COMMIT`` (the upload has no ``.git``),
  with ``+dirty`` when the working tree has uncommitted changes (they are uploaded too);
- the upload is the repository root less ``.gitignore`` and ``.rayignore`` (results, notebooks'
  outputs, databases), so it stays small;
- before uploading, the CLI checks the command as the job would (config, options) and that it
  writes nothing into the job's temporary working directory (``pipeline.destinations``): the same
  one-line errors and exit code 2 as a local command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import SetupError
from .session import git_commit

REPO = Path(__file__).resolve().parents[1]


def auth_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``RAY_AUTH_MODE=token`` when a token is at hand and no mode is chosen."""
    if "RAY_AUTH_MODE" in env:
        return env
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if env.get("RAY_AUTH_TOKEN") or path.is_file():
        return {**env, "RAY_AUTH_MODE": "token"}
    return env


def checkout_commit() -> str:
    commit = git_commit()
    if commit == "unknown":
        return commit
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, timeout=10).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def submit_argv(address: str, pipeline_args: list[str], wait: bool = True) -> list[str]:
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray is None:
        raise SetupError("submit: no `ray` command on PATH; install the project (pip install -e .) in this environment")
    runtime_env = {"env_vars": {"SOBOLEV_GIT_COMMIT": checkout_commit()}}
    return [ray, "job", "submit", "--address", address, "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps(runtime_env), *([] if wait else ["--no-wait"]), "--",
            "python", "-m", "pipeline", *pipeline_args]


def submit(address: str | None, pipeline_args: list[str], wait: bool = True) -> int:
    """Run ``ray job submit`` (its output goes to ours); its exit status: the job's when waiting."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SetupError("submit: no cluster; pass --address http://HEAD:8265 (the head's dashboard) "
                         "or set RAY_ADDRESS")
    if not pipeline_args or pipeline_args[0] not in ("run", "search", "sync", "status"):
        raise SetupError("submit: name the pipeline command after --, e.g. `python -m pipeline submit "
                         "--address http://HEAD:8265 -- run configs/paper.yaml --out /shared/x`")
    return subprocess.run(submit_argv(address, pipeline_args, wait), env=auth_env(dict(os.environ))).returncode
