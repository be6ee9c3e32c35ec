"""The framework-neutral part of ``staa.convert``: walk the model, classify, plan each neuron's
settings, probe, size, build, swap and report. What a framework's neurons are and carry comes from
an :class:`~staa._convert._adapter.Adapter`; nothing here names a framework.

The phases, in order (:func:`run`): validate the arguments, index every place a module is
registered, classify (the adapter says which modules convert), plan each neuron's STAALIF settings,
probe (one sizing forward, :mod:`._probe`), size, build the new modules, swap them in.
"""
from __future__ import annotations

import fnmatch
import inspect
import operator
import warnings
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..neuron import STAALIF
from ..surrogate import DEFAULT_PARAM, Surrogate
from ._adapter import CARRIED, Adapter, NeuronKind
from ._probe import Seen, factory, is_flat, probe, sa_init_bias_for, shape_text, size_from_probe
from ._report import ConvertReport, FlatNode, ReplacedNode, SkippedNode, display

#: Values of convert's ``linear`` option: what to do with nodes whose input has no spatial positions.
LINEAR_CHOICES = ("keep", "convert")
SURROGATE_OPTIONS = ("surrogate", "surrogate_width", "surrogate_alpha")
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


def run(adapter: Adapter, model: nn.Module, example_input, T, include: Pattern, exclude: Pattern, linear: str,
        dry_run: bool, staalif_options: dict, *, stacklevel: int = 2):
    """``staa.convert`` for the neurons ``adapter`` knows (arguments and result as documented there).
    ``stacklevel`` points warnings at the user's ``convert`` call."""
    T = validate(adapter, model, example_input, T, linear, dry_run, staalif_options)
    want = _matcher(include, "include")
    drop = _matcher(exclude, "exclude")

    # A neuron cannot replace itself: hold it in a container under the name "" and return the new module.
    root_is_node = isinstance(adapter.convertible(model), NeuronKind)
    if root_is_node:
        scope = nn.Sequential()
        scope._modules[""] = model  # add_module refuses the empty name; the name shows as <model>
    else:
        scope = model

    places, parents, nodes = _index(scope)
    skipped: List[SkippedNode] = []
    todo = _classify(adapter, nodes, places, want, drop, skipped)
    todo, settings = _plan(adapter, todo, nodes, staalif_options, T, skipped)

    seen: Dict[int, List[Seen]] = {key: [] for key, _, _ in todo}
    if todo and example_input is not None:
        with adapter.probe_state(scope):
            seen = probe(scope, example_input, {key: name for key, _, name in todo})
    elif todo and linear == "keep":
        warnings.warn(
            f"staa.convert without example_input cannot see which {adapter.plural} receive {adapter.flat_input} "
            f"inputs (after Linear layers), so linear='keep' cannot apply: all {len(todo)} selected "
            f"{adapter.noun}(s) become lazy STAALIF. Pass example_input{adapter.example_hint}, or linear='convert' "
            f"to convert them all without this warning",
            stacklevel=stacklevel + 1,
        )

    builds, flat = _size(adapter, todo, nodes, places, settings, seen, scope, parents, T, linear,
                         example_input is not None, skipped)
    replaced, new_modules = _build(adapter, builds, nodes, dry_run)
    report = ConvertReport(replaced, skipped, dry_run, flat)
    if dry_run:
        return report
    _swap(new_modules, nodes, places)
    result = scope._modules[""] if root_is_node else model
    earlier = model.__dict__.get("staa_report")
    if isinstance(earlier, ConvertReport) and not earlier.dry_run:
        report = report._merged_after(earlier)
    adapter.after_swap(result, [nodes[key] for key in new_modules])
    result.staa_report = report
    return result


