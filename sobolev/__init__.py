"""The mathematics of Cocola & Hand (2020), "Global Convergence of Sobolev Training for
Overparameterized Neural Networks", in PyTorch: pure functions of tensors.

The names below are imported on first use (PEP 562), so that ``sobolev.settings`` and
``sobolev.record`` (the settings and the result fields, which the results tables derive from)
load without torch. ``train`` is the function of ``sobolev.loop``; no submodule shares its name."""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LossGrad": "network", "Output": "network", "Params": "network", "forward": "network",
    "init_params": "network", "loss_and_grad": "network",
    "gram": "ntk", "gram_infinite": "ntk", "lambda_star": "ntk",
    "Problem": "problem", "alpha_beta": "problem", "effective_data": "problem", "make_problem": "problem",
    "max_separation": "problem",
    "CURVE_FIELDS": "record", "SUMMARY_FIELDS": "record", "TrainResult": "record",
    "TrainConfig": "settings", "train_config_fields": "settings",
    "train": "loop",
}
__all__ = [
    "Problem", "Params", "make_problem", "init_params", "forward", "loss_and_grad", "gram", "gram_infinite",
    "lambda_star", "train", "TrainConfig", "TrainResult", "LossGrad", "Output", "alpha_beta", "effective_data",
    "max_separation", "train_config_fields", "SUMMARY_FIELDS", "CURVE_FIELDS",
]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sobolev' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
