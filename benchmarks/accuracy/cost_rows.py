"""What each row of the long accuracy protocol costs: parameters, CPU time per training step, and the
bytes autograd keeps for backward.

    python benchmarks/accuracy/cost_rows.py [--steps 200] [--block 20]

Builds the long protocol's network (``run_ladder.ConvSNN``, static task, widths 32 and 64, batch 128)
once per row from the same seed and reports, per row:

* parameters of the whole network, and those the neurons add over the LIF network;
* CPU seconds per training step (forward, backward, Adam step on real batches of the protocol's training
  subset), all rows interleaved in blocks of ``--block`` steps with the order rotating from block to block
  (``time_epoch.interleaved_seconds_per_step``), the median over blocks;
* bytes saved for backward by one training forward (each storage once, parameters left out).

Writes ``accuracy-long-cost.json`` (read by ``make_report.py --long``) into ``--out``. Run it on an
otherwise idle machine (pause any accuracy runs): it uses one torch thread, like the runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (HERE, os.path.dirname(HERE)):  # this folder, and benchmarks/ for _memory
    if _path not in sys.path:
        sys.path.insert(0, _path)

import fmnist_events  # noqa: E402
import run_ladder  # noqa: E402
import time_epoch  # noqa: E402
from _memory import saved_tensor_bytes  # noqa: E402

LONG_ROWS = ("LIF", "IF+SA", "IF+SA+TSRD", "GC+PE+SA", "GC+PE+SA+TSRD")
# The long protocol's network and data (docs/results/accuracy-long-protocol.md); epochs do not matter here.
LONG_ARGS = ["--train-size", "20000", "--test-size", "0", "--batch-size", "128", "--lr", "0.001",
             "--widths", "32", "64", "--tasks", "static"]


def build_rows(rows, cfg: dict, seed: int = 0) -> dict:
    """name -> (model in train mode, Adam optimiser), every model built from ``seed``."""
    out = {}
    for v in rows:
        torch.manual_seed(seed)
        model = run_ladder.ConvSNN(v, 1, 28, cfg["static_T"], cfg["widths"]).train()
        out[v] = (model, torch.optim.Adam(model.parameters(), lr=cfg["lr"]))
    return out


def saved_bytes(model, x, y) -> int:
    """Bytes autograd saves for backward in one training forward of ``model`` on ``x`` (parameters excluded)."""
    _, n = saved_tensor_bytes(lambda inp: F.cross_entropy(model(inp), y), x, exclude=list(model.parameters()))
    return n


def measure(data, cfg: dict, rows=LONG_ROWS, steps: int = 200, block: int = 20, seed: int = 0, log=print) -> dict:
    models = build_rows(rows, cfg, seed)
    bs = cfg["batch_size"]
    x, y = data["x_train"][:bs], data["y_train"][:bs]
    lif_params = sum(p.numel() for p in models["LIF"][0].parameters()) if "LIF" in models else None
    out = {}
    for name, (model, _) in models.items():
        n_params = sum(p.numel() for p in model.parameters())
        torch.manual_seed(seed)
        out[name] = {"params": n_params,
                     "params_over_lif": None if lif_params is None else n_params - lif_params,
                     "saved_bytes_per_step": saved_bytes(model, x, y)}
        log(f"{name}: {n_params} parameters, {out[name]['saved_bytes_per_step'] / 2**20:.1f} MiB saved for backward")
    per_step = time_epoch.interleaved_seconds_per_step(models, data, "static", cfg, steps, block, seed, log=log)
    for name, secs in per_step.items():
        out[name]["seconds_per_step"] = statistics.median(secs)
        out[name]["per_block_seconds_per_step"] = secs
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=fmnist_events.DEFAULT_DATA_DIR)
    p.add_argument("--rows", nargs="+", default=list(LONG_ROWS))
    p.add_argument("--steps", type=int, default=200, help="training steps per row")
    p.add_argument("--block", type=int, default=20, help="training steps per timed block")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(run_ladder.REPO, "docs", "results"))
    p.add_argument("--train-size", type=int, default=None, help="override the protocol's train size (tests)")
    args = p.parse_args(argv)
    unknown = set(args.rows) - set(run_ladder.STATIC_VARIANTS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {run_ladder.STATIC_VARIANTS}")
    try:
        cfg, raw, record = time_epoch.timing_setup(args, LONG_ARGS, "cost_rows.py", argv)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    data = run_ladder.prepare_task("static", raw, cfg)
    record.update({
        "batch_size": cfg["batch_size"],
        "steps": args.steps,
        "block": args.block,
        "rows": measure(data, cfg, args.rows, args.steps, args.block, log=lambda m: print(m, flush=True)),
    })
    time_epoch.write_record(record, os.path.join(args.out, "accuracy-long-cost.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
