import os

import pytest
import torch

# Keep CPU tests deterministic and light on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _spikingjelly_available() -> bool:
    try:
        import spikingjelly.activation_based.neuron  # noqa: F401
    except Exception:
        return False
    return True


requires_spikingjelly = pytest.mark.skipif(not _spikingjelly_available(), reason="spikingjelly is not installed")