# ---------------------------------------------------------------------------------- arguments
def validate(adapter: Adapter, model, example_input, T, linear, dry_run, staalif_options) -> Optional[int]:
    """Reject bad arguments before anything is looked at; returns ``T`` as an int (or None)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"staa.convert expects a torch.nn.Module, got {type(model).__name__}")
    bad = [k for k in adapter.not_options if k in staalif_options]
    if bad:
        raise TypeError(
            f"staa.convert sets {', '.join(bad)} of each STAALIF itself {adapter.not_options_why}; "
            f"remove {', '.join(repr(b) for b in bad)} from the options"
        )
    T = _check_T(T)
    if not isinstance(dry_run, bool):
        raise TypeError(f"staa.convert: dry_run must be True or False, got {dry_run!r}")
    if not isinstance(linear, str) or linear not in LINEAR_CHOICES:
        raise ValueError(
            f"staa.convert: linear must be 'keep' (leave {adapter.plural} after Linear layers as they are) or "
            f"'convert', got {linear!r}"
        )
    if example_input is not None and not isinstance(example_input, (torch.Tensor, tuple, list, dict)):
        raise TypeError(
            f"staa.convert: example_input must be a tensor{adapter.example_hint}, a tuple/list of positional inputs, "
            f"a dict of keyword inputs or None, got {type(example_input).__name__}"
        )
    allowed = set(inspect.signature(STAALIF.__init__).parameters) - {"self", "T", *adapter.not_options}
    unknown = sorted(set(staalif_options) - allowed)
    if unknown:
        raise TypeError(
            f"staa.convert got unknown STAALIF option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(allowed))}"
        )
    early = dict(staalif_options)
    if "surrogate" not in early and early.get("surrogate_alpha") is not None and early.get("surrogate_width") is None:
        early["surrogate"] = "atan"  # an alpha alone applies to each node's own smooth kind; check its value
    check_options(early, None, adapter.noun)  # each value, also when there is no node to convert
    return T


def _check_T(T) -> Optional[int]:
    """``T`` as an int: None, or a positive Python or numpy integer (not bool, not a float or tensor)."""
    if T is None:
        return None
    try:
        n = None if isinstance(T, (bool, torch.Tensor)) else operator.index(T)
    except TypeError:
        n = None
    if n is None or n < 1:
        raise ValueError(f"staa.convert: T must be a positive int (1, 2, ...) or None, got {T!r}")
    return int(n)


def check_options(settings: dict, name: Optional[str], noun: str = "node") -> None:
    """Let STAALIF validate the settings before the probe runs (a lazy module allocates
    nothing; fork_rng keeps its initialisers from moving the RNG)."""
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. v_threshold <= v_reset: STAALIF warns once more when built
            STAALIF(None, None, device="meta", **settings)
    except (TypeError, ValueError) as err:
        where = "" if name is None else f" for {noun} '{display(name)}'"
        raise type(err)(f"staa.convert: invalid STAALIF settings{where}: {err}") from err


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


# ---------------------------------------------------------------------------------- walk, classify, plan
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


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _classify(adapter: Adapter, nodes, places, want, drop, skipped: List[SkippedNode]):
    """The selected neurons the adapter converts, ``[(id, kind, name)]``; its other neurons and the
    excluded ones go to ``skipped``."""
    todo = []
    for key, child in nodes.items():
        names = [full for _, _, full in places[key]]
        name = names[0]
        kind = adapter.convertible(child)
        if kind is None:
            continue
        if isinstance(kind, str):
            skipped.append(SkippedNode(name, qualname(type(child)), kind))
            continue
        selected = (want is None or any(want(n, child) for n in names)) and not (
            drop is not None and any(drop(n, child) for n in names)
        )
        if not selected:
            skipped.append(SkippedNode(name, kind.exported_as, "excluded by include/exclude"))
            continue
        todo.append((key, kind, name))
    return todo


def surrogate_settings(sg: Surrogate) -> dict:
    """A :class:`Surrogate` as STAALIF's three surrogate arguments."""
    return {
        "surrogate": sg.kind,
        "surrogate_width": sg.param if sg.kind == "rect" else None,
        "surrogate_alpha": None if sg.kind == "rect" else sg.param,
    }


def _user_surrogate(carried: dict, options: dict) -> dict:
    """The surrogate settings when the caller passed any of ``surrogate``, ``surrogate_width``,
    ``surrogate_alpha``: the caller's choice replaces the node's surrogate as a whole (a width
    alone means the rectangle; an alpha alone sets the node's own smooth kind)."""
    given = {k: options[k] for k in SURROGATE_OPTIONS if k in options}
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
        out.update({k: carried[k] for k in SURROGATE_OPTIONS[1:]})  # the node's kind, no parameter: keep its own
    return out


def _sg(settings: dict) -> Surrogate:
    kind = settings["surrogate"]
    return Surrogate(kind, settings["surrogate_width"] if kind == "rect" else settings["surrogate_alpha"])


def _plan(adapter: Adapter, todo, nodes, staalif_options, T, skipped: List[SkippedNode]):
    """Each neuron's STAALIF settings (carried from it, then the options) and what was dropped;
    neurons that cannot convert go to ``skipped``. Returns the remaining ``todo`` and ``{id: (settings,
    dropped)}``."""
    settings = {}
    kept_todo = []
    for key, kind, name in todo:
        s, dropped, skip = adapter.settings(nodes[key], kind, name, staalif_options)
        if skip is not None:
            skipped.append(SkippedNode(name, kind.exported_as, skip))
            continue
        carried = dict(s)
        s.update(staalif_options)
        s.update(_user_surrogate(carried, staalif_options))
        overridden = [k for k in CARRIED if k in staalif_options and s[k] != carried[k]]
        if any(k in SURROGATE_OPTIONS for k in overridden):
            dropped.append(f"{_sg(carried).describe()} (overridden by the options)")
        dropped += [f"{k}={carried[k]!r} (overridden by the option {k}={s[k]!r})"
                    for k in overridden if k not in SURROGATE_OPTIONS]
        check_options(s, name, adapter.noun)
        if s["step_mode"] == "s" and T is None and s.get("pe", True):
            raise ValueError(adapter.missing_T(name))
        settings[key] = (s, dropped)
        kept_todo.append((key, kind, name))
    return kept_todo, settings


