"""Models and workers for tests/test_convert*.py.

spikingjelly's zoo package ``spikingjelly.activation_based.model`` imports every zoo model in
its ``__init__``, and some of them need torchvision, which has no build matching the CPU
torch used here. The two model files the tests use, ``spiking_resnet.py`` and
``spiking_vgg.py``, take one name from torchvision: ``load_state_dict_from_url``, used only
to download pretrained weights. torchvision's own copy of that function is
``torch.hub.load_state_dict_from_url``, so :func:`load_zoo_file` runs the installed file
unchanged with a two-module stand-in for torchvision that points at the torch function,
only while the file executes. Nothing else in the files is replaced; the tests never ask
for pretrained weights.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types

import torch
from torch import nn


@contextlib.contextmanager
def _torchvision_hub_only():
    try:
        import torchvision  # noqa: F401  (a real install is used as is)

        yield
        return
    except ImportError:
        pass
    names = ("torchvision", "torchvision.models", "torchvision.models.utils")
    saved = {n: sys.modules.get(n) for n in names}
    root, models, utils = (types.ModuleType(n) for n in names)
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    root.models, models.utils = models, utils
    sys.modules.update(zip(names, (root, models, utils)))
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def load_zoo_file(name: str) -> types.ModuleType:
    """Execute ``spikingjelly/activation_based/model/<name>.py`` from the installed spikingjelly
    without importing the zoo package's ``__init__``."""
    import spikingjelly.activation_based as ab

    path = os.path.join(os.path.dirname(ab.__file__), "model", name + ".py")
    # Same package context as the real module, so its relative imports (``from .. import layer``) resolve.
    spec = importlib.util.spec_from_file_location(f"spikingjelly.activation_based.model.{name}", path)
    module = importlib.util.module_from_spec(spec)
    with _torchvision_hub_only():
        spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------- small nets
def conv_net(neuron_cls, step_mode="m", bn=True, **node_kw):
    """Conv -> [BN] -> node -> pool -> Conv -> node -> flatten -> Linear -> node ([T, B, C] at the end)."""
    from spikingjelly.activation_based import functional, layer

    net = nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1),
        *([layer.BatchNorm2d(6)] if bn else []),
        neuron_cls(**node_kw),
        layer.MaxPool2d(2),
        layer.Conv2d(6, 8, 3, padding=1),
        neuron_cls(**node_kw),
        layer.Flatten(),
        layer.Linear(8 * 2 * 2, 5),
        neuron_cls(**node_kw),
    )
    functional.set_step_mode(net, step_mode)
    return net


# ---------------------------------------------------------------------------------- DDP
def ddp_model(seed: int):
    """A converted model without BatchNorm (tsrd=0), identical for a given seed."""
    from spikingjelly.activation_based import neuron

    import staa

    torch.manual_seed(seed)
    net = conv_net(neuron.LIFNode, "m", bn=False, v_threshold=0.5)
    # Lazy nodes sized by one STAALIF forward: skips a probe through spikingjelly's LIF
    # (its first call in a process costs seconds), which the other tests cover.
    staa.convert(net, tsrd=0.0, backend="torch", linear="convert")
    with torch.no_grad():
        net(torch.zeros(3, 1, 2, 4, 4))
    # Random values everywhere (the value layers start at zero) so every block gets a gradient.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


def ddp_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 2, 4, 4, generator=g) * 2  # [T, B, C, H, W], B = 2 per rank
    y = torch.randint(0, 5, (4,), generator=g)
    return x, y


def ddp_loss(net, x, y):
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    rate = net(x).mean(0)  # [B, classes] firing rates
    return nn.functional.cross_entropy(rate * 4, y)


def sgd_step(net, x, y):
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    opt.zero_grad()
    ddp_loss(net, x, y).backward()
    opt.step()


def ddp_worker(rank: int, world: int, port: int, out_dir: str, seed: int):
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        net = ddp_model(seed)
        ddp = nn.parallel.DistributedDataParallel(net)
        x, y = ddp_batch(seed)
        half = x.shape[1] // world
        sl = slice(rank * half, (rank + 1) * half)
        sgd_step(ddp, x[:, sl], y[sl])
        torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
