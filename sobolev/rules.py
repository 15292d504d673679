"""Which activation-pattern rule runs: the one place where the rule of a (mode, device) is chosen.

``sobolev.patterns`` holds each mode's rules, the preferred first; a faster route registers
itself there on import. The numba route of the CPU is one such module: without the import
below (and sobolev/fused.py), the eager rules run on every device.
"""

from __future__ import annotations

import torch

from . import fused  # noqa: F401 - registers FusedReluPatterns, the CPU's numba route of relu
from .patterns import PATTERN_RULES, PatternRule


def pattern_rule(mode: str, device: torch.device | str) -> type[PatternRule]:
    """The rule that runs ``mode`` on ``device``.

    Args:
        mode: a value of ``sobolev.settings.Mode``.
        device: where the weights live.

    Returns:
        The first of ``PATTERN_RULES[mode]`` available on ``device`` (the eager rule last, always
        available).
    """
    device = torch.device(device)
    return next(rule for rule in PATTERN_RULES[mode] if rule.available(device))
