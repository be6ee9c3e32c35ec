"""``staa.convert``: swap spikingjelly LIF / PLIF / IF nodes for :class:`staa.STAALIF`.

Detection compares ``type(node)`` with the classes spikingjelly exports, looked up by
:mod:`staa._spikingjelly` in ``sys.modules`` only, so this module never imports spikingjelly.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import math
import warnings
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import _spikingjelly
from ._blocks import is_uninitialized
from ._state import kept_state
from ._text import aligned_rows
from .neuron import STAALIF
from .surrogate import Surrogate

__all__ = ["convert", "ConvertReport", "ReplacedNode", "SkippedNode", "FlatNode", "LINEAR_CHOICES"]

# (module exporting the classes, class name, kind, fixed step mode or None = read node.step_mode)
# Settings carried from the node; staalif_options may override them.
_CARRIED = (
    "v_threshold", "v_reset", "detach_reset", "surrogate", "surrogate_width", "surrogate_alpha", "step_mode",
    "store_v_seq",
)
_SURROGATE_OPTIONS = ("surrogate", "surrogate_width", "surrogate_alpha")
_NOT_OPTIONS = ("channels", "device", "dtype")
#: Step attention's initial fc2 bias in converted layers not preceded by a normalisation layer: the
#: gate starts at σ(3) ≈ 0.95, so the layer starts close to the node it replaces (docs/convert.md,
#: "Initialisation").
CONVERT_SA_INIT_BIAS = 3.0
#: Values of convert's ``linear`` option: what to do with nodes whose input has no spatial positions.
LINEAR_CHOICES = ("keep", "convert")
# Hook dictionaries that move to the new module (the same objects, so old handles still remove them).
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)

Pattern = Union[str, Sequence[str], Callable[[str, nn.Module], bool], None]


@dataclasses.dataclass(frozen=True)
class _Kind:
    exported_as: str  # e.g. "spikingjelly.clock_driven.neuron.MultiStepLIFNode"
    kind: str  # "lif", "plif" or "if"
    step_mode: Optional[str]


def _known_classes() -> Dict[type, _Kind]:
    known: Dict[type, _Kind] = {}
    for module_name, class_name, kind, step_mode in _spikingjelly.NODE_CLASSES:
        for exported_as, cls in _spikingjelly.exported([(module_name, class_name)]):
            known.setdefault(cls, _Kind(exported_as, kind, step_mode))
    return known


# ---------------------------------------------------------------------------------- report
@dataclasses.dataclass(frozen=True)
class ReplacedNode:
    """One node swapped for STAALIF. ``channels``/``T`` are ``None`` where sizing is lazy;
    ``surrogate`` is the new node's surrogate (e.g. ``"surrogate='atan', surrogate_alpha=2"``)."""

    name: str
    old_class: str
    channels: Optional[int]
    T: Optional[int]
    step_mode: str
    dropped: Tuple[str, ...]
    surrogate: str = ""


@dataclasses.dataclass(frozen=True)
class SkippedNode:
    """A spikingjelly neuron left in place, with the reason."""

    name: str
    cls: str
    reason: str


@dataclasses.dataclass(frozen=True)
class FlatNode:
    """A node whose input has no spatial positions (``[T, B, C]``, or ``[B, C]`` per step), as
    after a ``Linear`` layer: ``added_params`` is what STAA adds (or would add) to it, and
    ``converted`` says whether it became a STAALIF (``linear="convert"``) or stayed (``"keep"``)."""

    name: str
    cls: str
    channels: int
    added_params: int
    converted: bool


