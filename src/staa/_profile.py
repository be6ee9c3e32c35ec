"""``staa.profile``: firing rates, synaptic operations and energy of a spiking network.

One forward of ``model`` on ``example_input`` is observed with module hooks:

* **Spiking layers** (:class:`staa.STAALIF`; spikingjelly neurons, i.e. subclasses of
  ``spikingjelly.activation_based.neuron.BaseNode``, when spikingjelly is already imported;
  any module with a truthy ``is_spiking_neuron`` attribute) get a row with their output
  shape, firing rate per time step and overall, and their own real-valued MACs. Only
  STAALIF has such MACs (its aggregator, see :func:`staa_step_macs`); the membrane update,
  threshold and reset of every neuron are not counted, as is usual for SNN energy estimates.
  A layer's ``step_mode`` attribute (``"m"``: output ``[T, B, ...]``; otherwise one call is
  one time step) tells how its output is split into time steps.
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

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from . import _checks
from ._blocks import is_uninitialized
from ._state import kept_state
from ._text import aligned_rows
from .neuron import STAALIF

Tensor = torch.Tensor

__all__ = ["profile", "ProfileReport", "LayerStats", "staa_step_macs", "is_spiking_layer"]

E_AC = 0.9e-12
E_MAC = 4.6e-12

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


# --------------------------------------------------------------------------- report
@dataclass
class LayerStats:
    """One row of a :class:`ProfileReport`; counts are per single-sample inference over T.

    Attributes:
        name: qualified module name in the model (``""`` for the model itself).
        kind: ``"spiking"`` or ``"synaptic"``.
        type: class name of the module.
        output_shape: output shape of the layer's first call.
        calls: how many times the layer ran in the forward.
        firing_rate: spiking rows: fraction of non-zero outputs over all steps.
        firing_rate_per_step: spiking rows: that fraction for each time step.
        input_binary: synaptic rows: whether every input value was 0 or 1.
        input_nonzero: synaptic rows: fraction of non-zero input values.
        dense_macs: synaptic rows: MACs of the layer as a dense, real-valued layer.
        acs: accumulates (synaptic rows with binary input).
        macs: real-valued multiply-accumulates that are charged as MACs.
        energy_j: ``acs * e_ac + macs * e_mac`` in joules.
    """

    name: str
    kind: str
    type: str
    output_shape: List[int]
    calls: int = 0
    firing_rate: Optional[float] = None
    firing_rate_per_step: Optional[List[float]] = None
    input_binary: Optional[bool] = None
    input_nonzero: Optional[float] = None
    dense_macs: Optional[float] = None
    acs: float = 0.0
    macs: float = 0.0
    energy_j: float = 0.0


@dataclass
class ProfileReport:
    """What :func:`profile` measured. ``str(report)`` is a table.

    Attributes:
        rows: one :class:`LayerStats` per spiking and synaptic layer, in the order they ran.
        batch_size: samples in the observed forward (counts are divided by it).
        T: time steps seen by the spiking layers (``None`` without spiking layers).
        e_ac, e_mac: energy per AC and per MAC in joules.
    """

    rows: List[LayerStats]
    batch_size: int
    T: Optional[int]
    e_ac: float = E_AC
    e_mac: float = E_MAC
    _spikes: float = field(default=0.0, repr=False)
    _neuron_steps: float = field(default=0.0, repr=False)

    @property
    def spiking_rows(self) -> List[LayerStats]:
        return [r for r in self.rows if r.kind == "spiking"]

    @property
    def synaptic_rows(self) -> List[LayerStats]:
        return [r for r in self.rows if r.kind == "synaptic"]

    @property
    def total_acs(self) -> float:
        return sum(r.acs for r in self.rows)

    @property
    def total_macs(self) -> float:
        return sum(r.macs for r in self.rows)

    @property
    def energy_j(self) -> float:
        """Energy of one single-sample inference over T steps, in joules."""
        return self.total_acs * self.e_ac + self.total_macs * self.e_mac

    @property
    def firing_rate(self) -> Optional[float]:
        """Spikes over neuron-steps across all spiking layers."""
        return self._spikes / self._neuron_steps if self._neuron_steps else None

    def to_list(self) -> List[Dict[str, Any]]:
        """The rows as a list of plain dicts."""
        return [asdict(r) for r in self.rows]

    def to_dict(self) -> Dict[str, Any]:
        """Rows, totals and settings as one JSON-serialisable dict."""
        return {
            "batch_size": self.batch_size,
            "T": self.T,
            "e_ac": self.e_ac,
            "e_mac": self.e_mac,
            "rows": self.to_list(),
            "totals": {
                "acs": self.total_acs,
                "macs": self.total_macs,
                "energy_j": self.energy_j,
                "firing_rate": self.firing_rate,
            },
        }

    def to_json(self, path) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    def __str__(self) -> str:
        return format_report(self)


def _si(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}" if x != int(x) else str(int(x))


def _energy(j: float) -> str:
    if j == 0:
        return "0"
    for div, unit in ((1e-3, "mJ"), (1e-6, "uJ"), (1e-9, "nJ")):
        if abs(j) >= div:
            return f"{j / div:.3g} {unit}"
    return f"{j / 1e-12:.3g} pJ"


def _rates(r: LayerStats, limit: int = 8) -> str:
    if r.firing_rate_per_step is None:
        return "-"
    steps = [f"{v:.2f}" for v in r.firing_rate_per_step]
    if len(steps) > limit:
        steps = steps[: limit - 1] + ["..."]
    return " ".join(steps)


def format_report(report: ProfileReport) -> str:
    header = ["layer", "type", "output", "input", "rate", "rate per step", "dense MACs", "ACs", "MACs", "energy"]
    lines = []
    for r in report.rows:
        shape = "x".join(str(s) for s in r.output_shape)
        if r.calls > 1:
            shape += f" ({r.calls} calls)"
        if r.kind == "spiking":
            inp = "-"
            rate = "-" if r.firing_rate is None else f"{r.firing_rate:.3f}"
        else:
            inp = f"spikes {r.input_nonzero:.3f}" if r.input_binary else "real"
            rate = "-"
        lines.append(
            [r.name or "(model)", r.type, shape, inp, rate, _rates(r), _si(r.dense_macs), _si(r.acs), _si(r.macs),
             _energy(r.energy_j)]
        )
    rate = report.firing_rate
    lines.append(
        ["total", "", "", "", "-" if rate is None else f"{rate:.3f}", "", "", _si(report.total_acs),
         _si(report.total_macs), _energy(report.energy_j)]
    )
    head, *body, total = aligned_rows([header, *lines], right={4, 6, 7, 8, 9})
    rule = "-" * max(len(line) for line in (head, *body, total))
    out = [head, rule, *body, rule, total]
    T = "-" if report.T is None else report.T
    out.append(
        f"per single-sample inference over T={T} (batch of {report.batch_size} observed); input: 'spikes f' = "
        f"binary with non-zero fraction f (ACs), 'real' (MACs); energy = ACs x {report.e_ac * 1e12:g} pJ "
        f"+ MACs x {report.e_mac * 1e12:g} pJ"
    )
    return "\n".join(out)


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
    e_ac: float = E_AC,
    e_mac: float = E_MAC,
    batch_size: Optional[int] = None,
) -> ProfileReport:
    """Firing rates, ACs, MACs and energy of ``model`` on ``example_input``.

    Runs ``model(example_input)`` once in eval mode under ``no_grad`` (so TSRD drops
    nothing) with every spiking layer reset first, and reports one row per spiking layer
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
    recorder = _Recorder()
    handles = []
    try:
        with kept_state(model, tensors=args + tuple(kwargs.values())):
            for name, module, kind in _collect(model):
                hook = recorder.spiking_hook(name) if kind == "spiking" else recorder.synaptic_hook(name)
                handles.append(module.register_forward_hook(hook))
            _reset_spiking_state(model)
            model.eval()
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    if batch_size is None:
        batch_size = _infer_batch_size(recorder.first_spiking_input, args + tuple(kwargs.values()))
    rows, spikes, neuron_steps, T = _layer_rows(recorder.order, batch_size, e_ac, e_mac)
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
            if isinstance(module, STAALIF) and x is not None:
                row.macs += _staalif_call_macs(module, x)
            if out is None:
                return
            if row.output_shape is None:
                row.output_shape = list(out.shape)
            if _is_multi_step(module):
                flat = out.reshape(out.shape[0], -1)
                counts = torch.count_nonzero(flat, dim=1).tolist()
                per = flat.shape[1]
                start = 0
            else:
                counts = [int(torch.count_nonzero(out))]
                per = out.numel()
                start = row.calls
            for i, c in enumerate(counts):
                t = start + i
                while len(row.spikes_per_step) <= t:
                    row.spikes_per_step.append(0.0)
                    row.elems_per_step.append(0.0)
                row.spikes_per_step[t] += c
                row.elems_per_step[t] += per
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
