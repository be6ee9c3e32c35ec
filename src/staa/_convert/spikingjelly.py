"""The spikingjelly adapter: 2.x and 0.0.0.0.14 (``activation_based``) and the legacy
``clock_driven`` API. The one place that lists spikingjelly's neuron and surrogate classes.

Nothing here imports spikingjelly: classes are looked up in ``sys.modules`` only, so a model that
holds spikingjelly nodes (and has therefore imported it) is recognised and ``import staa`` stays light.
"""
from __future__ import annotations

import math
import sys
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..neuron import STAALIF
from ..surrogate import DEFAULT_PARAM, Surrogate
from ._adapter import Adapter, NeuronKind
from ._core import SURROGATE_OPTIONS, surrogate_settings
from ._report import display, short_class

#: Node classes convert replaces: (module, class, neuron kind, step mode the class fixes, or None where
#: the node has a ``step_mode`` attribute).
NODE_CLASSES = (
    ("spikingjelly.activation_based.neuron", "LIFNode", "lif", None),
    ("spikingjelly.activation_based.neuron", "ParametricLIFNode", "plif", None),
    ("spikingjelly.activation_based.neuron", "IFNode", "if", None),
    ("spikingjelly.clock_driven.neuron", "LIFNode", "lif", "s"),
    ("spikingjelly.clock_driven.neuron", "MultiStepLIFNode", "lif", "m"),
    ("spikingjelly.clock_driven.neuron", "ParametricLIFNode", "plif", "s"),
    ("spikingjelly.clock_driven.neuron", "MultiStepParametricLIFNode", "plif", "m"),
    ("spikingjelly.clock_driven.neuron", "IFNode", "if", "s"),
    ("spikingjelly.clock_driven.neuron", "MultiStepIFNode", "if", "m"),
)
#: Base classes of every spikingjelly neuron (the others are listed as skipped by convert).
BASE_CLASSES = (
    ("spikingjelly.activation_based.neuron", "BaseNode"),
    ("spikingjelly.clock_driven.neuron", "BaseNode"),
)
#: Base classes of modules with state that ``reset_net`` resets.
MEMORY_CLASSES = (
    ("spikingjelly.activation_based.base", "MemoryModule"),
    ("spikingjelly.clock_driven.base", "MemoryModule"),
)
#: The surrogate modules: spikingjelly 2.x and 0.0.0.0.14 (activation_based) and the legacy API.
SURROGATE_MODULES = ("spikingjelly.activation_based.surrogate", "spikingjelly.clock_driven.surrogate")
# Surrogates STAALIF has exactly: spikingjelly class -> STAALIF kind (the parameter is carried as is,
# except Rect, whose alpha is 1 / width).
_EXACT = {"Rect": "rect", "ATan": "atan", "Sigmoid": "sigmoid"}


def exported(pairs) -> List[Tuple[str, type]]:
    """``[(qualified name, class)]`` for the ``(module, class)`` pairs whose module is loaded."""
    found = []
    for module_name, class_name in pairs:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type):
            found.append((f"{module_name}.{class_name}", cls))
    return found


def _classes(pairs) -> Tuple[type, ...]:
    return tuple(cls for _, cls in exported(pairs))


def surrogate_class(sg) -> Tuple[Optional[str], bool]:
    """``(name, exact)``: the spikingjelly surrogate class ``sg`` is (``exact``) or the nearest one it
    derives from (``("ATan", False)`` for a subclass of ATan); ``(None, False)`` for anything else."""
    for cls in type(sg).__mro__:
        for module_name in SURROGATE_MODULES:
            module = sys.modules.get(module_name)
            if module is not None and getattr(module, cls.__name__, None) is cls:
                return cls.__name__, cls is type(sg)
    return None, False


def _scalar(node: nn.Module, attr: str, name: str):
    value = getattr(node, attr)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"node '{display(name)}' has a per-neuron {attr} of shape {list(value.shape)}; STAALIF takes "
                f"one scalar {attr}: set it to a float before converting or exclude this node"
            )
        value = value.item()
    return value