@dataclasses.dataclass
class ConvertReport:
    """What :func:`staa.convert` replaced (or would replace, with ``dry_run``) and skipped.

    ``print(report)`` shows it as a table. After several ``convert`` calls on one model,
    ``model.staa_report`` holds every call's replaced nodes (``calls`` counts the calls) and
    the latest call's skipped nodes (those are the spikingjelly nodes still in the model).
    """

    replaced: List[ReplacedNode]
    skipped: List[SkippedNode]
    dry_run: bool = False
    flat: List[FlatNode] = dataclasses.field(default_factory=list)
    calls: int = 1

    def __len__(self) -> int:
        return len(self.replaced)

    def __str__(self) -> str:
        verb = "would replace" if self.dry_run else "replaced"
        if not self.replaced and not self.skipped:
            return "staa.convert: no spikingjelly LIFNode/ParametricLIFNode/IFNode found; the model is unchanged"
        lines = [f"staa.convert: {verb} {len(self.replaced)} node(s) with STAALIF, skipped {len(self.skipped)}"]
        if self.calls > 1:
            lines[0] += f" (over {self.calls} convert calls)"
        elif not self.replaced:
            lines[0] += "; the model is unchanged"
        if self.replaced:
            rows = [("module", "old class", "C", "T", "step", "surrogate", "dropped settings")]
            for r in self.replaced:
                rows.append((
                    _display(r.name), _short(r.old_class), _lazy(r.channels), _lazy(r.T), r.step_mode,
                    _short_sg(r.surrogate), ", ".join(r.dropped) or "-",
                ))
            lines += aligned_rows(rows, right=(2, 3), indent="  ")
        if self.skipped:
            lines.append("skipped:")
            rows = [("module", "class", "reason")] + [(_display(s.name), _short(s.cls), s.reason) for s in self.skipped]
            lines += aligned_rows(rows, indent="  ")
        if self.flat:
            lines.append("no spatial positions (input [T, B, C], e.g. after a Linear layer):")
            rows = [("module", "C", "params STAA adds", "")]
            for f in self.flat:
                rows.append((_display(f.name), f.channels, f"{f.added_params:,}", "converted" if f.converted else "kept"))
            lines += aligned_rows(rows, right=(1, 2), indent="  ")
        return "\n".join(lines)

    def _merged_after(self, earlier: "ConvertReport") -> "ConvertReport":
        names = {r.name for r in self.replaced}
        flat = [f for f in earlier.flat if f.converted and f.name not in names] + list(self.flat)
        return ConvertReport(list(earlier.replaced) + list(self.replaced), list(self.skipped), False, flat,
                             earlier.calls + 1)


def _short_sg(text: str) -> str:
    # "surrogate='atan', surrogate_alpha=2" -> "atan(alpha=2)"
    if not text:
        return "-"
    kind, _, param = text.partition(", ")
    kind = kind.split("=", 1)[1].strip("'")
    name, _, value = param.partition("=")
    return f"{kind}({name.replace('surrogate_', '')}={value})"


def _short(qualname: str) -> str:
    # "spikingjelly.activation_based.neuron.LIFNode" -> "LIFNode"; legacy classes keep "clock_driven."
    name = qualname.rsplit(".", 1)[-1]
    return f"clock_driven.{name}" if ".clock_driven." in qualname else name


def _lazy(value: Optional[int]) -> str:
    return "lazy" if value is None else str(value)


# ---------------------------------------------------------------------------------- selection
def _matcher(spec: Pattern, what: str) -> Optional[Callable[[str, nn.Module], bool]]:
    if spec is None:
        return None
    if callable(spec):
        return spec
    try:
        patterns = [spec] if isinstance(spec, str) else list(spec)
    except TypeError:
        patterns = [spec]  # not iterable: rejected below with its value
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"{what} must be a module-name pattern, a list of patterns or a predicate (name, module) -> bool, "
            f"got {spec!r}"
        )

    def match(name: str, module: nn.Module) -> bool:
        # A pattern matches a name by glob, or any module below the module it names.
        return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)

    return match


def _display(name: str) -> str:
    return name or "<model>"


# ---------------------------------------------------------------------------------- settings
def _scalar(node: nn.Module, attr: str, name: str):
    value = getattr(node, attr)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"node '{_display(name)}' has a per-neuron {attr} of shape {list(value.shape)}; STAALIF takes "
                f"one scalar {attr}: set it to a float before converting or exclude this node"
            )
        value = value.item()
    return value


def _sg_param(sg, attr: str, default: float) -> float:
    value = getattr(sg, attr, default)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) and value > 0 else default


# Surrogates STAALIF has exactly: spikingjelly class -> STAALIF kind (the parameter is carried as is,
# except Rect, whose alpha is 1 / width).
_EXACT = {"Rect": "rect", "ATan": "atan", "Sigmoid": "sigmoid"}


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


