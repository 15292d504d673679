"""The run options (pipeline/options.py): one validated, frozen object, built once at the edge and
passed down; library callers get the same checks as the CLI (the output probe included)."""

import dataclasses
import math
from pathlib import Path

import pytest
from pipeline_helpers import tiny_config

from pipeline.driver import run_sweep
from pipeline.errors import SetupError, TrackingError
from pipeline.options import RunOptions, options_of


@pytest.mark.parametrize("field, value, words", [
    ("num_cpus", 0, "--num-cpus: 0 is not a count >= 1"),
    ("num_cpus", 1.5, "--num-cpus: 1.5 is not a count >= 1"),
    ("max_in_flight", -2, "max_in_flight: -2 is not a count >= 1"),
    ("grace_s", -1.0, "--grace: -1.0 is not a number of seconds >= 0"),
    ("grace_s", math.inf, "--grace: inf is not a number of seconds >= 0"),
    ("wait", math.nan, "--wait: nan is not a number of seconds >= 0"),
    ("task_timeout", 0.0, "--task-timeout: 0.0 is not a number of seconds > 0"),
])
def test_bad_options_are_refused_in_one_line(field, value, words):
    with pytest.raises(SetupError) as err:
        RunOptions(**{field: value})
    assert str(err.value).startswith(words) and "\n" not in str(err.value)


def test_options_are_frozen_defaulted_and_the_keyword_api_is_the_same_object(tmp_path):
    opts = RunOptions(out=str(tmp_path), wait=math.inf, task_timeout=math.inf)
    assert opts.out == tmp_path and isinstance(opts.out, Path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.force = True
    assert options_of(None, dict(out=tmp_path, wait=math.inf, task_timeout=math.inf)) == opts
    assert options_of(opts, {}) is opts
    with pytest.raises(TypeError, match="not both"):
        options_of(opts, dict(force=True))
    with pytest.raises(TrackingError, match="not a tracking URI"):
        RunOptions(tracking_uri="htp://x:5000")
    cfg = tiny_config(tracking=dict(uri="sqlite:////data/m.db"))
    assert RunOptions().output(cfg) == Path("runs/tiny") and RunOptions(out=tmp_path).output(cfg) == tmp_path
    assert RunOptions().tracking(cfg) == "sqlite:////data/m.db" and RunOptions(mlflow=False).tracking(cfg) is None
    assert RunOptions(tracking_uri="http://h:5000").tracking(cfg) == "http://h:5000"


def test_library_callers_get_the_clis_output_probe():
    """/proc passes a permission check for root (os.access says writable) but nothing can be made
    there: run_sweep refuses it before any work, in the CLI's words."""
    with pytest.raises(SetupError, match=r"^output: cannot write to /proc/x/out \(.*\); choose another --out$"):
        run_sweep(tiny_config(), out="/proc/x/out", mlflow=False, progress=False)
    with pytest.raises(SetupError, match="--num-cpus"):
        run_sweep(tiny_config(), out="/proc/x/out", num_cpus=0)
