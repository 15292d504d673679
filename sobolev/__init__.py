"""The mathematics of Cocola & Hand (2020), "Global Convergence of Sobolev Training for
Overparameterized Neural Networks", in PyTorch: pure functions of tensors."""

from .network import LossGrad, Output, Params, forward, init_params, loss_and_grad
from .ntk import gram, gram_infinite, lambda_star
from .problem import Problem, alpha_beta, effective_data, make_problem, max_separation
from .train import CURVE_FIELDS, SUMMARY_FIELDS, TrainConfig, TrainResult, train, train_config_fields

__version__ = "0.1.0"

__all__ = [
    "Problem", "Params", "make_problem", "init_params", "forward", "loss_and_grad", "gram", "gram_infinite",
    "lambda_star", "train", "TrainConfig", "TrainResult", "LossGrad", "Output", "alpha_beta", "effective_data",
    "max_separation", "train_config_fields", "SUMMARY_FIELDS", "CURVE_FIELDS",
]