def _surrogate(node: nn.Module) -> Tuple[Optional[Surrogate], Optional[str], Optional[str]]:
    """(surrogate, report note or None, reason to skip the node or None) for a node's
    ``surrogate_function``."""
    sg = getattr(node, "surrogate_function", None)
    text = " ".join(repr(sg).split())
    if getattr(sg, "spiking", True) is False:
        return None, None, (
            f"surrogate_function={text} has spiking=False: the node outputs a smooth function, not spikes"
        )
    name = _spikingjelly.surrogate_class_name(sg)
    if name in _EXACT:
        kind = _EXACT[name]
        alpha = _sg_param(sg, "alpha", -1.0)
        if alpha > 0:
            return Surrogate(kind, 1.0 / alpha if kind == "rect" else alpha), None, None
    if name is None:
        kind, param, why = "sigmoid", 4.0, "not a spikingjelly surrogate: spikingjelly's default, Sigmoid(alpha=4)"
    else:
        kind, param, why = _nearest(name, sg)
    new = Surrogate(kind, param)
    return new, f"surrogate_function={text} (no such kind in STAALIF; now {new.describe()}: {why})", None


def _surrogate_settings(sg: Surrogate) -> dict:
    return {
        "surrogate": sg.kind,
        "surrogate_width": sg.param if sg.kind == "rect" else None,
        "surrogate_alpha": None if sg.kind == "rect" else sg.param,
    }


def _user_surrogate(carried: dict, options: dict) -> dict:
    """The surrogate settings when the caller passed any of ``surrogate``, ``surrogate_width``,
    ``surrogate_alpha``: the caller's choice replaces the node's surrogate as a whole (a width
    alone means the rectangle; an alpha alone sets the node's own smooth kind)."""
    given = {k: options[k] for k in _SURROGATE_OPTIONS if k in options}
    if not given:
        return {}
    if "surrogate" in given:
        kind = given["surrogate"]
    elif given.get("surrogate_width") is not None:
        kind = "rect"
    else:
        kind = carried["surrogate"]
    out = {"surrogate": kind, "surrogate_width": given.get("surrogate_width"),
           "surrogate_alpha": given.get("surrogate_alpha")}
    if kind == carried["surrogate"] and out["surrogate_width"] is None and out["surrogate_alpha"] is None:
        out.update({k: carried[k] for k in _SURROGATE_OPTIONS[1:]})  # the node's kind, no parameter: keep its own
    return out


def _node_settings(node: nn.Module, kind: _Kind, name: str) -> Tuple[dict, List[str], Optional[str]]:
    """(settings, dropped-setting notes, reason to skip the node or None)."""
    sg, note, skip = _surrogate(node)
    if skip is not None:
        return {}, [], skip
    step_mode = kind.step_mode or getattr(node, "step_mode", "s")
    settings = {
        "v_threshold": float(_scalar(node, "v_threshold", name)),
        "v_reset": None if node.v_reset is None else float(_scalar(node, "v_reset", name)),
        "detach_reset": bool(node.detach_reset),
        **_surrogate_settings(sg),
        "step_mode": step_mode,
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


def _fmt(x) -> str:
    return f"{float(x):g}"


# ---------------------------------------------------------------------------------- probe
@dataclasses.dataclass
class _Seen:
    shape: Tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    after_norm: bool = False  # the module that ran just before the node was a normalisation layer


# Normalisation layers: a neuron right after one of these gets step attention's default
# initialisation; elsewhere convert starts the gate open (see sa_init_bias_for).
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def sa_init_bias_for(seen: List[_Seen]) -> Optional[float]:
    """convert's default ``sa_init_bias`` for a node: ``None`` (``nn.Linear``'s initialisation, gate
    about 0.5) when the probe saw it right after a normalisation layer, which rescales its input
    anyway; otherwise ``CONVERT_SA_INIT_BIAS`` (gate about 0.95), so the converted layer does not
    halve the membrane input of a network that has no normalisation to make up for it."""
    if seen and all(s.after_norm for s in seen):
        return None
    return CONVERT_SA_INIT_BIAS


def _call(model: nn.Module, example_input):
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _input_tensors(example_input) -> List[torch.Tensor]:
    items = example_input.values() if isinstance(example_input, dict) else (
        example_input if isinstance(example_input, (tuple, list)) else [example_input]
    )
    return [x for x in items if isinstance(x, torch.Tensor)]


def _probe(model: nn.Module, example_input, watched: Dict[int, str]) -> Dict[int, List[_Seen]]:
    """One eval-mode, no-grad forward recording the input of every watched node.

    Training flags, buffers (BatchNorm statistics), spikingjelly/STAALIF neuron state and
    the RNG state are restored afterwards, also when the forward fails.
    """
    seen: Dict[int, List[_Seen]] = {k: [] for k in watched}
    stack: List[str] = []
    handles = []
    modules = list(model.named_modules(remove_duplicate=False))
    names_by_id: Dict[int, str] = {}
    for name, m in modules:
        names_by_id.setdefault(id(m), name)

    last_leaf: List[Optional[nn.Module]] = [None]  # the last module without children that finished

    def enter(m, args):
        stack.append(names_by_id[id(m)])
        if id(m) in seen and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            seen[id(m)].append(_Seen(tuple(x.shape), x.device, x.dtype, isinstance(last_leaf[0], _NORM_LAYERS)))

    def leave(m, args, out):
        # Pop down to this module, in case an inner failure was caught by an outer forward.
        name = names_by_id[id(m)]
        while stack and stack.pop() != name:
            pass
        if not m._modules:
            last_leaf[0] = m

    try:
        for m in {id(m): m for _, m in modules}.values():
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(leave))
        with kept_state(model, tensors=_input_tensors(example_input)), torch.no_grad():
            model.eval()
            try:
                _call(model, example_input)
            except Exception as err:
                failed = stack[-1] if stack else ""
                failed_module = dict(modules).get(failed, model)
                raise ValueError(
                    f"staa.convert: the sizing forward with example_input ({_describe(example_input)}) failed in "
                    f"module '{_display(failed)}' ({type(failed_module).__name__}): {type(err).__name__}: {err}. "
                    f"Pass an input the model accepts as it is (e.g. [T, B, C, H, W] for a multi-step model)"
                ) from err
    finally:
        for h in handles:
            h.remove()
    return seen


