"""What ``staa.convert`` and ``staa.profile`` ask of a framework: the :class:`Adapter` interface.

An adapter answers a few questions about one framework's neurons (docs/convert.md, "Writing an
adapter"): which modules are its neurons and which of them convert, which settings and surrogate a
neuron carries, what replaces it, how a model's neurons are reset and how a step is counted. The
core (walk, classify, plan, probe, size, build, swap, report) asks only these questions, so it knows
no framework; an adapter imports the core, never the other way round, and never another adapter.
An adapter never imports its framework: it finds the classes in ``sys.modules``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import ContextManager, List, Optional, Tuple, Union

from torch import nn

#: The settings an adapter's :meth:`Adapter.settings` returns for a neuron (STAALIF arguments); the
#: caller's ``staalif_options`` may override them.
CARRIED = (
    "v_threshold", "v_reset", "detach_reset", "surrogate", "surrogate_width", "surrogate_alpha", "step_mode",
    "store_v_seq",
)


@dataclasses.dataclass(frozen=True)
class NeuronKind:
    """A neuron class an adapter converts.

    Attributes:
        exported_as: the class's public name, shown in the report
            (``"spikingjelly.activation_based.neuron.LIFNode"``, ``"snntorch.Leaky"``).
        kind: the adapter's own label for the neuron model (``"lif"``, ``"if"``, ...).
        step_mode: ``"m"`` or ``"s"`` when the class fixes its step mode, else ``None``.
    """

    exported_as: str
    kind: str
    step_mode: Optional[str] = None


class Adapter:
    """One framework as convert and profile see it. Subclass it and answer the questions below.

    Words used in convert's messages: ``noun`` names one neuron (``"node"``), ``plural`` several,
    ``example_hint`` says what ``example_input`` looks like, ``flat_input`` what a neuron's
    input without spatial positions looks like, ``not_options`` are the STAALIF
    arguments convert sets itself for this framework and ``not_options_why`` says why.
    """

    name = "framework"
    noun = "neuron"
    plural = "neurons"
    example_hint = ""
    flat_input = "[T, B, C]"
    not_options: Tuple[str, ...] = ("channels", "device", "dtype")
    not_options_why = "(from the probe, the node and the model)"
    lazy_note = "(not reached by the probe: sized at its first call)"

    # ------------------------------------------------------------------ which modules
    def loaded(self) -> bool:
        """Whether the framework is imported (a model holding its neurons has imported it)."""
        raise NotImplementedError

    def is_neuron(self, module: nn.Module) -> bool:
        """Whether ``module`` is a spiking neuron of this framework (convert's replacements included):
        profile gives it a spiking row, convert lists the ones it leaves alone."""
        raise NotImplementedError

    def convertible(self, module: nn.Module) -> Union[NeuronKind, str, None]:
        """A :class:`NeuronKind` for a neuron convert replaces; a reason (``str``) for a neuron of this
        framework it leaves alone (listed as skipped); ``None`` for anything else."""
        raise NotImplementedError

    def handles(self, model: nn.Module) -> bool:
        """Whether ``convert`` should use this adapter for ``model``: it holds one of its neurons."""
        return self.loaded() and any(self.is_neuron(m) for m in model.modules())

    # ------------------------------------------------------------------ settings and replacement
    def settings(self, node: nn.Module, kind: NeuronKind, name: str,
                 options: dict) -> Tuple[dict, List[str], Optional[str]]:
        """``(settings, dropped, skip)`` for one neuron: a value for every name in :data:`CARRIED`
        (the surrogate as ``surrogate``, ``surrogate_width``, ``surrogate_alpha``), notes on what
        STAALIF does not keep, and a reason to leave the neuron alone (else ``None``). ``options`` are
        the caller's STAALIF options (a surrogate given there replaces the neuron's)."""
        raise NotImplementedError

    def replacement(self, staalif: nn.Module, node: nn.Module) -> nn.Module:
        """The module put in the neuron's place; by default the STAALIF itself."""
        return staalif

    def missing_T(self, name: str) -> str:
        """The message when a single-step neuron is converted without ``T`` (position encoding on)."""
        return (f"staa.convert: {self.noun} '{name or '<model>'}' runs one time step per call, so STAALIF cannot "
                f"learn T from its input; pass T=<time steps per sequence>, or pe=False")

    # ------------------------------------------------------------------ state and steps
    def step_mode(self, module: nn.Module) -> str:
        """``"m"`` when one call of the neuron takes the whole sequence (output ``[T, B, ...]``),
        ``"s"`` when one call is one time step."""
        return "m" if getattr(module, "step_mode", "s") == "m" else "s"

    def reset(self, model: nn.Module) -> None:
        """Put every neuron of this framework in ``model`` back at rest, as the framework's own reset does."""
        raise NotImplementedError

    def probe_state(self, model: nn.Module) -> ContextManager:
        """A context around convert's sizing forward that puts back state ``kept_state`` does not
        (module attributes, buffers and RNG are kept already)."""
        return contextlib.nullcontext()

    def after_swap(self, model: nn.Module, old: List[nn.Module]) -> None:
        """Called once the replacements are in place (``old``: the replaced neurons)."""
