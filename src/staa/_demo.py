"""The default network of ``python -m staa``: a small spiking ResNet for 3x32x32 images.

``DemoResNet(neuron="lif" | "staa", width=16, T=4)``::

    stem    conv3x3(3 -> w) BN neuron                               32x32
    block1  conv3x3(w -> w) BN neuron conv3x3 BN  (+ x)      neuron  32x32
    block2  conv3x3/2(w -> 2w) BN neuron conv3x3 BN (+ conv1x1/2 BN) neuron  16x16
    block3  conv3x3/2(2w -> 4w) BN neuron conv3x3 BN (+ conv1x1/2 BN) neuron  8x8
    head    mean over H, W -> Linear(4w -> 10), mean over T

The image ``[B, 3, 32, 32]`` is fed at every step (direct encoding); neurons run in
multi-step mode on ``[T, B, C, H, W]``, every other layer on ``[T * B, ...]``. The two
variants differ only in the neuron, and :func:`build_pair` gives them identical conv,
BN and head weights.
"""
from __future__ import annotations

import torch
from torch import nn

from .neuron import STAALIF
from .reference import rect_spike

Tensor = torch.Tensor


class MultiStepLIF(nn.Module):
    """Plain multi-step LIF neuron, the baseline STAALIF is compared with.

    For input currents ``X`` of shape ``[T, B, ...]``, with ``H_{-1} = v_reset``::

        V_t = H_{t-1} + (X_t - (H_{t-1} - v_reset)) / tau
        S_t = [V_t >= v_threshold]            (rectangular surrogate, as STAALIF)
        H_t = v_reset S_t + V_t (1 - S_t)     (hard reset)

    This is spikingjelly's ``LIFNode(tau, decay_input=True)`` with a rectangular surrogate
    of width ``surrogate_width``. It keeps no state between calls.
    """

    # staa.profile reports modules with this marker as spiking layers.
    is_spiking_neuron = True
    step_mode = "m"

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float = 0.0, surrogate_width: float = 1.0):
        super().__init__()
        if not tau > 1.0:
            raise ValueError(f"tau must be > 1, got {tau!r}")
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.v_reset = float(v_reset)
        self.surrogate_width = float(surrogate_width)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}"

    def forward(self, x: Tensor) -> Tensor:
        """Spikes ``[T, B, ...]`` for currents ``x`` ``[T, B, ...]``."""
        h = torch.full_like(x[0], self.v_reset)
        spikes = []
        for t in range(x.shape[0]):
            v = h + (x[t] - (h - self.v_reset)) / self.tau
            s = rect_spike(v, self.v_threshold, self.surrogate_width)
            h = self.v_reset * s + v * (1.0 - s)
            spikes.append(s)
        return torch.stack(spikes)


def _per_step(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a stateless layer to ``[T, B, ...]`` as one ``[T * B, ...]`` batch."""
    return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Spiking residual block: neuron(BN(conv(neuron(BN(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, neuron):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.sn1 = neuron(cout)
        self.conv2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None
        self.sn2 = neuron(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = _per_step(self.conv2, self.sn1(_per_step(self.conv1, x)))
        skip = x if self.shortcut is None else _per_step(self.shortcut, x)
        return self.sn2(y + skip)


class DemoResNet(nn.Module):
    """Small spiking ResNet for ``[B, 3, 32, 32]`` images; output logits ``[B, classes]``.

    Args:
        neuron: ``"lif"`` (:class:`MultiStepLIF`) or ``"staa"`` (:class:`staa.STAALIF`).
        width: channels of the first stage (then 2x and 4x).
        T: time steps.
        backend: STAALIF backend.
    """

    def __init__(self, neuron: str = "staa", width: int = 16, T: int = 4, classes: int = 10, backend: str = "auto"):
        super().__init__()
        if neuron == "lif":
            make = lambda c: MultiStepLIF()  # noqa: E731
        elif neuron == "staa":
            make = lambda c: STAALIF(c, T, backend=backend)  # noqa: E731
        else:
            raise ValueError(f"neuron must be 'lif' or 'staa', got {neuron!r}")
        self.T = T
        w = width
        self.stem = _conv_bn(3, w, 3, 1)
        self.sn0 = make(w)
        self.block1 = BasicBlock(w, w, 1, make)
        self.block2 = BasicBlock(w, 2 * w, 2, make)
        self.block3 = BasicBlock(2 * w, 4 * w, 2, make)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, img: Tensor) -> Tensor:
        if img.dim() != 4:
            raise ValueError(f"DemoResNet expects images [B, C, H, W], got shape {list(img.shape)}")
        x = img.unsqueeze(0).expand(self.T, *img.shape)
        x = self.sn0(_per_step(self.stem, x))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(x.mean(dim=(3, 4))).mean(dim=0)


def build_pair(width: int = 16, T: int = 4, backend: str = "auto", seed: int = 0, device=None):
    """``(lif_net, staa_net)`` with identical conv, BN and head weights."""
    torch.manual_seed(seed)
    lif = DemoResNet("lif", width, T)
    staa = DemoResNet("staa", width, T, backend=backend)
    missing, unexpected = staa.load_state_dict(lif.state_dict(), strict=False)
    if unexpected or not all(".sn" in k or k.startswith("sn") for k in missing):
        raise RuntimeError(f"the two demo networks differ outside the neurons: {missing}, {unexpected}")
    return lif.to(device), staa.to(device)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, img: Tensor) -> None:
    """Set every BN's running statistics to those of ``img`` (one forward in train mode),
    so that the untrained network fires at realistic rates in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = [m.training for m in model.modules()]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    model(img)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    for m, flag in zip(model.modules(), was_training):
        m.training = flag


def neuron_layers(model: nn.Module):
    """The neuron modules of a :class:`DemoResNet`."""
    return [m for m in model.modules() if isinstance(m, (MultiStepLIF, STAALIF))]


def example_images(batch: int, device=None, seed: int = 0) -> Tensor:
    """A fixed batch of standard-normal images ``[batch, 3, 32, 32]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g).to(device)