def _describe(example_input) -> str:
    if isinstance(example_input, torch.Tensor):
        return f"shape {list(example_input.shape)}"
    if isinstance(example_input, (tuple, list)):
        return ", ".join(_describe(x) for x in example_input)
    if isinstance(example_input, dict):
        return ", ".join(f"{k}: {_describe(v)}" for k, v in example_input.items())
    return type(example_input).__name__


# ---------------------------------------------------------------------------------- sizing
def _size_from_probe(name: str, step_mode: str, seen: List[_Seen], T: Optional[int]):
    """(channels, T, reason-to-skip or None) for one node from the shapes the probe saw."""
    if not seen:
        return None, T, None
    dims = (3, 5) if step_mode == "m" else (2, 4)
    sizes = set()
    for s in seen:
        if len(s.shape) not in dims:
            expected = "[T, B, C, H, W] or [T, B, C]" if step_mode == "m" else "[B, C, H, W] or [B, C]"
            return None, None, (
                f"input of shape {list(s.shape)} in step_mode={step_mode!r}; STAALIF takes {expected}"
            )
        sizes.add((len(s.shape), s.shape[2], s.shape[0]) if step_mode == "m" else (len(s.shape), s.shape[1], None))
    if len(sizes) > 1:
        shapes = ", ".join(str(list(s.shape)) for s in seen)
        raise ValueError(
            f"staa.convert: node '{_display(name)}' is called {len(seen)} times in one forward with inputs of "
            f"different channel count, T or rank ({shapes}); one STAALIF has one C and T. Give each call site "
            f"its own neuron, or exclude this node (exclude=[{name!r}])"
        )
    _, channels, probe_T = sizes.pop()
    if probe_T is not None:
        if T is not None and T < probe_T:
            raise ValueError(
                f"staa.convert: T={T} but node '{_display(name)}' receives T={probe_T} steps "
                f"(input shape {list(seen[0].shape)}); pass T >= {probe_T} or leave T unset"
            )
        if T is None:
            T = probe_T
    return channels, T, None


def _factory(model: nn.Module, parents: Dict[int, nn.Module], node: nn.Module, seen: List[_Seen]):
    """device and dtype for a new STAALIF: the node's own parameters (PLIF), else its
    parent's, else the model's; the probe's input device wins over parameters."""
    device = dtype = None
    for scope in (node, parents.get(id(node)), model):
        if scope is None:
            continue
        p = next((p for p in scope.parameters() if p.is_floating_point() and not is_uninitialized(p)), None)
        if p is not None:
            device, dtype = p.device, p.dtype
            break
    if seen:
        device = seen[0].device
        if dtype is None and seen[0].dtype in (torch.float32, torch.float64):
            dtype = seen[0].dtype
    return device, dtype