def _sg_param(sg, attr: str, default: float) -> float:
    """A surrogate's parameter as a float, or ``default`` when it is not a finite number > 0."""
    value = getattr(sg, attr, default)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) and value > 0 else default


def _nearest(name: str, sg) -> Tuple[str, float, str]:
    """(kind, param, why) for a spikingjelly surrogate STAALIF does not have: the kind closest in
    shape, with the same peak dS/dV at the threshold (all of them integrate to 1 except where noted)."""
    alpha = lambda d: _sg_param(sg, "alpha", d)  # noqa: E731
    if name == "PiecewiseQuadratic":  # triangle, peak alpha, support |x| < 1/alpha
        return "rect", 1.0 / alpha(1.0), "a triangle: the rectangle of the same peak"
    if name == "PiecewiseExp":  # alpha/2 exp(-alpha|x|)
        return "sigmoid", 2.0 * alpha(1.0), "exponential tails: the sigmoid of the same peak"
    if name == "SoftSign":  # alpha / (2 (1 + alpha|x|)^2)
        return "atan", alpha(2.0), "1/x^2 tails: the atan of the same peak"
    if name == "SuperSpike":  # alpha / (1 + |x|)^2
        return "atan", 2.0 * alpha(1.0), "1/x^2 tails: the atan of the same peak (area differs)"
    if name == "Erf":  # alpha/sqrt(pi) exp(-(alpha x)^2)
        return "sigmoid", 4.0 * alpha(2.0) / math.sqrt(math.pi), "Gaussian: the sigmoid of the same peak"
    if name == "PiecewiseLeakyReLU":  # 1/(2w) for |x| < w, else c
        return "rect", 2.0 * _sg_param(sg, "w", 1.0), "the rectangle of the same window, without the leak c"
    return "sigmoid", 4.0, "no close kind: spikingjelly's default surrogate, Sigmoid(alpha=4)"


def _surrogate(node: nn.Module, name: str, user_sets_it: bool):
    """(surrogate, report note or None, reason to skip the node or None) for a node's
    ``surrogate_function``."""
    sg = getattr(node, "surrogate_function", None)
    text = " ".join(repr(sg).split())
    if getattr(sg, "spiking", True) is False:
        return None, None, (
            f"surrogate_function={text} has spiking=False: the node outputs a smooth function, not spikes"
        )
    cls_name, exact = surrogate_class(sg)
    if cls_name in _EXACT:
        kind = _EXACT[cls_name]
        alpha = _sg_param(sg, "alpha", -1.0)
        if alpha <= 0 and not user_sets_it:
            raise ValueError(
                f"staa.convert: node '{display(name)}' has surrogate_function={text}, whose alpha "
                f"{getattr(sg, 'alpha', None)!r} is not a finite number > 0 (its gradient would be zero or "
                f"negative); give the node a valid surrogate, or pass surrogate/surrogate_alpha/surrogate_width"
            )
        new = Surrogate(kind, (1.0 / alpha if kind == "rect" else alpha) if alpha > 0 else DEFAULT_PARAM[kind])
        if exact:
            return new, None, None
        return new, (f"surrogate_function={text} is a subclass of {cls_name}: now {new.describe()} (what the "
                     f"subclass changes is not carried)"), None
    if cls_name is None:
        kind, param, why = "sigmoid", 4.0, "not a spikingjelly surrogate: spikingjelly's default, Sigmoid(alpha=4)"
    else:
        kind, param, why = _nearest(cls_name, sg)
        if not exact:
            why = f"a subclass of {cls_name}, mapped as {cls_name}: {why}"
    new = Surrogate(kind, param)
    return new, f"surrogate_function={text} (no such kind in STAALIF; now {new.describe()}: {why})", None


