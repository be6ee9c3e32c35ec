"""convert's sizing forward (the probe) and what it tells about each node: C, T, device, dtype and
whether a normalisation layer feeds it. Framework-neutral: it sees modules and tensors only."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .._blocks import is_uninitialized
from .._state import kept_state
from ._report import display

@dataclasses.dataclass
class Seen:
    """What the probe saw of one call of a watched node: its input's shape, device and dtype."""

    shape: Tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    after_norm: bool = False  # the module that ran just before the node was a normalisation layer


#: Step attention's initial fc2 bias in converted layers not preceded by a normalisation layer: the
#: gate starts at σ(3) ≈ 0.95, so the layer starts close to the node it replaces (docs/convert.md,
#: "Initialisation").
CONVERT_SA_INIT_BIAS = 3.0

# Normalisation layers: a neuron right after one of these gets step attention's default
# initialisation; elsewhere convert starts the gate open (see sa_init_bias_for). Layers that pass
# their input on unchanged in the probe's eval-mode forward (Dropout, Identity, Flatten; see
# _passes_through) are looked through: BatchNorm -> Dropout -> node counts as after a norm.
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def sa_init_bias_for(seen: List[Seen]) -> Optional[float]:
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


def probe(model: nn.Module, example_input, watched: Dict[int, str]) -> Dict[int, List[Seen]]:
    """One eval-mode, no-grad forward recording the input of every watched node.

    Training flags, buffers (BatchNorm statistics), spikingjelly/STAALIF neuron state and
    the RNG state are restored afterwards, also when the forward fails.
    """
    seen: Dict[int, List[Seen]] = {k: [] for k in watched}
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
            seen[id(m)].append(Seen(tuple(x.shape), x.device, x.dtype, isinstance(last_leaf[0], _NORM_LAYERS)))

    def leave(m, args, out):
        # Pop down to this module, in case an inner failure was caught by an outer forward.
        name = names_by_id[id(m)]
        while stack and stack.pop() != name:
            pass
        if not m._modules and (id(m) in seen or not _passes_through(m, args, out)):
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
                    f"module '{display(failed)}' ({type(failed_module).__name__}): {type(err).__name__}: {err}. "
                    f"Pass an input the model accepts as it is (e.g. [T, B, C, H, W] for a multi-step model)"
                ) from err
    finally:
        for h in handles:
            h.remove()
    return seen


# Layers that only pass values on (never rescale them) in eval mode.
_PASS_THROUGH = (nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten)


def _passes_through(m: nn.Module, args, out) -> bool:
    """Whether a layer passed its input on unchanged in the probe: torch's Dropout (eval mode),
    Identity, Flatten and Unflatten, or any layer that returned its input tensor itself (such as
    spikingjelly's Dropout in eval mode). Judged by type and identity, never by values (a
    BatchNorm given zeros returns zeros)."""
    if isinstance(m, _PASS_THROUGH):
        return True
    return bool(args) and isinstance(args[0], torch.Tensor) and out is args[0]


def _describe(example_input) -> str:
    if isinstance(example_input, torch.Tensor):
        return f"shape {list(example_input.shape)}"
    if isinstance(example_input, (tuple, list)):
        return ", ".join(_describe(x) for x in example_input)
    if isinstance(example_input, dict):
        return ", ".join(f"{k}: {_describe(v)}" for k, v in example_input.items())
    return type(example_input).__name__


# ---------------------------------------------------------------------------------- sizing
def size_from_probe(name: str, step_mode: str, seen: List[Seen], T: Optional[int]):
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
            f"staa.convert: node '{display(name)}' is called {len(seen)} times in one forward with inputs of "
            f"different channel count, T or rank ({shapes}); one STAALIF has one C and T. Give each call site "
            f"its own neuron, or exclude this node (exclude=[{name!r}])"
        )
    _, channels, probe_T = sizes.pop()
    if probe_T is not None:
        if T is not None and T < probe_T:
            raise ValueError(
                f"staa.convert: T={T} but node '{display(name)}' receives T={probe_T} steps "
                f"(input shape {list(seen[0].shape)}); pass T >= {probe_T} or leave T unset"
            )
        if T is None:
            T = probe_T
    return channels, T, None


def factory(model: nn.Module, parents: Dict[int, nn.Module], node: nn.Module, seen: List[Seen]):
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



def is_flat(step_mode: str, seen: List[Seen]) -> bool:
    """Whether the node's input has no spatial positions (``[T, B, C]`` or ``[B, C]``)."""
    return len(seen[0].shape) == (3 if step_mode == "m" else 2)


def shape_text(shape) -> str:
    return "[T, B, C]" if len(shape) == 3 else "[B, C]"
