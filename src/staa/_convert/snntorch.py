"""The snnTorch adapter: ``snntorch.Leaky`` neurons become STAA-LIF; the other snnTorch neurons are
recognised (for convert's report and for profile) and left alone.

All knowledge of snnTorch lives here. Nothing in this module imports snnTorch: the classes
are looked up in ``sys.modules``, so a model that holds snnTorch neurons (and has therefore
imported snnTorch) is recognised, and ``import staa`` never imports it.

The replacement, :class:`STAALeaky`, is a subclass of ``snntorch.Leaky`` built on first use.
snnTorch finds its neurons by type and through a class-level registry
(``SpikingNeuron.instances``): ``utils.reset(net)`` checks that a direct child of ``net`` is a
``Leaky`` and then assigns ``.mem`` of every registered ``Leaky``; ``Leaky.detach_hidden``
calls ``.mem.detach_()``. A ``STAALeaky`` is registered there and its ``mem`` is the membrane
state of the :class:`staa.STAALIF` it holds (single-step mode, attribute ``staa``).

snnTorch 1.0's ``Leaky`` with ``beta=1`` and ``reset_delay=True`` updates (reset from the
previous step, detached)::

    mem_t = mem_{t-1} + x_t - threshold * [mem_{t-1} > threshold]      (subtract)
    spk_t = [mem_t > threshold]

which is STAA-LIF with every block off, soft reset and ``detach_reset=True``, with
``H_t = mem_t - threshold * spk_t``: snnTorch returns ``mem_t`` (before the reset), STAALIF
keeps ``H_t`` (after it). ``STAALeaky`` returns and accepts the state after the reset.
"""
from __future__ import annotations

import functools
import sys
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..neuron import STAALIF
from ..reference import compute_dtype
from ._adapter import Adapter, NeuronKind
from ._report import display

_LEAKY = "snntorch.Leaky"
_RESETS = ("subtract", "zero", "none")  # SpikingNeuron.reset_dict's order
# snnTorch surrogate factory -> (STAALIF surrogate kind, name of the closure variable holding its parameter)
_SURROGATES = {"atan": ("atan", "alpha"), "fast_sigmoid": ("fast_sigmoid", "slope"), "sigmoid": ("sigmoid", "slope")}
#: The pickle home of the replacement class (``staa._snntorch.STAALeaky``), kept from before convert was a package.
HOME = "staa._snntorch"


# ---------------------------------------------------------------------------------- snnTorch lookup
def _neuron_base() -> Optional[type]:
    module = sys.modules.get("snntorch._neurons.neurons")
    cls = getattr(module, "SpikingNeuron", None)
    return cls if isinstance(cls, type) else None


def _leaky() -> Optional[type]:
    module = sys.modules.get("snntorch._neurons.leaky")
    cls = getattr(module, "Leaky", None)
    return cls if isinstance(cls, type) else None


