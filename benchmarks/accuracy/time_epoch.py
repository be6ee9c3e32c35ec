"""Seconds per training epoch of the accuracy ladder's network: the module's op vs the reference.

The accuracy runs record their own epoch times, but they shared the machine with other work. This
script measures the one comparison the results page reports, on the large protocol's network, data
and batch size, with both implementations interleaved in one process:

    python benchmarks/accuracy/time_epoch.py [--tasks static event] [--steps 200] [--block 20]

For each task it builds the ConvSNN of ``run_ladder.py`` twice from the same seed (``--impl module``,
``--impl reference``), then alternates blocks of ``--block`` training steps (forward, backward, Adam
step on real batches), rotating which implementation goes first, until each has run ``--steps`` steps.
Seconds per epoch = median seconds per step over the blocks x steps per epoch (train size / batch).
Writes ``accuracy-large-timing.json`` (read by ``make_report.py --large``) into ``--out``.
Run it on an otherwise idle machine; it uses one torch thread, like the ladder.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fmnist_events  # noqa: E402
import run_ladder  # noqa: E402

# The large protocol (docs/results/accuracy-protocol.md) and the variant each task times.
LARGE_ARGS = ["--train-size", "20000", "--test-size", "0", "--epochs", "3", "--batch-size", "128",
              "--lr", "0.001", "--widths", "32", "64", "--event-T", "8"]
TIMED_VARIANT = {"static": "GC+PE+SA", "event": "STAA"}


def _model_pair(task: str, variant: str, cfg: dict, seed: int):
    T = cfg["static_T"] if task == "static" else cfg["event_T"]
    in_ch, size = (1, 28) if task == "static" else (2, cfg["event_size"])
    pair = {}
    for impl in run_ladder.IMPLS:
        torch.manual_seed(seed)
        model = run_ladder.ConvSNN(variant, in_ch, size, T, cfg["widths"], impl=impl).train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        pair[impl] = (model, opt)
    sa, sb = (m.state_dict() for m, _ in pair.values())
    if any(not torch.equal(sa[k], sb[k]) for k in sa):
        raise RuntimeError("the module and reference models did not start from the same weights")
    return pair


def _train_steps(model, opt, data, task, batches) -> float:
    t0 = time.perf_counter()
    for idx in batches:
        loss = F.cross_entropy(model(run_ladder._batch_input(data["x_train"][idx], task)), data["y_train"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / len(batches)


def interleaved_seconds_per_step(models: dict, data, task: str, cfg: dict, steps: int, block: int, seed: int = 0,
                                 warmup: int = 3, log=print) -> dict:
    """Train every model of ``models`` (name -> (model, optimiser)) in alternating blocks of ``block``
    steps until each has run ``steps`` steps; the order rotates from block to block and every model sees
    the same batches in a block. Returns name -> seconds per step of each block."""
    n, bs = len(data["y_train"]), cfg["batch_size"]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    steps_per_epoch = math.ceil(n / bs)

    def batches(k0, k):  # the epoch's batches in order, wrapping round
        return [perm[(j % steps_per_epoch) * bs:][:bs] for j in range(k0, k0 + k)]

    for model, opt in models.values():
        _train_steps(model, opt, data, task, batches(0, warmup))
    per_step = {name: [] for name in models}
    names = list(models)
    n_blocks = math.ceil(steps / block)
    for b in range(n_blocks):
        shift = b % len(names)
        for name in names[shift:] + names[:shift]:
            model, opt = models[name]
            per_step[name].append(_train_steps(model, opt, data, task, batches(warmup + b * block, block)))
        log(f"  {task} block {b + 1}/{n_blocks}: " + ", ".join(f"{i} {per_step[i][-1]:.3f} s/step" for i in names))
    return per_step


def time_task(task: str, data, cfg: dict, steps: int, block: int, seed: int = 0, warmup: int = 3, log=print) -> dict:
    """Interleaved blocks of training steps of both implementations; per-step seconds per block."""
    variant = TIMED_VARIANT[task]
    pair = _model_pair(task, variant, cfg, seed)
    per_step = interleaved_seconds_per_step(pair, data, task, cfg, steps, block, seed, warmup, log)
    steps_per_epoch = math.ceil(len(data["y_train"]) / cfg["batch_size"])
    out = {"task": task, "variant": variant, "steps_per_epoch": steps_per_epoch, "block": block,
           "blocks": math.ceil(steps / block), "per_step_seconds": per_step}
    for impl in pair:
        out[impl + "_seconds_per_epoch"] = statistics.median(per_step[impl]) * steps_per_epoch
    ratios = [r / m for m, r in zip(per_step["module"], per_step["reference"])]
    out["reference_over_module"] = statistics.median(ratios)
    return out


def timing_setup(args, protocol_args, script: str, argv=None):
    """(config, raw data, record header) for a timing script: the protocol's config (``--train-size``
    may override it, for tests), the Fashion-MNIST arrays (FileNotFoundError when missing) and the
    record's machine, start time and command. Sets the torch thread count."""
    torch.set_num_threads(args.threads)
    ladder_args = run_ladder.parse_args(list(protocol_args) + ["--data", args.data])
    if args.train_size is not None:
        ladder_args.train_size = args.train_size
    cfg = run_ladder.build_config(ladder_args)
    raw = fmnist_events.load_fashion_mnist(args.data)
    record = {
        "machine": dict(run_ladder.machine_info(args.threads),
                        machine=f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU, no training or "
                                "benchmark running beside it"),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"python benchmarks/accuracy/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    return cfg, raw, record


def write_record(record: dict, path: str) -> None:
    """Write a timing record as sorted, indented JSON (the results pages read it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=fmnist_events.DEFAULT_DATA_DIR)
    p.add_argument("--tasks", nargs="+", default=["static", "event"], choices=list(TIMED_VARIANT))
    p.add_argument("--steps", type=int, default=200, help="training steps per implementation and task")
    p.add_argument("--block", type=int, default=20, help="training steps per timed block")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(run_ladder.REPO, "docs", "results"))
    p.add_argument("--train-size", type=int, default=None, help="override the protocol's train size (tests)")
    args = p.parse_args(argv)
    try:
        cfg, raw, record = timing_setup(args, LARGE_ARGS, "time_epoch.py", argv)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    record["tasks"] = {}
    for task in args.tasks:
        data = run_ladder.prepare_task(task, raw, cfg)
        print(f"{task}: {TIMED_VARIANT[task]}, {len(data['y_train'])} train images, batch {cfg['batch_size']}", flush=True)
        record["tasks"][task] = time_task(task, data, cfg, args.steps, args.block, log=lambda m: print(m, flush=True))
        r = record["tasks"][task]
        print(f"{task}: module {r['module_seconds_per_epoch']:.1f} s/epoch, reference "
              f"{r['reference_seconds_per_epoch']:.1f} s/epoch, reference/module {r['reference_over_module']:.2f}",
              flush=True)
    write_record(record, os.path.join(args.out, "accuracy-large-timing.json"))
    return 0



if __name__ == "__main__":
    sys.exit(main())