# ---------------------------------------------------------------------------------- convert
def convert(
    model: nn.Module,
    example_input=None,
    *,
    T: Optional[int] = None,
    include: Pattern = None,
    exclude: Pattern = None,
    linear: str = "keep",
    dry_run: bool = False,
    **staalif_options,
):
    r"""Replace spikingjelly LIF / PLIF / IF nodes in ``model`` with :class:`staa.STAALIF`, in place.

    Recognised (by class identity, only if spikingjelly is already imported):
    ``spikingjelly.activation_based.neuron.{LIFNode, ParametricLIFNode, IFNode}`` (2.x and
    0.0.0.0.14) and the legacy ``spikingjelly.clock_driven.neuron.{LIFNode, MultiStepLIFNode,
    ParametricLIFNode, MultiStepParametricLIFNode, IFNode, MultiStepIFNode}``. Subclasses
    (ILIF, LIAF, OTTT, SLTT, ...) and other spikingjelly neurons are left alone and reported.

    Carried over: ``v_threshold``, ``v_reset`` (``None`` = soft reset), ``detach_reset``, the
    step mode, ``store_v_seq``, device, dtype, the training flag, the node's forward and
    backward hooks, and the surrogate: ``Rect(alpha)`` becomes ``surrogate="rect",
    surrogate_width=1/alpha``; ``ATan(alpha)`` and ``Sigmoid(alpha)`` become ``"atan"`` and
    ``"sigmoid"`` with ``surrogate_alpha=alpha``; other surrogates map to the nearest kind
    (docs/convert.md has the table) with a line in the report. A node whose surrogate has
    ``spiking=False`` is not a spiking neuron: it is skipped and reported. Dropped (and listed
    in the report): ``tau``, ``decay_input``, PLIF's learnable tau, a non-torch ``backend``.
    STAA's update has no leak, so a converted LIF model starts from different dynamics and
    needs training.

    Args:
        model: the network; module names are kept, so the rest of its state dict is unchanged.
            If ``model`` is itself a node, the new ``STAALIF`` is returned (a module cannot
            replace itself in place); assign it: ``node = staa.convert(node, x)``.
        example_input: optional input for one sizing forward (a tensor such as
            ``[T, B, C, H, W]``, a tuple of positional inputs or a dict of keyword inputs).
            It runs in eval mode under ``no_grad`` and ``torch.random.fork_rng``, and training
            flags, buffers (BatchNorm statistics), neuron state and RNG state are restored;
            forward hooks on the model do run. Each STAALIF is then built with its exact C and
            T. Without it, lazy STAALIF modules are inserted that size themselves at the first
            multi-step forward (which must use the training T).
        T: number of time steps. Needed for single-step nodes (with ``pe=True``); for
            multi-step nodes it defaults to the probe's T.
        include, exclude: which nodes to convert: a module-name glob (``"layer1.*"``; a plain
            name also covers everything below it), a list of them, or a predicate
            ``(name, module) -> bool``. Excluded nodes are listed as skipped.
        linear: what to do with nodes whose input has no spatial positions (``[T, B, C]``, e.g.
            after a ``Linear`` layer), as seen by the probe: ``"keep"`` (default) leaves them
            as they are, ``"convert"`` converts them too. Either way the report lists them with
            C and the parameters STAA adds (about 1.5 C^2). Needs ``example_input``; without
            it every selected node is converted (lazily) and ``"keep"`` warns.
        dry_run: return the report without changing the model.
        **staalif_options: passed to every :class:`staa.STAALIF` (``r``, ``tsrd``, ``gc``,
            ``pe``, ``sa``, ``backend``, ...); they override carried settings. Any of
            ``surrogate``, ``surrogate_width``, ``surrogate_alpha`` replaces the node's surrogate.
            ``sa_init_bias`` defaults per node: ``None`` (``nn.Linear``'s initialisation, gate about
            0.5) for a node the probe saw right after a BatchNorm/GroupNorm/LayerNorm layer, else
            3.0 (the gate starts open, about 0.95); an explicit ``sa_init_bias`` applies to all.

    Returns:
        ``model`` (the same object; the new STAALIF when ``model`` is a node) with the report
        as ``staa_report``; with ``dry_run=True`` the :class:`ConvertReport` itself. A second
        ``convert`` on the same model adds to the first call's report.

    New modules are initialised under ``torch.random.fork_rng``: the global RNG is left as it
    was (different RNG states still give different initial weights). Lazy modules initialise
    at their first forward, from the RNG as it is then.
    """
    from . import _snntorch  # models with snnTorch neurons; never imports snntorch itself

    if _snntorch.handles(model):
        return _snntorch.convert(model, example_input, T=T, include=include, exclude=exclude, linear=linear,
                                 dry_run=dry_run, **staalif_options)
    _validate(model, example_input, T, linear, dry_run, staalif_options)
    want = _matcher(include, "include")
    drop = _matcher(exclude, "exclude")

    known = _known_classes()
    root_is_node = type(model) in known
    # A node cannot replace itself: hold it in a container under the name "" and return the new module.
    if root_is_node:
        scope = nn.Sequential()
        scope._modules[""] = model  # add_module refuses the empty name; the name shows as <model>
    else:
        scope = model

    places, parents, nodes = _index(scope)
    skipped: List[SkippedNode] = []
    todo = _classify(nodes, places, known, want, drop, skipped)
    todo, settings = _node_plans(todo, nodes, staalif_options, T, skipped)

    seen: Dict[int, List[_Seen]] = {key: [] for key, _, _ in todo}
    if todo and example_input is not None:
        seen = _probe(scope, example_input, {key: name for key, _, name in todo})
    elif todo and linear == "keep":
        warnings.warn(
            f"staa.convert without example_input cannot see which nodes receive [T, B, C] inputs (after Linear "
            f"layers), so linear='keep' cannot apply: all {len(todo)} selected node(s) become lazy STAALIF. Pass "
            f"example_input, or linear='convert' to convert them all without this warning",
            stacklevel=2,
        )

    builds, flat = _size(todo, nodes, settings, seen, scope, parents, T, linear, example_input is not None, skipped)
    replaced, new_modules = _build(builds, nodes, dry_run)
    report = ConvertReport(replaced, skipped, dry_run, flat)
    if dry_run:
        return report
    _swap(new_modules, nodes, places)
    result = scope._modules[""] if root_is_node else model
    earlier = model.__dict__.get("staa_report")
    if isinstance(earlier, ConvertReport) and not earlier.dry_run:
        report = report._merged_after(earlier)
    _spikingjelly.invalidate_reset_cache(result)  # reset_net caches per network object
    result.staa_report = report
    return result