# ---------------------------------------------------------------------------------- the replacement
class _STAALeakyBody:
    """A ``snntorch.Leaky`` whose update is STAA-LIF, computed by the ``STAALIF`` in ``self.staa``.

    ``mem`` is the membrane state after the reset (what the next step starts from).
    Assigning it (``utils.reset``, ``reset_mem()``, ``init_leaky()``) starts a new sequence
    from the assigned value (an empty tensor means rest): the step counter goes back to 0.
    ``mem.detach_()`` (``Leaky.detach_hidden``) cuts the graph and keeps the step counter.
    A ``mem`` passed to ``forward`` continues the sequence from that state.
    """

    def __init__(self, staa: STAALIF, *, init_hidden: bool = False, output: bool = False,
                 reset_mechanism: str = "subtract", reset_delay: bool = True):
        if not isinstance(staa, STAALIF) or staa.step_mode != "s":
            raise TypeError("STAALeaky needs a single-step STAALIF (step_mode='s')")
        # Leaky.__init__ registers the instance in snnTorch's registry and sets its flags;
        # the buffers it would register (beta, threshold, ...) are skipped below.
        super().__init__(beta=1.0, threshold=staa.v_threshold, init_hidden=init_hidden,
                         reset_mechanism=reset_mechanism, output=output, reset_delay=reset_delay)
        self.spike_grad = None  # the surrogate is STAALIF's (snnTorch's closures do not pickle)
        self.staa = staa

    # Leaky.__init__ hooks: STAALIF holds every setting, so no snnTorch buffers are made and
    # the state dict holds the STAA parameters only (under "<name>.staa.").
    def _init_mem(self):
        self._empty = torch.zeros(0)

    def _lif_register_buffer(self, beta, learn_beta):
        pass

    def _snn_register_buffer(self, threshold, learn_threshold, reset_mechanism, graded_spikes_factor,
                             learn_graded_spikes_factor):
        self.__dict__["_reset_value"] = _RESETS.index(reset_mechanism)

    @property
    def reset_mechanism_val(self):
        return torch.as_tensor(self.__dict__["_reset_value"])

    @property
    def reset_mechanism(self) -> str:
        return self._reset_mechanism

    @reset_mechanism.setter
    def reset_mechanism(self, value):
        raise AttributeError("the reset mechanism of a converted Leaky is fixed; convert the model again")

    @property
    def threshold(self) -> torch.Tensor:
        return torch.as_tensor(self.staa.v_threshold)

    @property
    def mem(self) -> torch.Tensor:
        h = self.staa.v
        return self._empty if h is None else h

    @mem.setter
    def mem(self, value):
        self.staa.reset()
        if value is not None and value.numel() > 0:
            self.staa._h = _state_tensor(value)

    def __setstate__(self, state):
        super().__setstate__(state)
        _neuron_base().instances.append(self)  # unpickled or deep-copied modules join the registry too

    def extra_repr(self) -> str:
        return (f"init_hidden={self.init_hidden}, output={self.output}, "
                f"reset_mechanism={self.reset_mechanism!r}")

    def forward(self, input_, mem=None):
        if mem is not None and self.init_hidden:
            raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
        if not isinstance(input_, torch.Tensor) or input_.dim() not in (2, 4):
            got = f"shape {list(input_.shape)}" if isinstance(input_, torch.Tensor) else type(input_).__name__
            raise ValueError(
                f"a converted snnTorch Leaky (STAA-LIF) takes one time step of shape [B, C, H, W] or [B, C], "
                f"got {got}; leave this neuron out of the conversion (exclude=...)"
            )
        staa = self.staa
        if mem is not None and mem is not staa.v:
            if mem.numel() == 0 or mem.shape != input_.shape:
                staa.reset()  # snnTorch starts from zeros when mem does not fit the input
            else:
                staa._h = mem.to(compute_dtype(input_.dtype))  # continue from the given state
        h = staa.v
        if h is not None and h.shape != input_.shape:
            staa.reset()  # as snnTorch: a new batch shape starts a new sequence
        if staa.T is not None and not torch.compiler.is_compiling() and staa.t >= staa.T:
            raise ValueError(
                f"time step {staa.t + 1} of a sequence, but this converted Leaky was built for T={staa.T} "
                f"steps (the length of its position encoding); call snntorch.utils.reset(net) (or "
                f"init_leaky() / reset_mem()) between sequences, or convert with T=<the longest sequence>"
            )
        spk = staa(input_)
        staa._h = _state_tensor(staa.v)
        if self.output:
            return spk, staa.v
        if self.init_hidden:
            return spk
        return spk, staa.v


def _state_tensor(h: torch.Tensor) -> torch.Tensor:
    # snnTorch detaches the state in place (mem.detach_()), which a view does not allow.
    return h.clone() if h._is_view() else h


