"""Converted networks train to the same result before and after a change to ``staa.convert``.

Trains, at one fixed seed, the two converted networks of the practice benchmarks for a fixed number
of steps on Fashion-MNIST and prints, per network, the test accuracy, the last loss and a SHA-256 of
the trained state dict (the weights to the last bit):

* ``csnn``: spikingjelly's example CSNN (benchmarks/convert_practice, its schedule), converted;
* ``snntorch``: snnTorch's tutorial Conv-SNN (benchmarks/snntorch_practice, its schedule), converted.

It uses only public staa (``staa.convert``), so it runs against any checkout: put that checkout's
``src`` first on ``PYTHONPATH`` (the line ``staa from ...`` says which staa ran). Two runs whose
lines are identical trained identically::

    git worktree add /tmp/staa-before <commit before the change>
    PYTHONPATH=/tmp/staa-before/src python benchmarks/convert_practice/same_before_after.py --out before.json
    python benchmarks/convert_practice/same_before_after.py --out after.json
    diff before.json after.json     # only the "staa" path differs
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for p in (HERE, os.path.join(REPO, "benchmarks", "accuracy")):
    if p not in sys.path:
        sys.path.insert(0, p)


def _load(folder: str, name: str):
    """benchmarks/<folder>/run.py as a module of its own name (both folders have a run.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", folder, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(net) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _batches(n_train: int, batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n_train, generator=g) for _ in range(steps * batch // n_train + 1)])
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


def csnn(steps: int, seed: int, data) -> dict:
    import third_party
    from spikingjelly.activation_based import functional

    import staa

    practice = _load("convert_practice", "convert_practice_run")
    x_train, y_train, x_test, y_test = data
    T, B = practice.SCHEDULE["T"], practice.SCHEDULE["batch"]
    torch.manual_seed(seed)
    net = third_party.build_csnn(T, practice.SCHEDULE["channels"])
    staa.convert(net, third_party.example_input("csnn", T), T=T)
    opt = torch.optim.Adam(net.parameters(), lr=practice.SCHEDULE["lr"])
    net.train()
    for idx in _batches(len(x_train), B, steps, seed):
        loss = third_party.mse_onehot(third_party.csnn_rates(net, x_train[idx], T), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        functional.reset_net(net)
    acc = practice.evaluate(net, third_party.csnn_rates, x_test, y_test, T)
    return {"test_accuracy": acc, "last_loss": loss.item(), "state_sha256": _digest(net)}


def snntorch_net(steps: int, seed: int, data) -> dict:
    import snntorch.functional as SF

    import staa

    practice = _load("snntorch_practice", "snntorch_practice_run")
    x_train, y_train, x_test, y_test = data
    T, B = practice.SCHEDULE["T"], practice.SCHEDULE["batch"]
    net = practice.build(seed)
    staa.convert(net, x_train[:2], T=T)
    opt = torch.optim.Adam(net.parameters(), lr=practice.SCHEDULE["lr"], betas=(0.9, 0.999))
    loss_fn = SF.ce_rate_loss()
    net.train()
    for idx in _batches(len(x_train), B, steps, seed):
        loss = loss_fn(practice.forward_pass(net, x_train[idx], T), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = practice.evaluate(net, x_test, y_test)
    return {"test_accuracy": acc, "last_loss": loss.item(), "state_sha256": _digest(net)}


def _data(data_dir: str, n_train: int, n_test: int, random_data: bool):
    if random_data:  # a check of the script itself, without the data set
        g = torch.Generator().manual_seed(0)
        return (torch.rand(n_train, 1, 28, 28, generator=g), torch.randint(0, 10, (n_train,), generator=g),
                torch.rand(n_test, 1, 28, 28, generator=g), torch.randint(0, 10, (n_test,), generator=g))
    from fmnist_events import load_fashion_mnist

    d = load_fashion_mnist(data_dir)
    to_float = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0).unsqueeze(1)  # noqa: E731
    to_long = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return (to_float(d["train_images"][:n_train]), to_long(d["train_labels"][:n_train]),
            to_float(d["test_images"][:n_test]), to_long(d["test_labels"][:n_test]))


def main(argv=None) -> None:
    from fmnist_events import DEFAULT_DATA_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per network")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nets", nargs="+", choices=("csnn", "snntorch"), default=["csnn", "snntorch"])
    ap.add_argument("--train-images", type=int, default=10000)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--data", default=DEFAULT_DATA_DIR)
    ap.add_argument("--random-data", action="store_true", help="random images (checks the script, not staa)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import staa

    print(f"staa from {os.path.dirname(staa.__file__)}")
    data = _data(args.data, args.train_images, args.test_images, args.random_data)
    results = {"staa": os.path.dirname(staa.__file__), "steps": args.steps, "seed": args.seed}
    for name in args.nets:
        fn = csnn if name == "csnn" else snntorch_net
        results[name] = fn(args.steps, args.seed, data)
        r = results[name]
        print(f"{name}: test accuracy {r['test_accuracy']:.4f}, last loss {r['last_loss']:.6f}, "
              f"state sha256 {r['state_sha256']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
