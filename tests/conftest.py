import importlib
import os

import pytest
import torch

# Keep CPU tests deterministic and light on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# tests/interpret needs TRITON_INTERPRET=1 before triton is imported: it runs in a pytest process of
# its own (scripts/test.sh), and a run without the variable leaves it out.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpret"]

# scripts/test.sh (and so CI) installs the optional frameworks and sets this: there a missing
# or broken one must fail the run, not skip its tests.
REQUIRE_OPTIONAL = os.environ.get("STAA_REQUIRE_OPTIONAL") == "1"


def _optional(module: str):
    """(available, reason): import ``module``; under STAA_REQUIRE_OPTIONAL=1 any failure raises."""
    if REQUIRE_OPTIONAL:
        importlib.import_module(module)
        return True, ""
    try:
        importlib.import_module(module)
    except Exception as e:  # outside CI a broken install skips, and the reason says why
        return False, f"{module} cannot be imported ({type(e).__name__}: {e})"
    return True, ""


_sj_ok, _sj_why = _optional("spikingjelly.activation_based.neuron")
_snn_ok, _snn_why = _optional("snntorch")
requires_spikingjelly = pytest.mark.skipif(not _sj_ok, reason=_sj_why or "spikingjelly is not installed")
requires_snntorch = pytest.mark.skipif(not _snn_ok, reason=_snn_why or "snntorch is not installed")

# scripts/mutation_check.py runs the tests with HYPOTHESIS_PROFILE=mutation: the same examples
# every run and no example database, so one mutation's failing example cannot leak into the
# next mutation's run.
from hypothesis import Phase as _Phase  # noqa: E402
from hypothesis import settings as _hsettings  # noqa: E402

# No shrinking there either: a mutation is killed by the first failing example, and shrinking it
# under the Triton interpreter took minutes.
_hsettings.register_profile("mutation", database=None, derandomize=True,
                            phases=(_Phase.explicit, _Phase.reuse, _Phase.generate))
if os.environ.get("HYPOTHESIS_PROFILE"):
    _hsettings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
