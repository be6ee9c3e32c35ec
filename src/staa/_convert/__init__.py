"""``staa.convert``: swap a framework's spiking neurons for :class:`staa.STAALIF`.

A private package: the framework-neutral core (:mod:`._core`, :mod:`._probe`, :mod:`._report`,
the interface :mod:`._adapter`) and one adapter per framework (:mod:`.spikingjelly`,
:mod:`.snntorch`). Adapters import the core; the core imports no adapter; only :data:`ADAPTERS`
below names them. No framework is imported: adapters find its classes in ``sys.modules``.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ._adapter import Adapter, NeuronKind
from ._core import LINEAR_CHOICES, Pattern, run
from ._probe import CONVERT_SA_INIT_BIAS, sa_init_bias_for
from ._report import ConvertReport, FlatNode, ReplacedNode, SkippedNode
from .snntorch import ADAPTER as SNNTORCH
from .spikingjelly import ADAPTER as SPIKINGJELLY

__all__ = ["convert", "ConvertReport", "ReplacedNode", "SkippedNode", "FlatNode", "LINEAR_CHOICES", "ADAPTERS",
           "Adapter", "NeuronKind", "CONVERT_SA_INIT_BIAS", "sa_init_bias_for"]

#: Every framework convert and profile know, in the order convert asks them whether they handle a
#: model; the last one (spikingjelly) takes models no other adapter claims.
ADAPTERS = (SNNTORCH, SPIKINGJELLY)


def adapter_for(model) -> Adapter:
    """The adapter that converts ``model``: the first that holds one of its neurons, else spikingjelly's."""
    if isinstance(model, nn.Module):
        for adapter in ADAPTERS[:-1]:
            if adapter.handles(model):
                return adapter
    return ADAPTERS[-1]


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
    r"""Replace the LIF neurons of a spikingjelly or snnTorch model with :class:`staa.STAALIF`, in place.

    Two frameworks: spikingjelly (LIF / PLIF / IF nodes, 2.x and 0.0.0.0.14) and snnTorch 1.0
    (``snntorch.Leaky``). Neither is imported by ``staa``; the model's own neurons tell which.
    Example (snnTorch: ``example_input`` is one step ``[B, C, H, W]`` and ``T`` is needed)::

        net = staa.convert(net, torch.zeros(1, 1, 28, 28), T=10)
        print(net.staa_report)

    Recognised (by class identity, only if spikingjelly is already imported):
    ``spikingjelly.activation_based.neuron.{LIFNode, ParametricLIFNode, IFNode}`` (2.x and
    0.0.0.0.14) and the legacy ``spikingjelly.clock_driven.neuron.{LIFNode, MultiStepLIFNode,
    ParametricLIFNode, MultiStepParametricLIFNode, IFNode, MultiStepIFNode}``. Subclasses
    (ILIF, LIAF, OTTT, SLTT, ...) and other spikingjelly neurons are left alone and reported.
    A model holding snnTorch neurons (snnTorch imported) is converted by the snnTorch adapter:
    each ``snntorch.Leaky`` becomes a ``Leaky`` holding a single-step STAALIF (docs/convert.md,
    section "snnTorch").

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
    return run(adapter_for(model), model, example_input, T, include, exclude, linear, dry_run, staalif_options,
               stacklevel=2)
