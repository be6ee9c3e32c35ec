"""``staa.convert`` for snnTorch models: swap ``snntorch.Leaky`` neurons for STAA-LIF.

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
import warnings
from typing import List, Optional, Tuple

import torch
from torch import nn

from ._convert import (
    _CARRIED,
    _SURROGATE_OPTIONS,
    ConvertReport,
    FlatNode,
    ReplacedNode,
    SkippedNode,
    _added_params,
    _check_call,
    _check_options,
    _describe_sg,
    _display,
    _factory,
    _index,
    _swap,
    _is_flat,
    _matcher,
    _probe,
    sa_init_bias_for,
    _shape_text,
    _size_from_probe,
    _user_surrogate,
)
from .neuron import STAALIF
from .reference import compute_dtype
from .surrogate import Surrogate

__all__ = ["handles", "convert", "leaky_class"]

_LEAKY = "snntorch.Leaky"
_RESETS = ("subtract", "zero", "none")  # SpikingNeuron.reset_dict's order
# snnTorch surrogate factory -> (STAALIF surrogate kind, name of the closure variable holding its parameter)
_SURROGATES = {"atan": ("atan", "alpha"), "fast_sigmoid": ("fast_sigmoid", "slope"), "sigmoid": ("sigmoid", "slope")}
_NOT_OPTIONS = ("channels", "device", "dtype", "step_mode", "store_v_seq")


# ---------------------------------------------------------------------------------- snnTorch lookup
def _neuron_base() -> Optional[type]:
    module = sys.modules.get("snntorch._neurons.neurons")
    cls = getattr(module, "SpikingNeuron", None)
    return cls if isinstance(cls, type) else None


def _leaky() -> Optional[type]:
    module = sys.modules.get("snntorch._neurons.leaky")
    cls = getattr(module, "Leaky", None)
    return cls if isinstance(cls, type) else None


def handles(model) -> bool:
    """True when snnTorch is imported and ``model`` holds at least one snnTorch neuron."""
    if "snntorch" not in sys.modules or not isinstance(model, nn.Module):
        return False
    base = _neuron_base()
    return base is not None and any(isinstance(m, base) for m in model.modules())


# ---------------------------------------------------------------------------------- the replacement
@functools.lru_cache(maxsize=None)
def leaky_class() -> type:
    """The ``snntorch.Leaky`` subclass that runs STAA-LIF (built once snnTorch is imported)."""
    Leaky = _leaky()
    base = _neuron_base()
    if Leaky is None or base is None:
        raise ImportError("staa._snntorch.STAALeaky needs snnTorch: import snntorch first")

    class STAALeaky(Leaky):
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
            base.instances.append(self)  # unpickled or deep-copied modules join the registry too

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

    STAALeaky.__module__ = __name__
    STAALeaky.__qualname__ = "STAALeaky"
    return STAALeaky


def _state_tensor(h: torch.Tensor) -> torch.Tensor:
    # snnTorch detaches the state in place (mem.detach_()), which a view does not allow.
    return h.clone() if h._is_view() else h


def __getattr__(name):
    # Lets pickled / torch.save'd converted models load again.
    if name == "STAALeaky":
        return leaky_class()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------- settings
def _float(node: nn.Module, value, what: str, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"staa.convert: snnTorch neuron '{_display(name)}' has a per-neuron {what} of shape "
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


def _settings(node: nn.Module, name: str) -> Tuple[Optional[dict], List[str], Optional[str]]:
    """(STAALIF settings, dropped settings, reason to skip or None) for one Leaky."""
    reset = _RESETS[int(node.reset_mechanism_val)]
    if reset == "none":
        return None, [], "reset_mechanism='none' (pure integration): STAALIF always resets"
    settings = {
        "v_threshold": _float(node, node.threshold, "threshold", name),
        "v_reset": None if reset == "subtract" else 0.0,
        "detach_reset": True,  # snnTorch detaches the reset term
    }
    sg, dropped_sg = _surrogate(node)
    settings.update(sg)
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
    if dropped_sg is not None:
        dropped.append(dropped_sg)
    return settings, dropped, None


def _fmt_tensor(t) -> str:
    if isinstance(t, torch.Tensor):
        if t.numel() == 1:
            return f"{t.item():g}"
        return f"per-neuron, shape {list(t.shape)}"
    return f"{float(t):g}"


# ---------------------------------------------------------------------------------- probe
def _save_snn_states(model: nn.Module):
    base = _neuron_base()
    saved = []
    for m in model.modules():
        if base is not None and isinstance(m, base) and not isinstance(m, leaky_class()):
            saved.append((m, dict(m._buffers), dict(m.__dict__)))
    return saved


def _restore_snn_states(saved) -> None:
    for m, buffers, attrs in saved:
        m._buffers.clear()
        m._buffers.update(buffers)
        for key in [k for k in m.__dict__ if k not in attrs]:
            del m.__dict__[key]
        m.__dict__.update({k: v for k, v in attrs.items() if k != "_buffers"})


# ---------------------------------------------------------------------------------- convert
def convert(model: nn.Module, example_input=None, *, T: Optional[int] = None, include=None, exclude=None,
            linear: str = "keep", dry_run: bool = False, **staalif_options):
    """``staa.convert`` for a model holding snnTorch neurons (docs/convert.md, section "snnTorch").

    Same arguments and report as for spikingjelly models; every converted neuron is a
    single-step :class:`STAALeaky`, so ``T`` is required while the position encoding is on.
    """
    bad = [k for k in _NOT_OPTIONS if k in staalif_options]
    if bad:
        raise TypeError(
            f"staa.convert sets {', '.join(bad)} of each STAALIF itself for snnTorch neurons (single-step, sized "
            f"from the model); remove {', '.join(repr(b) for b in bad)} from the options"
        )
    _check_call(T, dry_run, linear, example_input, staalif_options, neurons="neurons",
                example_hint=" (one time step, e.g. [B, C, H, W])", not_options=_NOT_OPTIONS)
    _check_options(dict(staalif_options), None)
    want = _matcher(include, "include")
    drop = _matcher(exclude, "exclude")
    Leaky, base, ours = _leaky(), _neuron_base(), leaky_class()

    places, parents, nodes = _index(model)

    skipped: List[SkippedNode] = []
    todo = _plan(nodes, places, (Leaky, base, ours), want, drop, staalif_options, T, skipped)

    seen = {key: [] for key, _, _, _ in todo}
    if todo and example_input is not None:
        saved = _save_snn_states(model)
        try:
            seen = _probe(model, example_input, {key: name for key, name, _, _ in todo})
        finally:
            _restore_snn_states(saved)
    elif todo and linear == "keep":
        warnings.warn(
            f"staa.convert without example_input cannot see which snnTorch neurons receive [B, C] inputs (after "
            f"Linear layers), so linear='keep' cannot apply: all {len(todo)} selected neuron(s) get a lazy "
            f"STAALIF. Pass example_input (one time step), or linear='convert' to convert them all without this "
            f"warning",
            stacklevel=3,
        )

    builds, flat = _size(todo, nodes, seen, model, parents, T, linear, example_input is not None, skipped)

    replaced, new_modules = _build(builds, nodes, ours, dry_run)

    report = ConvertReport(replaced, skipped, dry_run, flat)
    if dry_run:
        return report
    _swap(new_modules, nodes, places)
    for key in new_modules:
        _unregister(nodes[key])
    earlier = model.__dict__.get("staa_report")
    if isinstance(earlier, ConvertReport) and not earlier.dry_run:
        report = report._merged_after(earlier)
    model.staa_report = report
    return model


def _plan(nodes, places, classes, want, drop, staalif_options, T, skipped: List[SkippedNode]):
    """The selected plain ``Leaky`` neurons with their STAALIF settings, ``[(id, name, settings,
    dropped)]``; other snnTorch neurons and excluded ones go to ``skipped``."""
    Leaky, base, ours = classes
    todo = []
    for key, child in nodes.items():
        names = [full for _, _, full in places[key]]
        name = names[0]
        cls = type(child)
        if not isinstance(child, base) or isinstance(child, ours):
            continue
        if cls is not Leaky:
            what = "subclass of Leaky" if isinstance(child, Leaky) else "not a Leaky"
            skipped.append(SkippedNode(name, f"{cls.__module__}.{cls.__qualname__}",
                                       f"{what}: a different neuron model"))
            continue
        if not ((want is None or any(want(n, child) for n in names))
                and not (drop is not None and any(drop(n, child) for n in names))):
            skipped.append(SkippedNode(name, _LEAKY, "excluded by include/exclude"))
            continue
        carried, dropped, reason = _settings(child, name)
        if reason is not None:
            skipped.append(SkippedNode(name, _LEAKY, reason))
            continue
        s = dict(carried)
        s.update(staalif_options)
        s.update(_user_surrogate(carried, staalif_options))
        overridden = [k for k in _CARRIED if k in staalif_options and s[k] != carried[k]]
        if any(k in _SURROGATE_OPTIONS for k in overridden):
            dropped.append(f"{_sg(carried).describe()} (overridden by the options)")
        dropped += [f"{k}={carried[k]!r} (overridden by the option {k}={s[k]!r})"
                    for k in overridden if k not in _SURROGATE_OPTIONS]
        s["step_mode"] = "s"
        _check_options(s, name)
        if T is None and s.get("pe", True):
            raise ValueError(
                f"staa.convert: snnTorch neuron '{_display(name)}' runs one time step per call, so STAALIF cannot "
                f"learn the sequence length from its input; pass T=<time steps per sequence> (the position "
                f"encoding has one row per step), or pe=False"
            )
        todo.append((key, name, s, dropped))
    return todo


def _size(todo, nodes, seen, model, parents, T, linear, probed: bool, skipped: List[SkippedNode]):
    """C, T, device and dtype of each neuron from what the probe saw; neurons without spatial
    positions are listed in ``flat`` (and skipped under ``linear='keep'``). ``(builds, flat)``."""
    builds = []
    flat: List[FlatNode] = []
    for key, name, s, dropped in todo:
        node = nodes[key]
        s = dict(s)
        s.setdefault("sa_init_bias", sa_init_bias_for(seen[key]))  # an explicit option wins
        channels, node_T, reason = _size_from_probe(name, "s", seen[key], T)
        if reason is not None:
            skipped.append(SkippedNode(name, _LEAKY, reason))
            continue
        device, dtype = _factory(model, parents, node, seen[key])
        if seen[key] and _is_flat("s", seen[key]):
            added = _added_params(node, channels, node_T, s)
            flat.append(FlatNode(name, _LEAKY, channels, added, linear == "convert"))
            if linear == "keep":
                skipped.append(SkippedNode(
                    name, _LEAKY,
                    f"no spatial positions (input {_shape_text(seen[key][0].shape)}): kept by linear='keep'; "
                    f"STAA would add {added:,} parameters",
                ))
                continue
        if probed and not seen[key]:
            dropped = dropped + ["(not reached by the probe: sized at its first call)"]
        builds.append((key, name, channels, node_T, s, dropped, device, dtype))
    return builds, flat


def _build(builds, nodes, ours, dry_run: bool):
    """The new STAALeaky modules (none under ``dry_run``), initialised under a forked RNG, and the
    report rows. ``(replaced, {id: new module})``."""
    replaced: List[ReplacedNode] = []
    new_modules = {}
    rng_devices = sorted({d.index or 0 for *_, d, _ in builds if d is not None and d.type == "cuda"})
    with torch.random.fork_rng(devices=rng_devices):
        for key, name, channels, node_T, s, dropped, device, dtype in builds:
            old = nodes[key]
            if not dry_run:
                try:
                    staa = STAALIF(channels, node_T, device=device, dtype=dtype, **s)
                except (TypeError, ValueError) as err:
                    raise type(err)(
                        f"staa.convert: cannot build STAALIF for snnTorch neuron '{_display(name)}': {err}"
                    ) from err
                new = ours(staa, init_hidden=bool(old.init_hidden), output=bool(old.output),
                           reset_mechanism=_RESETS[int(old.reset_mechanism_val)],
                           reset_delay=bool(getattr(old, "reset_delay", True)))
                new.train(old.training)
                new_modules[key] = new
            replaced.append(ReplacedNode(name, _LEAKY, channels, node_T, "s", tuple(dropped), _describe_sg(_sg(s))))
    return replaced, new_modules


def _sg(settings: dict) -> Surrogate:
    kind = settings["surrogate"]
    return Surrogate(kind, settings["surrogate_width"] if kind == "rect" else settings["surrogate_alpha"])


def _unregister(old: nn.Module) -> None:
    """Drop a replaced neuron from snnTorch's registry (the registry would keep it and its state alive)."""
    for owner in {id(c): c for c in type(old).__mro__ if "instances" in c.__dict__}.values():
        registry = owner.__dict__["instances"]
        if isinstance(registry, list):
            registry[:] = [m for m in registry if m is not old]