@functools.lru_cache(maxsize=None)
def leaky_class() -> type:
    """The ``snntorch.Leaky`` subclass that runs STAA-LIF (built once snnTorch is imported): the
    methods of :class:`_STAALeakyBody` in front of ``Leaky``'s, at home in ``staa._snntorch``."""
    Leaky = _leaky()
    if Leaky is None or _neuron_base() is None:
        raise ImportError("staa._snntorch.STAALeaky needs snnTorch: import snntorch first")
    doc = _STAALeakyBody.__doc__
    return type("STAALeaky", (_STAALeakyBody, Leaky), {"__module__": HOME, "__qualname__": "STAALeaky", "__doc__": doc})


# ---------------------------------------------------------------------------------- settings
def _float(value, what: str, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"staa.convert: snnTorch neuron '{display(name)}' has a per-neuron {what} of shape "
                f"{list(value.shape)}; STAALIF takes one scalar {what}: set a float before converting or exclude "
                f"this neuron"
            )
        value = value.item()
    return float(value)


def _surrogate(node: nn.Module) -> Tuple[dict, Optional[str]]:
    """(STAALIF surrogate settings, dropped-setting text or None) for a Leaky's ``spike_grad``."""
    default = {"surrogate": "atan", "surrogate_width": None, "surrogate_alpha": 2.0}
    if getattr(node, "surrogate_disable", False):
        return default, "surrogate_disable=True (now atan, alpha 2)"
    fn = getattr(node, "spike_grad", None)
    module = sys.modules.get("snntorch.surrogate")
    code = getattr(fn, "__code__", None)
    for factory_name, (kind, var) in _SURROGATES.items():
        factory = getattr(module, factory_name, None)
        if factory is None or code is None:
            continue
        if code is factory().__code__ and var in code.co_freevars and fn.__closure__ is not None:
            param = fn.__closure__[code.co_freevars.index(var)].cell_contents
            try:
                param = float(param)
            except (TypeError, ValueError):
                break
            if param > 0 and param != float("inf"):
                return {"surrogate": kind, "surrogate_width": None, "surrogate_alpha": param}, None
            break
    label = getattr(fn, "__qualname__", None) or type(fn).__name__
    return default, f"spike_grad={label} (now atan, alpha 2)"


def _dropped(node: nn.Module, settings: dict) -> List[str]:
    """What STAALIF does not keep of a Leaky (besides its surrogate)."""
    dropped = []
    beta = node.beta
    if isinstance(beta, nn.Parameter):
        dropped.append(f"learnable beta (was {_fmt_tensor(beta)})")
    else:
        dropped.append(f"beta={_fmt_tensor(beta)}")
    if isinstance(node.threshold, nn.Parameter):
        dropped.append(f"learn_threshold (threshold fixed at {settings['v_threshold']:g})")
    if getattr(node, "inhibition", False):
        dropped.append("inhibition=True")
    if getattr(node, "state_quant", False):
        dropped.append("state_quant")
    g = getattr(node, "graded_spikes_factor", None)
    if isinstance(g, nn.Parameter) or (isinstance(g, torch.Tensor) and not bool((g == 1).all())):
        dropped.append(f"graded spikes (factor {_fmt_tensor(g)})")
    return dropped


def _fmt_tensor(t) -> str:
    if isinstance(t, torch.Tensor):
        if t.numel() == 1:
            return f"{t.item():g}"
        return f"per-neuron, shape {list(t.shape)}"
    return f"{float(t):g}"


# ---------------------------------------------------------------------------------- state
class _KeptNeuronState:
    """Puts back the buffers and attributes of the snnTorch neurons in a model after the probe."""

    def __init__(self, model: nn.Module):
        base = _neuron_base()
        self.saved = [(m, dict(m._buffers), dict(m.__dict__)) for m in model.modules()
                      if base is not None and isinstance(m, base) and not isinstance(m, leaky_class())]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for m, buffers, attrs in self.saved:
            m._buffers.clear()
            m._buffers.update(buffers)
            for key in [k for k in m.__dict__ if k not in attrs]:
                del m.__dict__[key]
            m.__dict__.update({k: v for k, v in attrs.items() if k != "_buffers"})
        return False