# The phases of convert, in order: validate, index, classify, plan each node's settings, probe (above),
# size, build, swap.
def _validate(model, example_input, T, linear, dry_run, staalif_options) -> None:
    """Reject bad arguments before anything is looked at."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"staa.convert expects a torch.nn.Module, got {type(model).__name__}")
    bad = [k for k in _NOT_OPTIONS if k in staalif_options]
    if bad:
        raise TypeError(
            f"staa.convert sets {', '.join(bad)} of each STAALIF itself (from the probe, the node and the model); "
            f"remove {', '.join(repr(b) for b in bad)} from the options"
        )
    _check_call(T, dry_run, linear, example_input, staalif_options)
    early = dict(staalif_options)
    if "surrogate" not in early and early.get("surrogate_alpha") is not None and early.get("surrogate_width") is None:
        early["surrogate"] = "atan"  # an alpha alone applies to each node's own smooth kind; check its value
    _check_options(early, None)  # each value, also when there is no node to convert


def _check_call(T, dry_run, linear, example_input, staalif_options, *, neurons: str = "nodes",
                example_hint: str = "", not_options: Sequence[str] = _NOT_OPTIONS) -> None:
    """The checks of convert's arguments shared by the spikingjelly and snnTorch paths; ``neurons``
    and ``example_hint`` word the messages for the framework, ``not_options`` are the STAALIF
    arguments convert sets itself there."""
    if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
        raise ValueError(f"staa.convert: T must be a positive int (1, 2, ...) or None, got {T!r}")
    if not isinstance(dry_run, bool):
        raise TypeError(f"staa.convert: dry_run must be True or False, got {dry_run!r}")
    if not isinstance(linear, str) or linear not in LINEAR_CHOICES:
        raise ValueError(
            f"staa.convert: linear must be 'keep' (leave {neurons} after Linear layers as they are) or 'convert', "
            f"got {linear!r}"
        )
    if example_input is not None and not isinstance(example_input, (torch.Tensor, tuple, list, dict)):
        raise TypeError(
            f"staa.convert: example_input must be a tensor{example_hint}, a tuple/list of positional inputs, a dict "
            f"of keyword inputs or None, got {type(example_input).__name__}"
        )
    allowed = set(inspect.signature(STAALIF.__init__).parameters) - {"self", "T", *not_options}
    unknown = sorted(set(staalif_options) - allowed)
    if unknown:
        raise TypeError(
            f"staa.convert got unknown STAALIF option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(allowed))}"
        )


def _index(scope: nn.Module):
    """Every place a module is registered: ``places[id] = [(parent, attribute name, full name)]``, the
    first parent of each module and the modules by id."""
    places: Dict[int, List[Tuple[nn.Module, str, str]]] = OrderedDict()
    parents: Dict[int, nn.Module] = {}
    nodes: Dict[int, nn.Module] = {}
    for parent_name, parent in scope.named_modules(remove_duplicate=False):
        for child_name, child in parent._modules.items():
            if child is None:
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            places.setdefault(id(child), []).append((parent, child_name, full))
            parents.setdefault(id(child), parent)
            nodes[id(child)] = child
    return places, parents, nodes


def _classify(nodes, places, known, want, drop, skipped: List[SkippedNode]) -> List[Tuple[int, _Kind, str]]:
    """The selected nodes of a known class ``[(id, kind, name)]``; other spikingjelly neurons and
    excluded nodes go to ``skipped``."""
    other_bases = tuple(cls for _, cls in _spikingjelly.exported(_spikingjelly.BASE_CLASSES))
    todo = []
    for key, child in nodes.items():
        names = [full for _, _, full in places[key]]
        name = names[0]
        cls = type(child)
        if cls not in known:
            if known and isinstance(child, tuple(known)):
                base = next(k for k in known if isinstance(child, k))
                skipped.append(SkippedNode(
                    name, _qualname(cls), f"subclass of {_short(known[base].exported_as)}: a different neuron model"
                ))
            elif other_bases and isinstance(child, other_bases) and not isinstance(child, STAALIF):
                skipped.append(SkippedNode(name, _qualname(cls), "not a LIF, PLIF or IF node"))
            continue
        selected = (want is None or any(want(n, child) for n in names)) and not (
            drop is not None and any(drop(n, child) for n in names)
        )
        if not selected:
            skipped.append(SkippedNode(name, known[cls].exported_as, "excluded by include/exclude"))
            continue
        todo.append((key, known[cls], name))
    return todo


def _node_plans(todo, nodes, staalif_options, T, skipped: List[SkippedNode]):
    """Each node's STAALIF settings (carried from the node, then the options) and what was dropped;
    nodes that cannot convert go to ``skipped``. Returns the remaining ``todo`` and ``{id: (settings,
    dropped)}``."""
    settings = {}
    kept_todo = []
    for key, kind, name in todo:
        s, dropped, skip = _node_settings(nodes[key], kind, name)
        if skip is not None:
            skipped.append(SkippedNode(name, kind.exported_as, skip))
            continue
        carried = dict(s)
        s.update(staalif_options)
        s.update(_user_surrogate(carried, staalif_options))
        overridden = [k for k in _CARRIED if k in staalif_options and s[k] != carried[k]]
        if any(k in _SURROGATE_OPTIONS for k in overridden):
            old = Surrogate(carried["surrogate"], carried["surrogate_width"] or carried["surrogate_alpha"])
            dropped.append(f"{old.describe()} (overridden by the options)")
        dropped += [f"{k}={carried[k]!r} (overridden by the option {k}={s[k]!r})"
                    for k in overridden if k not in _SURROGATE_OPTIONS]
        _check_options(s, name)
        if s["step_mode"] == "s" and T is None and s.get("pe", True):
            raise ValueError(
                f"staa.convert: node '{_display(name)}' runs in single-step mode, so STAALIF cannot learn T from "
                f"the input; pass T=<number of time steps> (or pe=False)"
            )
        settings[key] = (s, dropped)
        kept_todo.append((key, kind, name))
    return kept_todo, settings


def _size(todo, nodes, settings, seen, scope, parents, T, linear, probed: bool, skipped: List[SkippedNode]):
    """C, T, device and dtype of every node from what the probe saw; nodes without spatial positions
    are listed in ``flat`` (and skipped under ``linear='keep'``). Returns ``(builds, flat)``."""
    builds = []
    flat: List[FlatNode] = []
    for key, kind, name in todo:
        node = nodes[key]
        s, dropped = settings[key]
        s = dict(s)
        s.setdefault("sa_init_bias", sa_init_bias_for(seen[key]))  # an explicit option wins
        channels, node_T, reason = _size_from_probe(name, s["step_mode"], seen[key], T)
        if reason is not None:
            skipped.append(SkippedNode(name, kind.exported_as, reason))
            continue
        device, dtype = _factory(scope, parents, node, seen[key])
        if seen[key] and _is_flat(s["step_mode"], seen[key]):
            added = _added_params(node, channels, node_T, s)
            flat.append(FlatNode(name, kind.exported_as, channels, added, linear == "convert"))
            if linear == "keep":
                skipped.append(SkippedNode(
                    name, kind.exported_as,
                    f"no spatial positions (input {_shape_text(seen[key][0].shape)}): kept by linear='keep'; "
                    f"STAA would add {added:,} parameters",
                ))
                continue
        if probed and not seen[key]:
            dropped = dropped + ["(not reached by the probe: sized lazily at the first multi-step forward)"]
        builds.append((key, kind, name, channels, node_T, s, dropped, device, dtype))
    return builds, flat


def _build(builds, nodes, dry_run: bool):
    """The new STAALIF modules (none under ``dry_run``), initialised under a forked RNG, and the
    report rows. Returns ``(replaced, {id: new module})``."""
    replaced: List[ReplacedNode] = []
    new_modules = {}
    rng_devices = sorted({d.index or 0 for *_, d, _ in builds if d is not None and d.type == "cuda"})
    with torch.random.fork_rng(devices=rng_devices):
        for key, kind, name, channels, node_T, s, dropped, device, dtype in builds:
            if not dry_run:
                try:
                    new = STAALIF(channels, node_T, device=device, dtype=dtype, **s)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"staa.convert: cannot build STAALIF for node '{_display(name)}': {err}") from err
                new.train(nodes[key].training)
                new_modules[key] = new
            sg = Surrogate(s["surrogate"], s["surrogate_width"] if s["surrogate"] == "rect" else s["surrogate_alpha"])
            replaced.append(ReplacedNode(name, kind.exported_as, channels, node_T, s["step_mode"], tuple(dropped),
                                         _describe_sg(sg)))
    return replaced, new_modules


def _swap(new_modules, nodes, places) -> None:
    """Put each new module in every place its node was registered, with the node's hooks."""
    for key, new in new_modules.items():
        old = nodes[key]
        for attr in _HOOK_DICTS:
            if attr in old.__dict__:
                new.__dict__[attr] = old.__dict__[attr]
        for parent, child_name, _ in places[key]:
            parent._modules[child_name] = new


