"""Train a small Conv-SNN with STAA-LIF neurons on Fashion-MNIST, evaluate it, save and reload it.

    python docs/examples/train_fmnist.py                      # 1 epoch on the 60k training images
    python docs/examples/train_fmnist.py --steps 50           # a quick look: 50 training steps
    python docs/examples/train_fmnist.py --random-data        # no dataset needed

The data are the IDX files of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``; ``--data DIR`` for another folder). When they are
absent the script says so and uses random data (a fixed noisy pattern per class), so every
step still runs. Needs only torch and staa. See docs/training.md for what each part does.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import shlex
import struct
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import staa

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


# ----------------------------------------------------------------------------- data
def read_idx(path: str) -> torch.Tensor:
    """One IDX file (``.gz`` or plain) of unsigned bytes as a uint8 tensor of its stored shape."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def _find(folder: str, stem: str):
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def load_fmnist(folder: str = DEFAULT_DATA):
    """``(train_images, train_labels, test_images, test_labels)``: float images ``[N, 1, 28, 28]``
    in [0, 1] and int64 labels, or ``None`` when the four files are not in ``folder``."""
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    paths = [_find(folder, s) for s in stems]
    if None in paths:
        return None
    tr_x, tr_y, te_x, te_y = (read_idx(p) for p in paths)
    return tr_x[:, None].float() / 255, tr_y.long(), te_x[:, None].float() / 255, te_y.long()


