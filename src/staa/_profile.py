"""``staa.profile``: firing rates, synaptic operations and energy of a spiking network.

One forward of ``model`` on ``example_input`` is observed with module hooks:

* **Spiking layers** (:class:`staa.STAALIF`; the neurons of every framework convert has an
  adapter for, spikingjelly's and snnTorch's, when that framework is already imported, see
  :mod:`staa._convert`; any module with a truthy ``is_spiking_neuron`` attribute) get a row with their output
  shape, firing rate per time step and overall, and their own real-valued MACs. Only
  STAALIF has such MACs (its aggregator, see :func:`staa_step_macs`); the membrane update,
  threshold and reset of every neuron are not counted, as is usual for SNN energy estimates.
  The adapter (else a layer's ``step_mode`` attribute: ``"m"``, output ``[T, B, ...]``;
  otherwise one call is one time step) tells how its output is split into time steps.
* **Synaptic layers** (every ``nn.Conv1d/2d/3d`` and ``nn.Linear``, including subclasses
  and layers inside wrappers such as spikingjelly's ``SeqToANNContainer``) get a row with
  their dense MACs, ``output elements x in_channels / groups x kernel size`` (``x
  in_features`` for Linear; biases are not counted). When every input value is 0 or 1 the
  layer is event-driven: it costs ACs = dense MACs x the input's non-zero fraction (for a
  Linear exactly non-zero inputs x out_features) and no MACs; otherwise it costs its dense
  MACs. Convolutions and Linears inside a spiking layer belong to that layer's own count.

All counts are per single-sample inference summed over the T time steps: the totals of
the observed forward divided by the batch size. Energy is ``ACs x e_ac + MACs x e_mac``
with the 45 nm figures the STAA-SNN paper uses (0.9 pJ per AC, 4.6 pJ per MAC).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from . import _checks
from ._blocks import is_uninitialized
from ._profile_report import E_AC, E_MAC, LayerStats, ProfileReport, format_report  # noqa: F401
from ._state import kept_state
from .neuron import STAALIF

Tensor = torch.Tensor

__all__ = ["profile", "ProfileReport", "LayerStats", "staa_step_macs", "is_spiking_layer"]

_SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Attributes every nn.Module has; everything else in a module's __dict__ is its own state.
# LayerNorm over Ch features: mean, variance (square-accumulate), normalisation and the
# affine transform, one operation per feature each.
LAYER_NORM_OPS_PER_FEATURE = 4


def staa_step_macs(
    channels: int,
    positions: int,
    hidden: int,
    *,
    pe: bool = True,
    gc_x: bool = True,
    gc_h: bool = True,
    sa: bool = True,
) -> int:
    """Real-valued MACs of one STAA-LIF aggregator step for one sample.

    With C = ``channels``, P = ``positions`` (H*W, 1 for ``[T, B, C]`` inputs) and
    Ch = ``hidden``, every multiply, add or multiply-accumulate on real values counts as
    one MAC; biases and the nonlinearities (sigmoid, ReLU) are not counted:

    * PE add ``X = I + PE``: C*P.
    * each GC block (``gc_x`` on X, ``gc_h`` on H): key logits C*P, attention-weighted
      context C*P, query C*Ch, LayerNorm 4*Ch, value Ch*C, broadcast residual add C*P.
    * SA: mean pooling C*P, alpha scaling C, fc1 C*Ch, fc2 Ch*C, gating V = U*gate C*P.

    ``U = GC1(X) + GC2(H)`` takes the place of the LIF charge and, like the membrane
    update, threshold and reset, is not counted. A step that TSRD drops (training only)
    runs none of this and costs 0.
    """
    C, P, Ch = int(channels), int(positions), int(hidden)
    gc = 3 * C * P + 2 * C * Ch + LAYER_NORM_OPS_PER_FEATURE * Ch
    total = 0
    if pe:
        total += C * P
    if gc_x:
        total += gc
    if gc_h:
        total += gc
    if sa:
        total += 2 * C * P + C + 2 * C * Ch
    return total


def _staalif_call_macs(module: STAALIF, x: Tensor) -> int:
    """MACs of one STAALIF forward on ``x`` (all samples; no step is dropped in eval)."""
    if module.step_mode == "m":
        steps, batch, channels = x.shape[0], x.shape[1], x.shape[2]
        positions = math.prod(x.shape[3:])
    else:
        steps, batch, channels = 1, x.shape[0], x.shape[1]
        positions = math.prod(x.shape[2:])
    per_step = staa_step_macs(
        channels,
        positions,
        module.hidden,
        pe=module.pos is not None,
        gc_x=module.gc_x is not None,
        gc_h=module.gc_h is not None,
        sa=module.sa is not None,
    )
    return per_step * steps * batch


def _staalif_in(module: nn.Module) -> Optional[STAALIF]:
    """The STAALIF that does a spiking layer's work: the layer itself, or the one a converted
    neuron of another framework holds as ``staa`` (snnTorch's converted Leaky)."""
    if isinstance(module, STAALIF):
        return module
    inner = getattr(module, "staa", None)
    return inner if isinstance(inner, STAALIF) else None


def _adapters():
    """The convert adapters of the frameworks now imported (they know each framework's neurons)."""
    from ._convert import ADAPTERS

    return [a for a in ADAPTERS if a.loaded()]


def _adapter_of(module: nn.Module):
    return next((a for a in _adapters() if a.is_neuron(module)), None)


def is_spiking_layer(module: nn.Module) -> bool:
    """Whether :func:`profile` reports ``module`` as a spiking layer (see the module docs)."""
    if isinstance(module, STAALIF) or getattr(module, "is_spiking_neuron", False) is True:
        return True
    return _adapter_of(module) is not None


def _is_multi_step(module: nn.Module) -> bool:
    adapter = None if isinstance(module, STAALIF) else _adapter_of(module)
    if adapter is not None:
        return adapter.step_mode(module) == "m"
    return getattr(module, "step_mode", "s") == "m"


# --------------------------------------------------------------------------- hooks
class _Row:
    def __init__(self, name: str, module: nn.Module, kind: str):
        self.name, self.module, self.kind = name, module, kind
        self.calls = 0
        self.output_shape: Optional[List[int]] = None
        self.spikes_per_step: List[float] = []
        self.elems_per_step: List[float] = []
        self.dense_macs = 0
        self.acs = 0.0
        self.macs = 0
        self.binary = True
        self.in_nonzero = 0
        self.in_numel = 0
        self.nan = 0  # NaN outputs of a spiking layer (not counted as spikes)
        self.multi_step = False


def _first_tensor(obj) -> Optional[Tensor]:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _synaptic_dense_macs(module: nn.Module, x: Tensor, out: Tensor) -> int:
    if isinstance(module, nn.Linear):
        return x.numel() * module.out_features
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return out.numel() * per_output


def _collect(model: nn.Module):
    """(name, module, kind) for every spiking and synaptic layer, each module once,
    skipping synaptic layers inside spiking layers."""
    found, seen = [], set()

    def walk(module, name):
        if id(module) in seen:
            return
        seen.add(id(module))
        if is_spiking_layer(module):
            found.append((name, module, "spiking"))
            return
        if isinstance(module, _SYNAPTIC):
            found.append((name, module, "synaptic"))
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(model, "")
    return found


@torch.no_grad()
def profile(
    model: nn.Module,
    example_input,
    *,
    steps: Optional[int] = None,
    sequence: bool = False,
    e_ac: float = E_AC,
    e_mac: float = E_MAC,
    batch_size: Optional[int] = None,
) -> ProfileReport:
    """Firing rates, ACs, MACs and energy of ``model`` on ``example_input``.

    Runs ``model(example_input)`` once (or once per time step, see ``steps`` and
    ``sequence``) in eval mode under ``no_grad`` (so TSRD drops nothing) with every spiking
    layer reset first by its framework's own reset (STAALIF's ``reset()``, spikingjelly's
    ``reset_net``, snnTorch's ``reset_mem()``), and reports one row per spiking layer
    and per synaptic layer (see :mod:`staa._profile` for what counts as which and how
    operations are counted). Afterwards the model is left exactly as it was: training
    flags, buffers, neuron state (STAALIF's membrane, spikingjelly memories, any other
    attribute a forward reassigns) and the torch RNG state (CPU and the CUDA devices in
    use) are restored.

    Args:
        model: the network. It must be fully sized: run one forward first if it has lazy
            parameters (``STAALIF(channels=None)``).
        example_input: the input tensor (e.g. ``[T, B, C, H, W]`` or ``[B, C, H, W]``,
            whatever the model takes), a tuple of positional arguments or a dict of keyword
            arguments (as for ``staa.convert``). Empty tensors are rejected.
        steps: for a single-step model (one call is one time step: spikingjelly's default
            mode, every snnTorch model): run it ``steps`` times on ``example_input`` (one time
            step, e.g. ``[B, C, H, W]``), as a multi-step model runs T steps. Without it a
            single-step model is profiled over T = 1 with a warning saying how to pass T.
        sequence: ``example_input`` is a ``[T, ...]`` sequence of per-step inputs (every
            tensor in it has the time steps first): the model runs once on each ``x[t]``.
            With ``steps`` as well, the two must agree.
        e_ac, e_mac: energy per accumulate and per multiply-accumulate, in joules
            (defaults: 0.9 pJ and 4.6 pJ, 45 nm, as in the STAA-SNN paper, sec. 4.5).
        batch_size: samples in ``example_input``; by default taken from the first
            spiking layer's input (dim 1 in multi-step mode, dim 0 in single-step mode),
            or from dim 0 of the first input tensor when the model has no spiking layer.

    Returns:
        A :class:`ProfileReport`; all counts are per single-sample inference summed over T.

    >>> report = staa.profile(net, torch.rand(4, 8, 3, 32, 32))
    >>> print(report)                  # a table
    >>> report.energy_j, report.to_list()
    """
    _check_model(model)
    batch_size = _checks.count(batch_size, "profile: batch_size", allow_none=True)
    e_ac = _checks.real(e_ac, "profile: e_ac", low=0.0, what="a finite energy in joules >= 0")
    e_mac = _checks.real(e_mac, "profile: e_mac", low=0.0, what="a finite energy in joules >= 0")
    args, kwargs = _split_input(example_input)
    calls = _step_calls(args, kwargs, steps, sequence)
    recorder = _Recorder()
    handles = []
    try:
        with kept_state(model, tensors=args + tuple(kwargs.values())):
            for name, module, kind in _collect(model):
                hook = recorder.spiking_hook(name) if kind == "spiking" else recorder.synaptic_hook(name)
                handles.append(module.register_forward_hook(hook))
            _reset_spiking_state(model)
            model.eval()
            for call_args, call_kwargs in calls:
                model(*call_args, **call_kwargs)
    finally:
        for h in handles:
            h.remove()
    first = calls[0][0] + tuple(calls[0][1].values())
    if batch_size is None:
        batch_size = _infer_batch_size(recorder.first_spiking_input, first)
    rows, spikes, neuron_steps, T = _layer_rows(recorder.order, batch_size, e_ac, e_mac)
    _warn(recorder.order, T, steps is None and not sequence)
    return ProfileReport(
        rows=rows, batch_size=batch_size, T=T, e_ac=e_ac, e_mac=e_mac, _spikes=spikes, _neuron_steps=neuron_steps
    )


# The phases of profile, in order: check the model and split the input, record (hooks during one forward), infer the batch size,
# collect the rows.
def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile expects an nn.Module, got {type(model).__name__}")
    if any(is_uninitialized(p) for p in model.parameters()):
        raise ValueError(
            "the model has uninitialized (lazy) parameters, e.g. STAALIF(channels=None); "
            "run one forward on an input of the right shape before profiling it"
        )


def _split_input(example_input):
    """``(args, kwargs)`` for ``model(*args, **kwargs)``, or an error naming what is wrong."""
    if isinstance(example_input, dict):  # keyword inputs, as staa.convert takes them
        args, kwargs = (), dict(example_input)
    elif isinstance(example_input, (tuple, list)):
        args, kwargs = tuple(example_input), {}
    elif isinstance(example_input, torch.Tensor):
        args, kwargs = (example_input,), {}
    else:
        raise TypeError(
            f"profile: example_input must be a tensor, a tuple/list of positional inputs or a dict of keyword "
            f"inputs, got {type(example_input).__name__}"
        )
    empty = [list(v.shape) for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.numel() == 0]
    if empty:
        raise ValueError(
            f"profile: example_input has an empty tensor (shape {empty[0]}); rates and counts per sample need at "
            f"least one sample with at least one element"
        )
    return args, kwargs


def _step_calls(args, kwargs, steps, sequence):
    """The ``(args, kwargs)`` of each model call: one call, ``steps`` calls on the same input, or one
    call per step of a ``[T, ...]`` sequence."""
    steps = _checks.count(steps, "profile: steps", allow_none=True)
    if not isinstance(sequence, bool):
        raise TypeError(f"profile: sequence must be True or False, got {sequence!r}")
    if not sequence:
        return [(args, kwargs)] * (steps or 1)
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    lengths = sorted({t.shape[0] for t in tensors if t.dim() > 0})
    if len(lengths) != 1:
        raise ValueError(
            f"profile: sequence=True takes inputs with the time steps first ([T, ...]); got tensors of shapes "
            f"{[list(t.shape) for t in tensors]}"
        )
    T = lengths[0]
    if steps is not None and steps != T:
        raise ValueError(f"profile: steps={steps} but the sequence has T={T} steps (dim 0); pass one of them")

    def at(v, t):
        return v[t] if isinstance(v, torch.Tensor) and v.dim() > 0 else v

    return [(tuple(at(v, t) for v in args), {k: at(v, t) for k, v in kwargs.items()}) for t in range(T)]


def _warn(order, T, no_steps: bool) -> None:
    """Warnings on what the counts cannot show: NaN outputs of spiking layers, a single-step model
    profiled over one step."""
    nan = [(r.name or "(model)", r.nan) for r in order if r.kind == "spiking" and r.nan]
    if nan:
        where = ", ".join(f"'{n}' ({k})" for n, k in nan)
        warnings.warn(
            f"profile: spiking layer(s) {where} output NaN values; NaN is not counted as a spike (nor in the "
            f"neuron count), so the rates cover the other outputs only. The model or its input produce NaN",
            stacklevel=3,
        )
    spiking = [r for r in order if r.kind == "spiking"]
    if no_steps and T == 1 and spiking and not any(r.multi_step for r in spiking):
        warnings.warn(
            "profile: the model's spiking layers run one time step per call (single-step), so this report covers "
            "T=1 step; pass steps=T to run T steps on example_input (one time step), or sequence=True with a "
            "[T, ...] input (profile resets the model first with its framework's own reset)",
            stacklevel=3,
        )


class _Recorder:
    """Forward hooks that count spikes and operations into one :class:`_Row` per layer."""

    def __init__(self):
        self.rows: Dict[int, _Row] = {}
        self.order: List[_Row] = []
        self.first_spiking_input: List[Any] = []  # (shape, multi-step) of the first spiking layer's input

    def row_of(self, name, module, kind) -> _Row:
        row = self.rows.get(id(module))
        if row is None:
            row = self.rows[id(module)] = _Row(name, module, kind)
            self.order.append(row)
        return row

    def spiking_hook(self, name):
        def hook(module, inputs, output):
            row = self.row_of(name, module, "spiking")
            x, out = _first_tensor(inputs), _first_tensor(output)
            if x is not None and not self.first_spiking_input:
                self.first_spiking_input.append((x.shape, _is_multi_step(module)))
            staa = _staalif_in(module)
            if staa is not None and x is not None:
                row.macs += _staalif_call_macs(staa, x)
            if out is None:
                return
            if row.output_shape is None:
                row.output_shape = list(out.shape)
            row.multi_step = _is_multi_step(module)
            flat = out.reshape(out.shape[0], -1) if row.multi_step else out.reshape(1, -1)
            nan = torch.isnan(flat) if flat.is_floating_point() else torch.zeros_like(flat, dtype=torch.bool)
            row.nan += int(nan.sum())
            counts = torch.count_nonzero(flat.masked_fill(nan, 0), dim=1).tolist()
            per_step = (flat.shape[1] - nan.sum(dim=1)).tolist()
            start = 0 if row.multi_step else row.calls
            for i, c in enumerate(counts):
                t = start + i
                while len(row.spikes_per_step) <= t:
                    row.spikes_per_step.append(0.0)
                    row.elems_per_step.append(0.0)
                row.spikes_per_step[t] += c
                row.elems_per_step[t] += per_step[i]
            row.calls += 1

        return hook

    def synaptic_hook(self, name):
        def hook(module, inputs, output):
            row = self.row_of(name, module, "synaptic")
            x, out = _first_tensor(inputs), _first_tensor(output)
            if row.output_shape is None:
                row.output_shape = list(out.shape)
            dense = _synaptic_dense_macs(module, x, out)
            nonzero = int(torch.count_nonzero(x))
            binary = bool(((x == 0) | (x == 1)).all())
            row.dense_macs += dense
            if binary:
                row.acs += dense * nonzero / x.numel() if x.numel() else 0.0
            else:
                row.macs += dense
            row.binary = row.binary and binary
            row.in_nonzero += nonzero
            row.in_numel += x.numel()
            row.calls += 1

        return hook


def _infer_batch_size(first_spiking_input, inputs) -> int:
    """From the first spiking layer's input (dim 1 multi-step, dim 0 single-step), else dim 0 of the
    first input tensor."""
    if first_spiking_input:
        shape, multi = first_spiking_input[0]
        return int(shape[1] if multi else shape[0])
    first = _first_tensor(inputs)
    if first is None or first.dim() == 0:
        raise ValueError("cannot infer the batch size from example_input; pass batch_size=...")
    return int(first.shape[0])


def _layer_rows(order: List[_Row], batch_size: int, e_ac: float, e_mac: float):
    """One :class:`LayerStats` per recorded layer, per sample; also the spike and neuron-step totals
    and T. Returns ``(rows, spikes, neuron_steps, T)``."""

    def per_sample(v):
        q = v / batch_size
        return int(q) if isinstance(v, int) and v % batch_size == 0 else float(q)

    out_rows, spikes, neuron_steps, T = [], 0.0, 0.0, None
    for r in order:
        stats = LayerStats(
            name=r.name, kind=r.kind, type=type(r.module).__name__, output_shape=r.output_shape or [], calls=r.calls
        )
        if r.kind == "spiking":
            stats.firing_rate_per_step = [s / e if e else 0.0 for s, e in zip(r.spikes_per_step, r.elems_per_step)]
            total_elems = sum(r.elems_per_step)
            stats.firing_rate = sum(r.spikes_per_step) / total_elems if total_elems else 0.0
            stats.macs = per_sample(r.macs)
            spikes += sum(r.spikes_per_step)
            neuron_steps += total_elems
            T = max(T or 0, len(r.spikes_per_step))
        else:
            stats.input_binary = r.binary
            stats.input_nonzero = r.in_nonzero / r.in_numel if r.in_numel else 0.0
            stats.dense_macs = per_sample(r.dense_macs)
            stats.acs = per_sample(r.acs) if r.acs else 0
            stats.macs = per_sample(r.macs)
        stats.energy_j = stats.acs * e_ac + stats.macs * e_mac
        out_rows.append(stats)
    return out_rows, spikes, neuron_steps, T


def _reset_spiking_state(model: nn.Module) -> None:
    """Start every neuron from rest with its framework's own reset (the previous state is restored
    afterwards)."""
    for adapter in _adapters():
        adapter.reset(model)
    for m in model.modules():
        if isinstance(m, STAALIF) or (is_spiking_layer(m) and callable(getattr(m, "reset", None))):
            m.reset()
