"""convert in practice: third-party spikingjelly networks, trained before and after ``staa.convert``.

Two networks we did not write (see third_party.py), each trained with its own loss (MSE
between the output firing rates and one-hot labels) and its own surrogate (ATan), on one
fixed schedule (SCHEDULE below), as:

* ``original``: the spikingjelly network as built;
* ``converted``: ``staa.convert(net, example_input)`` with convert's defaults;
* ``converted-linear``: ``staa.convert(net, example_input, linear="convert")``, which also
  converts the neurons after Linear layers (input ``[T, B, C]``, no spatial positions).

Each finished run is one JSON file in ``--out``; running the command again skips finished
runs, so an interrupted benchmark resumes where it stopped. Runs go one after another in
one process with one thread (timings from overlapping runs would not mean anything).

    python benchmarks/convert_practice/run.py                    # everything, then the page
    python benchmarks/convert_practice/run.py --nets csnn --variants original --seeds 0
    python benchmarks/convert_practice/make_report.py            # the page from the JSON files
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for p in (HERE, os.path.join(REPO, "benchmarks", "accuracy")):
    if p not in sys.path:
        sys.path.insert(0, p)

import third_party  # noqa: E402
from fmnist_events import DEFAULT_DATA_DIR, load_fashion_mnist  # noqa: E402

DEFAULT_OUT = os.path.join(REPO, "docs", "results", "convert-practice-runs")

# The one schedule every run uses. Fixed before the first converted run.
SCHEDULE = dict(
    T=4,                 # time steps (the CSNN example's default), direct encoding (image repeated)
    channels=32,         # conv channels of both networks (their scripts default to 128; CPU budget)
    train_images=10000,  # the first 10,000 Fashion-MNIST training images, shuffled per seed
    test_images=2000,    # the first 2,000 test images
    batch=64,
    epochs=1,
    optimizer="Adam",
    lr=1e-3,
    warmup_steps=5,      # steps left out of the time per training step
)
NETS = tuple(third_party.NETWORKS)
VARIANTS = ("original", "converted", "converted-linear", "converted-sa-default", "converted-linear-sa-default",
            "converted-sa-open", "converted-linear-sa-open")
# "-sa-default" / "-sa-open": step attention at nn.Linear's initialisation (gate about 0.5 at the start) or
# started open (sa_init_bias=3) for every node, instead of convert's per-node choice.
CONVERT_OPTIONS = {"original": None, "converted": {}, "converted-linear": {"linear": "convert"},
                   "converted-sa-default": {"sa_init_bias": None},
                   "converted-linear-sa-default": {"linear": "convert", "sa_init_bias": None},
                   "converted-sa-open": {"sa_init_bias": 3.0},
                   "converted-linear-sa-open": {"linear": "convert", "sa_init_bias": 3.0}}
SEEDS = (0, 1, 2)


def run_path(out: str, net: str, variant: str, seed: int) -> str:
    return os.path.join(out, f"{net}_{variant}_seed{seed}.json")


def _git() -> Dict[str, object]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        return {"commit": commit, "src_dirty": bool(dirty)}
    except OSError:
        return {"commit": None, "src_dirty": None}


def _data(data_dir: str):
    d = load_fashion_mnist(data_dir)
    n, m = SCHEDULE["train_images"], SCHEDULE["test_images"]
    to_float = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0).unsqueeze(1)  # noqa: E731
    return (to_float(d["train_images"][:n]), torch.from_numpy(d["train_labels"][:n].astype(np.int64)),
            to_float(d["test_images"][:m]), torch.from_numpy(d["test_labels"][:m].astype(np.int64)))


def build(net_name: str, variant: str, seed: int):
    """The network for one run, built and (for converted variants) converted under ``seed``."""
    builder, rates, _ = third_party.NETWORKS[net_name]
    T = SCHEDULE["T"]
    torch.manual_seed(seed)
    net = builder(T, SCHEDULE["channels"])
    report = None
    options = CONVERT_OPTIONS[variant]
    if options is not None:
        import staa

        staa.convert(net, third_party.example_input(net_name, T), T=T, **options)
        report = str(net.staa_report)
    return net, rates, report


def evaluate(net, rates, x, y, T: int, batch: int = 250) -> float:
    from spikingjelly.activation_based import functional

    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            functional.reset_net(net)
            correct += (rates(net, x[i:i + batch], T).argmax(1) == y[i:i + batch]).sum().item()
    functional.reset_net(net)
    return correct / len(x)


def train_one(net_name: str, variant: str, seed: int, data) -> dict:
    from spikingjelly.activation_based import functional

    x_train, y_train, x_test, y_test = data
    T, B = SCHEDULE["T"], SCHEDULE["batch"]
    net, rates, report = build(net_name, variant, seed)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=SCHEDULE["lr"])
    g = torch.Generator().manual_seed(seed)
    losses, step_times = [], []
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    for _ in range(SCHEDULE["epochs"]):
        order = torch.randperm(len(x_train), generator=g)
        net.train()
        for i in range(0, len(order), B):
            idx = order[i:i + B]
            t0 = time.perf_counter()
            loss = third_party.mse_onehot(rates(net, x_train[idx], T), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            functional.reset_net(net)
            step_times.append(time.perf_counter() - t0)
            losses.append(loss.item())
            if not np.isfinite(losses[-1]):
                break
    train_s = time.perf_counter() - t_start
    acc = evaluate(net, rates, x_test, y_test, T)
    timed = step_times[SCHEDULE["warmup_steps"]:]
    return {
        "net": net_name, "variant": variant, "seed": seed, "source": third_party.NETWORKS[net_name][2],
        "convert_options": CONVERT_OPTIONS[variant], "schedule": SCHEDULE,
        "test_accuracy": acc, "params": params,
        "step_s_mean": float(np.mean(timed)), "step_s_median": float(np.median(timed)), "steps": len(step_times),
        "train_s": train_s, "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
        "losses": [round(v, 5) for v in losses], "report": report,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor(), **_git(),
    }


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--data", default=DEFAULT_DATA_DIR)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-report", action="store_true", help="do not regenerate the results page at the end")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    data = _data(args.data)
    # seed-major order, so a stopped benchmark has complete seeds for every variant
    for seed in args.seeds:
        for net_name in args.nets:
            for variant in args.variants:
                path = run_path(args.out, net_name, variant, seed)
                if os.path.exists(path):
                    print(f"skip {os.path.basename(path)} (done)", file=sys.stderr)
                    continue
                print(f"run {net_name} {variant} seed {seed} ...", file=sys.stderr, flush=True)
                res = train_one(net_name, variant, seed, data)
                with open(path + ".tmp", "w") as f:
                    json.dump(res, f, indent=1)
                os.replace(path + ".tmp", path)
                print(f"  test accuracy {100 * res['test_accuracy']:.2f}%, {1000 * res['step_s_mean']:.0f} ms/step, "
                      f"{res['train_s']:.0f} s", file=sys.stderr, flush=True)
    if not args.no_report:
        import importlib.util

        # by path: benchmarks/accuracy (on sys.path for the data loader) has a make_report.py too
        spec = importlib.util.spec_from_file_location("convert_practice_report", os.path.join(HERE, "make_report.py"))
        report = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(report)
        report.main(["--runs", args.out])


if __name__ == "__main__":
    main()