def _describe_sg(sg: Surrogate) -> str:
    # the parameter may be None (the kind's default): show the default
    from .surrogate import DEFAULT_PARAM

    return Surrogate(sg.kind, DEFAULT_PARAM[sg.kind] if sg.param is None else float(sg.param)).describe()


def _is_flat(step_mode: str, seen: List[_Seen]) -> bool:
    return len(seen[0].shape) == (3 if step_mode == "m" else 2)


def _shape_text(shape) -> str:
    return "[T, B, C]" if len(shape) == 3 else "[B, C]"


def _added_params(node: nn.Module, channels: int, T: Optional[int], settings: dict) -> int:
    """The parameters a STAALIF for this node has, less the node's own (PLIF's tau)."""
    with torch.random.fork_rng(devices=[]):
        probe = STAALIF(channels, T if T is not None else 1, device="meta", **settings)
    own = sum(p.numel() for p in node.parameters())
    return sum(p.numel() for p in probe.parameters()) - own


def _check_options(settings: dict, name: Optional[str]) -> None:
    """Let STAALIF validate the settings before the probe runs (a lazy module allocates
    nothing; fork_rng keeps its initialisers from moving the RNG)."""
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. v_threshold <= v_reset: STAALIF warns once more when built
            STAALIF(None, None, device="meta", **settings)
    except (TypeError, ValueError) as err:
        where = "" if name is None else f" for node '{_display(name)}'"
        raise type(err)(f"staa.convert: invalid STAALIF settings{where}: {err}") from err


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
