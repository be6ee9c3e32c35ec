"""Two third-party spikingjelly networks (one in both step modes), loaded from the installed spikingjelly 2.0 files.

Neither file can be imported as it stands here: the example ``conv_fashion_mnist.py``
imports torchvision, tensorboard and spikingjelly's plotting module at the top, and the
zoo package ``spikingjelly.activation_based.model`` imports every zoo model (some need
torchvision) in its ``__init__``. So, without changing a line of either network:

* ``csnn``: the class ``CSNN`` is cut out of the installed ``examples/conv_fashion_mnist.py``
  with ``ast`` (its own source text, unchanged) and executed with the names the file
  imports for it (``torch``, ``nn``, ``neuron``, ``functional``, ``surrogate``, ``layer``).
  The example trains it with ``F.mse_loss(net(img), one_hot(label))`` (the forward returns
  the output neurons' firing rate), IF nodes with ``surrogate.ATan()``.
* ``plif_net``: the zoo file ``model/parametric_lif_net.py`` (it imports only
  ``from .. import layer``) is executed from its installed path under its own module
  name, without the zoo package's ``__init__`` (as tests/convert_helpers.py does).
  ``FashionMNISTNet`` is built as spikingjelly's own training example for this family
  (``examples/classify_dvsg.py``) builds ``DVSGestureNet``: ``spiking_neuron=neuron.LIFNode,
  surrogate_function=surrogate.ATan(), detach_reset=True``, multi-step, and trained with
  ``F.mse_loss(net(x_seq).mean(0), one_hot(label))``; its ``VotingLayer`` averages groups
  of 10 of the 100 output neurons into 10 class rates.
* ``plif_net_s``: the same network in the zoo's default single-step mode, called once per
  step (``[B, 1, 28, 28]`` each time) and averaged, as a single-step training loop does.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _sj_dir() -> str:
    import spikingjelly.activation_based as ab

    return os.path.dirname(ab.__file__)


def example_class(file_name: str, class_name: str):
    """The class ``class_name`` from ``spikingjelly/activation_based/examples/<file_name>``,
    executed from its own source text with spikingjelly's modules and torch in scope."""
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    path = os.path.join(_sj_dir(), "examples", file_name)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source, filename=path)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    module = ast.Module(body=[node], type_ignores=[])
    scope = dict(torch=torch, nn=nn, F=F, neuron=neuron, functional=functional, surrogate=surrogate, layer=layer,
                 __name__=f"spikingjelly.activation_based.examples.{file_name[:-3]}")
    exec(compile(module, path, "exec"), scope)
    return scope[class_name]


def zoo_module(name: str):
    """Execute ``spikingjelly/activation_based/model/<name>.py`` without the zoo package's ``__init__``."""
    path = os.path.join(_sj_dir(), "model", name + ".py")
    spec = importlib.util.spec_from_file_location(f"spikingjelly.activation_based.model.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------- networks
def build_csnn(T: int, channels: int) -> nn.Module:
    return example_class("conv_fashion_mnist.py", "CSNN")(T=T, channels=channels)


def csnn_rates(net: nn.Module, img: torch.Tensor, T: int) -> torch.Tensor:
    return net(img)  # CSNN repeats the image T times itself and returns the firing rate [B, 10]


def build_plif_net(T: int, channels: int) -> nn.Module:
    from spikingjelly.activation_based import functional, neuron, surrogate

    zoo = zoo_module("parametric_lif_net")
    net = zoo.FashionMNISTNet(channels=channels, spiking_neuron=neuron.LIFNode,
                              surrogate_function=surrogate.ATan(), detach_reset=True)
    functional.set_step_mode(net, "m")
    return net


def plif_net_rates(net: nn.Module, img: torch.Tensor, T: int) -> torch.Tensor:
    x_seq = img.unsqueeze(0).repeat(T, 1, 1, 1, 1)  # [T, B, 1, 28, 28], direct encoding
    return net(x_seq).mean(0)


def build_plif_net_s(T: int, channels: int) -> nn.Module:
    """``plif_net`` left in the step mode the zoo builds it in: single-step (spikingjelly's default)."""
    from spikingjelly.activation_based import neuron, surrogate

    zoo = zoo_module("parametric_lif_net")
    return zoo.FashionMNISTNet(channels=channels, spiking_neuron=neuron.LIFNode,
                               surrogate_function=surrogate.ATan(), detach_reset=True)


def plif_net_s_rates(net: nn.Module, img: torch.Tensor, T: int) -> torch.Tensor:
    return torch.stack([net(img) for _ in range(T)]).mean(0)  # one call per step, the same image each time


def mse_onehot(rates: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The loss both spikingjelly examples use."""
    return F.mse_loss(rates, F.one_hot(label, 10).to(rates.dtype))


# name -> (builder, rates, where it comes from)
NETWORKS: Dict[str, Tuple[Callable, Callable, str]] = {
    "csnn": (build_csnn, csnn_rates, "spikingjelly/activation_based/examples/conv_fashion_mnist.py: CSNN"),
    "plif_net": (build_plif_net, plif_net_rates,
                 "spikingjelly/activation_based/model/parametric_lif_net.py: FashionMNISTNet"),
    "plif_net_s": (build_plif_net_s, plif_net_s_rates,
                   "spikingjelly/activation_based/model/parametric_lif_net.py: FashionMNISTNet, single-step"),
}


def example_input(name: str, T: int, batch: int = 2) -> torch.Tensor:
    """The input each network's own forward takes, for ``staa.convert``'s sizing probe."""
    return torch.zeros(batch, 1, 28, 28) if name in ("csnn", "plif_net_s") else torch.zeros(T, batch, 1, 28, 28)
