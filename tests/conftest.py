import os

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Tolerances per dtype, in one place.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


@pytest.fixture(params=[False, True], ids=["nobias", "bias"])
def bias(request):
    return request.param
