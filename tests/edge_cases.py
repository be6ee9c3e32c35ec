"""Inputs that put an IF neuron's V exactly on the threshold and on the surrogate window's edges.

Shared by the torch-route test (tests/test_exact_edges.py) and the Triton-route one (run in
the interpreter tests, tests/interpret/)."""
import torch

# (v_threshold, rectangle width a, v_reset or None for soft reset); every value is dyadic, so
# V = I + H_rest is exact in float64.
EDGE_CASES = [(1.0, 1.0, 0.0), (0.5, 0.25, -0.25), (2.0, 1.5, None)]


def if_edge_input(v_th: float, width: float, v_reset) -> torch.Tensor:
    """``[T=2, B=1, C=6]`` float64: step 0 starts from rest, so V_0 = I_0 + H_rest lands on
    v_th, v_th -+ a/2 (the window's edges), v_th - a/4 and v_th +- a; step 1 adds 0.125."""
    h_rest = 0.0 if v_reset is None else v_reset
    targets = torch.tensor([v_th, v_th - width / 2, v_th + width / 2, v_th - width / 4, v_th + width, v_th - width],
                           dtype=torch.float64)
    return torch.stack([targets - h_rest, torch.full_like(targets, 0.125)]).reshape(2, 1, 6)


# V = v_th fires, the window's lower edge does not, its upper edge does.
EXPECTED_FIRST_STEP = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def upstream_gradient() -> torch.Tensor:
    """dL/dS for the ``[2, 1, 6]`` spikes: distinct per element, so a dropped term shows."""
    return torch.arange(1.0, 13.0, dtype=torch.float64).reshape(2, 1, 6)


def run_if_neuron(x: torch.Tensor, v_th: float, width: float, v_reset, mode: str, backend: str):
    """``(spikes, h_last)`` of an IF neuron (every block off, rectangle of width ``width``) on ``x``
    through ``staa.functional.staa_lif``: one multi-step call, or with ``mode="single"`` step 0 and
    then step 1 from its state."""
    from staa.functional import NeuronConfig, staa_lif
    from staa.reference import STAAParams
    from staa.surrogate import Surrogate

    cfg = NeuronConfig(v_threshold=v_th, v_reset=v_reset, surrogate=Surrogate("rect", width))
    params = STAAParams(None, None, None, None)
    if mode == "multi":
        spikes, h_last, _ = staa_lif(x, params, cfg, backend=backend)
        return spikes, h_last
    s0, h, _ = staa_lif(x[:1], params, cfg, backend=backend)
    s1, h_last, _ = staa_lif(x[1:], params, cfg, h0=h, t0=1, backend=backend)
    return torch.cat([s0, s1]), h_last


def reference_if_neuron(x: torch.Tensor, v_th: float, width: float, v_reset):
    """``(spikes, h_last)`` of the reference on the same IF neuron and input."""
    from staa.reference import STAAParams, staa_lif_reference

    ref, ref_h = staa_lif_reference(x.unsqueeze(-1), STAAParams(None, None, None, None), v_threshold=v_th,
                                    v_reset=v_reset, surrogate_width=width, return_states=True)
    return ref.squeeze(-1), ref_h[-1].squeeze(-1)