def random_data(n_train: int = 2048, n_test: int = 512, seed: int = 0):
    """Stand-in data with the shapes of Fashion-MNIST: each class is a fixed random 28x28 pattern
    plus noise, so a network can learn it (and accuracy means something)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 1, 28, 28, generator=g)

    def draw(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = (templates[y] + 0.5 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)
        return x, y

    return (*draw(n_train), *draw(n_test))


def get_data(args):
    data = None if args.random_data else load_fmnist(args.data)
    if data is None:
        if not args.random_data:
            print(f"Fashion-MNIST not found in {args.data} (apt-get install dataset-fashion-mnist, or --data DIR); "
                  "using random data", file=sys.stderr)
        data = random_data(seed=args.seed)
    tr_x, tr_y, te_x, te_y = data
    if args.train_size:
        tr_x, tr_y = tr_x[: args.train_size], tr_y[: args.train_size]
    if args.test_size:
        te_x, te_y = te_x[: args.test_size], te_y[: args.test_size]
    return tr_x, tr_y, te_x, te_y


def batches(x, y, batch, shuffle, generator=None):
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch):
        idx = order[i : i + batch]
        yield x[idx], y[idx]


# ----------------------------------------------------------------------------- model
def encode(img: torch.Tensor, T: int, encoding: str) -> torch.Tensor:
    """Images ``[B, 1, 28, 28]`` -> inputs ``[T, B, 1, 28, 28]``.

    ``direct``: the same analog image at every step (the first conv + BN is the encoder).
    ``poisson``: rate coding, a pixel of intensity p spikes with probability p at each step."""
    x = img.unsqueeze(0).expand(T, *img.shape)
    if encoding == "poisson":
        x = (torch.rand_like(x) < x).to(img.dtype)
    return x


class SeqToANN(nn.Module):
    """Apply stateless layers (conv, BN, pooling) to ``[T, B, ...]`` as one ``[T * B, ...]`` batch."""

    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class ConvSNN(nn.Module):
    """conv3x3(1->c) BN STAALIF pool2 | conv3x3(c->2c) BN STAALIF pool2 | Linear(2c*7*7 -> 10), mean over T.

    The classifier reads the spikes of the last STAALIF; its output is averaged over the T steps.
    """

    def __init__(self, channels: int = 16, T: int = 4, **staalif_options):
        super().__init__()
        c = channels
        self.T = T
        self.conv1 = SeqToANN(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.sn1 = staa.STAALIF(c, T, **staalif_options)
        self.conv2 = SeqToANN(nn.MaxPool2d(2), nn.Conv2d(c, 2 * c, 3, padding=1, bias=False), nn.BatchNorm2d(2 * c))
        self.sn2 = staa.STAALIF(2 * c, T, **staalif_options)
        self.head = SeqToANN(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * c * 7 * 7, 10))

    def forward(self, x):  # [T, B, 1, 28, 28] -> logits [B, 10]
        x = self.sn1(self.conv1(x))
        x = self.sn2(self.conv2(x))
        return self.head(x).mean(0)


def reset_net(model: nn.Module) -> None:
    """Clear every neuron's state, as spikingjelly's ``functional.reset_net`` does."""
    for m in model.modules():
        if isinstance(m, staa.STAALIF):
            m.reset()


# ----------------------------------------------------------------------------- loops
@torch.no_grad()
def evaluate(model, x, y, args) -> float:
    model.eval()
    correct = 0
    for img, label in batches(x, y, args.eval_batch, shuffle=False):
        correct += (model(encode(img, args.T, args.encoding)).argmax(1) == label).sum().item()
        reset_net(model)
    return correct / len(x)


def train(args) -> dict:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    tr_x, tr_y, te_x, te_y = get_data(args)
    model = ConvSNN(args.channels, args.T)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    g = torch.Generator().manual_seed(args.seed)
    print(f"train {len(tr_x)} / test {len(te_x)} images, T={args.T}, batch {args.batch}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {torch.get_num_threads()} torch threads")
    t0 = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        seen = correct = 0
        for img, label in batches(tr_x, tr_y, args.batch, shuffle=True, generator=g):
            out = model(encode(img, args.T, args.encoding))
            loss = F.cross_entropy(out, label)
            opt.zero_grad()
            loss.backward()
            opt.step()
            reset_net(model)
            seen += len(label)
            correct += (out.argmax(1) == label).sum().item()
            step += 1
            if step % args.log_every == 0:
                print(f"  step {step}: loss {loss.item():.3f}, train accuracy so far {correct / seen:.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if args.steps and step >= args.steps:
                break
        sched.step()
        train_s = time.perf_counter() - t0
        train_acc = correct / max(seen, 1)
        acc = evaluate(model, te_x, te_y, args)
        print(f"epoch {epoch + 1}: train accuracy {train_acc:.4f}, test accuracy {acc:.4f}, "
              f"{train_s:.0f} s of training so far")
        if args.steps and step >= args.steps:
            break
    total_s = time.perf_counter() - t0

    # Checkpoint: weights, optimizer state and the settings needed to rebuild the model.
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "steps": step,
                "config": {"channels": args.channels, "T": args.T}}, args.checkpoint)
    ckpt = torch.load(args.checkpoint, map_location="cpu")
    fresh = ConvSNN(**ckpt["config"])
    fresh.load_state_dict(ckpt["model"])
    reloaded = evaluate(fresh, te_x, te_y, args)
    print(f"saved {args.checkpoint}; reloaded model: test accuracy {reloaded:.4f}"
          + (" (same)" if reloaded == acc else f" (differs from {acc:.4f}!)"))
    print(f"{step} steps in {total_s:.0f} s")
    result = {"steps": step, "test_accuracy": acc, "reloaded_accuracy": reloaded, "seconds": total_s,
              "train_seconds": train_s, "train_accuracy": train_acc}
    if args.results:
        write_results(args.results, "train_fmnist.py", result)
    return result


def write_results(path: str, script: str, result: dict) -> None:
    """``result`` as JSON at ``path``, with the command, the commit and the machine that produced it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    record = {
        "command": " ".join(["python", f"docs/examples/{script}", *map(shlex.quote, sys.argv[1:])]),
        "commit": commit,
        "machine": {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "staa": getattr(staa, "__version__", "unknown")},
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "results": result,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help=f"folder with the four IDX files (default {DEFAULT_DATA})")
    p.add_argument("--random-data", action="store_true", help="use random stand-in data even if the files exist")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training set (default 1)")
    p.add_argument("--steps", type=int, default=0, help="stop after this many training steps (default: no limit)")
    p.add_argument("--train-size", type=int, default=0, help="use the first N training images (default: all)")
    p.add_argument("--test-size", type=int, default=0, help="use the first N test images (default: all)")
    p.add_argument("--batch", type=int, default=64, help="training batch (default 64)")
    p.add_argument("--eval-batch", type=int, default=256, help="evaluation batch (default 256)")
    p.add_argument("--T", type=int, default=4, help="time steps (default 4)")
    p.add_argument("--channels", type=int, default=16, help="channels of the first conv (default 16)")
    p.add_argument("--encoding", choices=("direct", "poisson"), default="direct", help="input encoding (default direct)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--log-every", type=int, default=100, help="print the loss every N steps (default 100)")
    p.add_argument("--checkpoint", default="fmnist_staa.pt", help="where to save the model (default fmnist_staa.pt)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--results", default=None, help="also write the figures as JSON here, with command, commit, machine")
    return p


if __name__ == "__main__":
    train(parser().parse_args())