def _fmt(x) -> str:
    return f"{float(x):g}"


class SpikingjellyAdapter(Adapter):
    """spikingjelly's LIF, PLIF and IF nodes (both APIs) become :class:`staa.STAALIF` itself."""

    name = "spikingjelly"
    noun = "node"
    plural = "nodes"
    lazy_note = "(not reached by the probe: sized lazily at the first multi-step forward)"

    def loaded(self) -> bool:
        return any(m in sys.modules for m, _ in BASE_CLASSES)

    def is_neuron(self, module: nn.Module) -> bool:
        bases = _classes(BASE_CLASSES)
        return bool(bases) and isinstance(module, bases)

    def convertible(self, module: nn.Module):
        known = {}
        for module_name, class_name, kind, step_mode in NODE_CLASSES:
            for exported_as, cls in exported([(module_name, class_name)]):
                known.setdefault(cls, NeuronKind(exported_as, kind, step_mode))
        cls = type(module)
        if cls in known:
            return known[cls]
        base = next((k for k in known if isinstance(module, k)), None)
        if base is not None:
            return f"subclass of {short_class(known[base].exported_as)}: a different neuron model"
        if self.is_neuron(module) and not isinstance(module, STAALIF):
            return "not a LIF, PLIF or IF node"
        return None

    def missing_T(self, name: str) -> str:
        return (f"staa.convert: node '{display(name)}' runs in single-step mode, so STAALIF cannot learn T from "
                f"the input; pass T=<number of time steps> (or pe=False)")

    def settings(self, node: nn.Module, kind: NeuronKind, name: str, options: dict):
        sg, note, skip = _surrogate(node, name, any(k in options for k in SURROGATE_OPTIONS))
        if skip is not None:
            return {}, [], skip
        settings = {
            "v_threshold": float(_scalar(node, "v_threshold", name)),
            "v_reset": None if node.v_reset is None else float(_scalar(node, "v_reset", name)),
            "detach_reset": bool(node.detach_reset),
            **surrogate_settings(sg),
            "step_mode": kind.step_mode or getattr(node, "step_mode", "s"),
            "store_v_seq": bool(getattr(node, "store_v_seq", False)),
        }
        dropped = []
        if kind.kind == "lif":
            dropped.append(f"tau={_fmt(_scalar(node, 'tau', name))}")
        elif kind.kind == "plif":
            with torch.no_grad():
                tau = 1.0 / torch.sigmoid(node.w.detach().float()).item()
            dropped.append(f"learnable tau (was {_fmt(tau)})")
        if kind.kind in ("lif", "plif"):
            dropped.append(f"decay_input={bool(getattr(node, 'decay_input', True))}")
        if note is not None:
            dropped.append(note)
        backend = getattr(node, "backend", "torch")
        if isinstance(backend, str) and backend != "torch":
            dropped.append(f"backend={backend!r}")
        return settings, dropped, None

    def step_mode(self, module: nn.Module) -> str:
        for module_name, class_name, _, step_mode in NODE_CLASSES:
            if step_mode is not None and any(type(module) is cls for _, cls in exported([(module_name, class_name)])):
                return step_mode
        return super().step_mode(module)

    def reset(self, model: nn.Module) -> None:
        """What ``functional.reset_net`` does: ``reset()`` every stateful spikingjelly module."""
        memory = _classes(MEMORY_CLASSES)
        for m in model.modules():
            if memory and isinstance(m, memory) and callable(getattr(m, "reset", None)):
                m.reset()

    def after_swap(self, model: nn.Module, old: List[nn.Module]) -> None:
        # reset_net caches its list of modules per network object: drop it for the changed networks.
        functional = sys.modules.get("spikingjelly.activation_based.functional")
        invalidate = getattr(functional, "invalidate_reset_cache", None)
        if invalidate is not None:
            for m in model.modules():
                invalidate(m)


ADAPTER = SpikingjellyAdapter()