def _unregister(old: nn.Module) -> None:
    """Drop a replaced neuron from snnTorch's registry (the registry would keep it and its state alive)."""
    for owner in {id(c): c for c in type(old).__mro__ if "instances" in c.__dict__}.values():
        registry = owner.__dict__["instances"]
        if isinstance(registry, list):
            registry[:] = [m for m in registry if m is not old]


# ---------------------------------------------------------------------------------- the adapter
class SnnTorchAdapter(Adapter):
    """snnTorch's ``Leaky`` becomes a :class:`STAALeaky` (a ``Leaky`` holding a single-step STAALIF);
    Synaptic, RLeaky, Alpha, Lapicque and the other snnTorch neurons are recognised and left alone."""

    name = "snnTorch"
    noun = "snnTorch neuron"
    plural = "snnTorch neurons"
    example_hint = " (one time step, e.g. [B, C, H, W])"
    flat_input = "[B, C]"
    not_options = ("channels", "device", "dtype", "step_mode", "store_v_seq")
    not_options_why = "for snnTorch neurons (single-step, sized from the model)"

    def loaded(self) -> bool:
        return "snntorch" in sys.modules and _neuron_base() is not None

    def is_neuron(self, module: nn.Module) -> bool:
        base = _neuron_base()
        return base is not None and isinstance(module, base)

    def convertible(self, module: nn.Module):
        Leaky = _leaky()
        if not self.is_neuron(module) or isinstance(module, leaky_class()):
            return None
        if type(module) is Leaky:
            return NeuronKind(_LEAKY, "leaky", "s")
        return f"{'subclass of Leaky' if isinstance(module, Leaky) else 'not a Leaky'}: a different neuron model"

    def missing_T(self, name: str) -> str:
        return (f"staa.convert: snnTorch neuron '{display(name)}' runs one time step per call, so STAALIF cannot "
                f"learn the sequence length from its input; pass T=<time steps per sequence> (the position "
                f"encoding has one row per step), or pe=False")

    def settings(self, node: nn.Module, kind: NeuronKind, name: str, options: dict):
        reset = _RESETS[int(node.reset_mechanism_val)]
        if reset == "none":
            return None, [], "reset_mechanism='none' (pure integration): STAALIF always resets"
        settings = {
            "v_threshold": _float(node.threshold, "threshold", name),
            "v_reset": None if reset == "subtract" else 0.0,
            "detach_reset": True,  # snnTorch detaches the reset term
            "step_mode": "s",
            "store_v_seq": False,
        }
        sg, dropped_sg = _surrogate(node)
        settings.update(sg)
        dropped = _dropped(node, settings)
        if dropped_sg is not None:
            dropped.append(dropped_sg)
        return settings, dropped, None

    def replacement(self, staalif: nn.Module, node: nn.Module) -> nn.Module:
        return leaky_class()(staalif, init_hidden=bool(node.init_hidden), output=bool(node.output),
                             reset_mechanism=_RESETS[int(node.reset_mechanism_val)],
                             reset_delay=bool(getattr(node, "reset_delay", True)))

    def step_mode(self, module: nn.Module) -> str:
        return "s"  # every snnTorch neuron takes one time step per call

    def reset(self, model: nn.Module) -> None:
        """``snntorch.utils.reset`` for this model's neurons only: each one's ``reset_mem()`` (the
        registry-wide ``utils.reset`` would also reset other models)."""
        for m in model.modules():
            if not self.is_neuron(m):
                continue
            if isinstance(m, leaky_class()):
                m.staa.reset()
            elif callable(getattr(m, "reset_mem", None)):
                m.reset_mem()

    def probe_state(self, model: nn.Module):
        return _KeptNeuronState(model)

    def after_swap(self, model: nn.Module, old: List[nn.Module]) -> None:
        for node in old:
            _unregister(node)


ADAPTER = SnnTorchAdapter()
