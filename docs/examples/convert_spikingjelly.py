"""Convert a spikingjelly Conv-SNN to STAA-LIF with ``staa.convert`` and train it for a few steps.

    python docs/examples/convert_spikingjelly.py              # 100 steps on Fashion-MNIST
    python docs/examples/convert_spikingjelly.py --steps 5 --random-data

The network is built from spikingjelly's ``layer`` and ``neuron`` modules only (no model zoo,
no torchvision): install spikingjelly light with
``pip install --no-deps spikingjelly==2.0.0 && pip install numpy loguru packaging tqdm``.
The LIF nodes of the convolutional part become STAALIF; the LIF node after the hidden Linear
layer is kept (``exclude``), because on ``[T, B, C]`` inputs STAA-LIF costs an order of
magnitude more than a LIF (see docs/choosing-options.md). Data as in train_fmnist.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from spikingjelly.activation_based import functional, layer, neuron, surrogate

import staa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_fmnist import DEFAULT_DATA, batches, encode, load_fmnist, random_data, write_results  # noqa: E402


class CSNN(nn.Module):
    """A spikingjelly Conv-SNN for 1x28x28 images, written as a spikingjelly user would."""

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        lif = dict(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True)
        self.features = nn.Sequential(
            layer.Conv2d(1, c, 3, padding=1, bias=False), layer.BatchNorm2d(c), neuron.LIFNode(**lif),
            layer.MaxPool2d(2),
            layer.Conv2d(c, 2 * c, 3, padding=1, bias=False), layer.BatchNorm2d(2 * c), neuron.LIFNode(**lif),
            layer.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            layer.Flatten(), layer.Linear(2 * c * 7 * 7, 128), neuron.LIFNode(**lif), layer.Linear(128, 10),
        )

    def forward(self, x):  # [T, B, 1, 28, 28] in multi-step mode -> logits [B, 10]
        return self.classifier(self.features(x)).mean(0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help=f"folder with the four IDX files (default {DEFAULT_DATA})")
    p.add_argument("--random-data", action="store_true", help="use random stand-in data")
    p.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    p.add_argument("--batch", type=int, default=64, help="batch (default 64)")
    p.add_argument("--test-size", type=int, default=2000, help="test images to evaluate on (default 2000)")
    p.add_argument("--T", type=int, default=4, help="time steps (default 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=None, help="also write the figures as JSON here, with command, commit, machine")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = None if args.random_data else load_fmnist(args.data)
    if data is None:
        if not args.random_data:
            print(f"Fashion-MNIST not found in {args.data}; using random data", file=sys.stderr)
        data = random_data(seed=args.seed)
    tr_x, tr_y, te_x, te_y = data
    te_x, te_y = te_x[: args.test_size], te_y[: args.test_size]

    net = CSNN()
    functional.set_step_mode(net, "m")  # multi-step: every node sees [T, B, ...]
    # One probe forward sizes every STAALIF (C and T); the classifier's LIF node stays.
    staa.convert(net, torch.zeros(args.T, 1, 1, 28, 28), exclude="classifier.*")
    print(net.staa_report)

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)  # build the optimizer after converting
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    step = 0
    losses = {}
    while step < args.steps:
        for img, label in batches(tr_x, tr_y, args.batch, shuffle=True, generator=g):
            net.train()
            loss = F.cross_entropy(net(encode(img, args.T, "direct")), label)
            opt.zero_grad()
            loss.backward()
            opt.step()
            functional.reset_net(net)  # resets STAALIF and the remaining LIF node alike
            step += 1
            if step % 20 == 0 or step == args.steps:
                losses[step] = loss.item()
                print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if step >= args.steps:
                break

    net.eval()
    correct = 0
    with torch.no_grad():
        for img, label in batches(te_x, te_y, 256, shuffle=False):
            correct += (net(encode(img, args.T, "direct")).argmax(1) == label).sum().item()
            functional.reset_net(net)
    acc = correct / len(te_x)
    seconds = time.perf_counter() - t0
    print(f"test accuracy after {step} steps: {acc:.4f} on {len(te_x)} images ({seconds:.0f} s)")
    if args.results:
        write_results(args.results, "convert_spikingjelly.py",
                      {"steps": step, "test_images": len(te_x), "test_accuracy": acc, "seconds": seconds,
                       "loss_at_step": losses, "report": str(net.staa_report)})
    return acc


if __name__ == "__main__":
    main()