# ---------------------------------------------------------------------------------- size, build, swap
def _size(adapter: Adapter, todo, nodes, places, settings, seen, scope, parents, T, linear, probed: bool,
          skipped: List[SkippedNode]):
    """C, T, device and dtype of every neuron from what the probe saw; neurons without spatial
    positions are listed in ``flat`` (and skipped under ``linear='keep'``). Returns ``(builds, flat)``."""
    builds = []
    flat: List[FlatNode] = []
    for key, kind, name in todo:
        node = nodes[key]
        s, dropped = settings[key]
        s = dict(s)
        s.setdefault("sa_init_bias", sa_init_bias_for(seen[key]))  # an explicit option wins
        channels, node_T, reason = size_from_probe(name, s["step_mode"], seen[key], T)
        if reason is not None:
            skipped.append(SkippedNode(name, kind.exported_as, reason))
            continue
        _check_one_step_per_call(adapter, name, s, places[key])
        device, dtype = factory(scope, parents, node, seen[key])
        if seen[key] and is_flat(s["step_mode"], seen[key]):
            added = _added_params(node, channels, node_T, s)
            flat.append(FlatNode(name, kind.exported_as, channels, added, linear == "convert"))
            if linear == "keep":
                skipped.append(SkippedNode(
                    name, kind.exported_as,
                    f"no spatial positions (input {shape_text(seen[key][0].shape)}): kept by linear='keep'; "
                    f"STAA would add {added:,} parameters",
                ))
                continue
        if probed and not seen[key]:
            dropped = dropped + [adapter.lazy_note]
        builds.append((key, kind, name, channels, node_T, s, dropped, device, dtype))
    return builds, flat


def _check_one_step_per_call(adapter: Adapter, name: str, s: dict, places) -> None:
    """A single-step STAALIF with a position encoding counts one time step per call: one neuron
    registered at two places would advance twice per time step and read the wrong rows. (A neuron
    called several times per forward from one place cannot be told from a model that loops over
    time inside its forward, so only the registration is checked.)"""
    if s["step_mode"] != "s" or not s.get("pe", True) or len(places) < 2:
        return
    names = ", ".join(repr(full) for _, _, full in places)
    raise ValueError(
        f"staa.convert: single-step {adapter.noun} '{display(name)}' is registered at {len(places)} places "
        f"({names}); a single-step STAALIF counts one time step per call, so one module for several use sites "
        f"would advance its step {len(places)} times per time step and read the wrong position-encoding rows. "
        f"Give each use site its own {adapter.noun} (e.g. copy.deepcopy), pass pe=False, or exclude it "
        f"(exclude=[{name!r}])"
    )


def _added_params(node: nn.Module, channels: int, T: Optional[int], settings: dict) -> int:
    """The parameters a STAALIF for this node has, less the node's own (PLIF's tau)."""
    with torch.random.fork_rng(devices=[]):
        meta = STAALIF(channels, T if T is not None else 1, device="meta", **settings)
    own = sum(p.numel() for p in node.parameters())
    return sum(p.numel() for p in meta.parameters()) - own


def _describe_sg(sg: Surrogate) -> str:
    # the parameter may be None (the kind's default): show the default
    return Surrogate(sg.kind, DEFAULT_PARAM[sg.kind] if sg.param is None else float(sg.param)).describe()


def _build(adapter: Adapter, builds, nodes, dry_run: bool):
    """The new modules (none under ``dry_run``), initialised under a forked RNG, and the report rows.
    Returns ``(replaced, {id: new module})``."""
    replaced: List[ReplacedNode] = []
    new_modules = {}
    rng_devices = sorted({d.index or 0 for *_, d, _ in builds if d is not None and d.type == "cuda"})
    with torch.random.fork_rng(devices=rng_devices):
        for key, kind, name, channels, node_T, s, dropped, device, dtype in builds:
            if not dry_run:
                try:
                    staa = STAALIF(channels, node_T, device=device, dtype=dtype, **s)
                except (TypeError, ValueError) as err:
                    raise type(err)(
                        f"staa.convert: cannot build STAALIF for {adapter.noun} '{display(name)}': {err}"
                    ) from err
                new = adapter.replacement(staa, nodes[key])
                new.train(nodes[key].training)
                new_modules[key] = new
            replaced.append(ReplacedNode(name, kind.exported_as, channels, node_T, s["step_mode"], tuple(dropped),
                                         _describe_sg(_sg(s))))
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
