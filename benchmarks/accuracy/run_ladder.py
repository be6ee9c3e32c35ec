"""The STAA ablation ladder on Fashion-MNIST: static images and simulated events.

One small Conv-SNN, trained with one fixed protocol, once per neuron variant and seed:

* static task (direct encoding, T=4): LIF (tau=2), IF (STAALIF with every block off),
  IF+SA and IF+SA+TSRD (step attention alone, without and with TSRD), GC, GC+PE,
  GC+PE+SA, GC+PE+SA+TSRD;
* event task (N-MNIST-style events simulated from the same images, T=8 frames of
  ON/OFF counts): LIF, IF, IF+SA, STAA (GC+PE+SA+TSRD).

Each finished run is cached as one JSON file in ``--out``; running the command again
skips the finished runs, so an interrupted ladder resumes where it stopped. At the
end the results page (table and plot) is regenerated with ``make_report.py``.

    python benchmarks/accuracy/run_ladder.py                # the whole ladder
    python benchmarks/accuracy/run_ladder.py --tasks static --variants LIF IF --seeds 0
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fmnist_events  # noqa: E402
from staa import STAALIF  # noqa: E402
from staa._demo import MultiStepLIF  # noqa: E402  (the same LIF baseline as python -m staa)
from staa.reference import staa_lif_reference  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "docs", "results", "accuracy-runs")

STATIC_VARIANTS = ("LIF", "IF", "IF+SA", "IF+SA+TSRD", "GC", "GC+PE", "GC+PE+SA", "GC+PE+SA+TSRD")
EVENT_VARIANTS = ("LIF", "IF", "IF+SA", "STAA")
TASKS = {"static": STATIC_VARIANTS, "event": EVENT_VARIANTS}

# STAALIF block switches per variant name; "STAA" is the full neuron.
_STAA_BLOCKS = {
    "IF": dict(gc=False, pe=False, sa=False, tsrd=0.0),
    "IF+SA": dict(gc=False, pe=False, sa=True, tsrd=0.0),
    "IF+SA+TSRD": dict(gc=False, pe=False, sa=True, tsrd=0.1),
    "GC": dict(gc=True, pe=False, sa=False, tsrd=0.0),
    "GC+PE": dict(gc=True, pe=True, sa=False, tsrd=0.0),
    "GC+PE+SA": dict(gc=True, pe=True, sa=True, tsrd=0.0),
    "GC+PE+SA+TSRD": dict(gc=True, pe=True, sa=True, tsrd=0.1),
    "STAA": dict(gc=True, pe=True, sa=True, tsrd=0.1),
}


# ----------------------------------------------------------------------------- model
class ReferenceSTAALIF(STAALIF):
    """STAALIF whose multi-step forward runs the plain reference (:mod:`staa.reference`) on the
    same weights: the same neuron, the spec's implementation (``--impl reference``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode != "m" or self.has_uninitialized_params():
            return super().forward(x)
        T = x.shape[0]
        drop = self._draw_drop(T, 0, x.device)
        x4 = x.reshape(T, x.shape[1], x.shape[2], -1)
        return staa_lif_reference(x4, self.params(), drop, **self.cfg._asdict()).reshape(x.shape)


IMPLS = ("module", "reference")


def make_neuron(variant: str, channels: int, T: int, impl: str = "module") -> nn.Module:
    """The spiking nonlinearity of one variant, for ``channels`` channels and ``T`` steps.

    ``impl="module"`` uses ``staa.STAALIF`` as shipped; ``"reference"`` the same neuron run
    through ``staa.reference`` (slower, independent of the fast paths).
    """
    if variant == "LIF":
        return MultiStepLIF(tau=2.0)
    if variant not in _STAA_BLOCKS:
        raise ValueError(f"unknown variant {variant!r}; choose from LIF, {', '.join(_STAA_BLOCKS)}")
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose from {IMPLS}")
    cls = STAALIF if impl == "module" else ReferenceSTAALIF
    return cls(channels, T, **_STAA_BLOCKS[variant])


class ConvSNN(nn.Module):
    """[conv3x3 - BN - neuron - avgpool2] x len(widths) -> linear, logits averaged over T.

    Static input ``[B, C, H, W]`` is direct-encoded: the first conv-BN runs once and its
    output is repeated over the T steps. Event input is ``[T, B, C, H, W]``. BN normalises
    over time and batch together.
    """

    def __init__(self, variant: str, in_channels: int, size: int, T: int, widths: Sequence[int], num_classes: int = 10,
                 impl: str = "module"):
        super().__init__()
        self.T = T
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.neurons = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.convs.append(nn.Conv2d(c, w, 3, padding=1, bias=False))
            self.norms.append(nn.BatchNorm2d(w))
            self.neurons.append(make_neuron(variant, w, T, impl))
            c, size = w, size // 2
        self.head = nn.Linear(c * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # static image, direct encoding
            y = self.norms[0](self.convs[0](x))
            y = y.unsqueeze(0).expand(self.T, *y.shape)
        else:
            T, B = x.shape[:2]
            y = self.norms[0](self.convs[0](x.flatten(0, 1))).unflatten(0, (T, B))
        for i in range(len(self.convs)):
            if i > 0:
                T, B = y.shape[:2]
                y = self.norms[i](self.convs[i](y.flatten(0, 1))).unflatten(0, (T, B))
            s = self.neurons[i](y.contiguous())
            T, B = s.shape[:2]
            y = F.avg_pool2d(s.flatten(0, 1), 2).unflatten(0, (T, B))
        return self.head(y.flatten(2)).mean(0)


# ----------------------------------------------------------------------------- data
def fixed_subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """The same ``n`` indices out of ``n_total`` for every run (a seeded permutation prefix)."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def validation_subset(n_total: int, train_idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` fixed indices drawn from the training images that are NOT in the train subset, so a
    validation split never overlaps the images trained on (and never touches the test set)."""
    rest = np.setdiff1d(np.arange(n_total), train_idx)
    if n > len(rest):
        raise ValueError(f"--val-size {n} exceeds the {len(rest)} training images outside the train subset")
    return np.sort(np.random.default_rng(seed).permutation(rest)[:n])


def prepare_task(task: str, raw: Dict[str, np.ndarray], cfg: dict) -> Dict[str, torch.Tensor]:
    """Inputs and labels of one task on the fixed train subset and test set, plus a validation split
    (``x_val``, ``y_val``) from the unused training images when ``cfg["val_size"]`` is set."""
    tr = fixed_subset(len(raw["train_images"]), cfg["train_size"], cfg["subset_seed"])
    te = fixed_subset(len(raw["test_images"]), cfg["test_size"], cfg["subset_seed"] + 1)
    # (split name, source images, indices, event seed)
    splits = [("train", "train", tr, cfg["event_seed"]), ("test", "test", te, cfg["event_seed"] + 1)]
    if cfg.get("val_size"):
        va = validation_subset(len(raw["train_images"]), tr, cfg["val_size"], cfg["subset_seed"] + 2)
        splits.append(("val", "train", va, cfg["event_seed"] + 2))
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    out = {}
    for split, source, idx, seed in splits:
        out["y_" + split] = torch.as_tensor(raw[source + "_labels"][idx].astype(np.int64))
        if task == "static":
            out["x_" + split] = torch.as_tensor(raw[source + "_images"][idx], dtype=torch.float32)[:, None] / 255.0
        else:
            out["x_" + split] = fmnist_events.simulate_events(
                raw[source + "_images"][idx], T=cfg["event_T"], seed=seed, size=cfg["event_size"]
            )
    return out


def _batch_input(x: torch.Tensor, task: str) -> torch.Tensor:
    if task == "event":  # uint8 [B, T, 2, H, W] counts -> float [T, B, 2, H, W]
        return x.float().transpose(0, 1)
    return x


# ----------------------------------------------------------------------------- training
def plateaued(val_accs: Sequence[float], gain: float) -> bool:
    """True once the last epoch's validation accuracy is less than ``gain`` (a fraction, 0.001 = 0.1
    points) above the accuracy two epochs before it: the long protocol's rule for its epoch count."""
    return len(val_accs) >= 3 and val_accs[-1] - val_accs[-3] < gain


def _is_neuron(m: nn.Module) -> bool:
    return isinstance(m, (STAALIF, MultiStepLIF))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, batch: int = 256):
    """(accuracy, mean firing rate over every spiking neuron and step) on ``x``, ``y``."""
    model.eval()
    fired = [0.0, 0]

    def hook(_m, _inp, out):
        fired[0] += float(out.sum())
        fired[1] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if _is_neuron(m)]
    correct = 0
    try:
        for i in range(0, len(y), batch):
            logits = model(_batch_input(x[i : i + batch], task))
            correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    finally:
        for h in handles:
            h.remove()
    return correct / len(y), fired[0] / max(fired[1], 1)


def train_one(task: str, variant: str, seed: int, data: Dict[str, torch.Tensor], cfg: dict, log=print,
              impl: str = "module") -> dict:
    """Train and test one (task, variant, seed); returns the run record."""
    torch.manual_seed(seed)
    T = cfg["static_T"] if task == "static" else cfg["event_T"]
    in_ch, size = (1, 28) if task == "static" else (2, cfg["event_size"])
    model = ConvSNN(variant, in_ch, size, T, cfg["widths"], impl=impl)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    x_tr, y_tr = data["x_train"], data["y_train"]
    n, bs = len(y_tr), cfg["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * cfg["epochs"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * k / total_steps)))
    order_gen = torch.Generator().manual_seed(seed)
    epoch_times, epoch_log = [], []
    for epoch in range(cfg["epochs"]):
        model.train()
        perm = torch.randperm(n, generator=order_gen)
        t0 = time.perf_counter()
        loss_sum, correct = 0.0, 0
        for k in range(steps_per_epoch):
            idx = perm[k * bs : (k + 1) * bs]
            logits = model(_batch_input(x_tr[idx], task))
            loss = F.cross_entropy(logits, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y_tr[idx]).sum())
            if (k + 1) % max(1, steps_per_epoch // 4) == 0 and k + 1 < steps_per_epoch:
                el = time.perf_counter() - t0
                log(f"    epoch {epoch + 1} batch {k + 1}/{steps_per_epoch}  loss {loss_sum / ((k + 1) * bs):.3f}  "
                    f"{el:.0f}s, ~{el / (k + 1) * (steps_per_epoch - k - 1):.0f}s left in epoch")
        dt = time.perf_counter() - t0
        epoch_times.append(dt)
        entry = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n, "seconds": dt}
        line = f"    epoch {epoch + 1}/{cfg['epochs']}  loss {loss_sum / n:.3f}  train acc {correct / n:.4f}  {dt:.1f}s"
        if "x_val" in data:
            entry["val_acc"], _ = evaluate(model, data["x_val"], data["y_val"], task)
            line += f"  val acc {entry['val_acc']:.4f}"
        epoch_log.append(entry)
        log(line)
        if cfg.get("stop_gain") is not None and plateaued([e["val_acc"] for e in epoch_log], cfg["stop_gain"]):
            log(f"    validation gained less than {100 * cfg['stop_gain']:.2f} points over 2 epochs: stop")
            break
    extra = {}
    if cfg.get("eval_train"):  # accuracy on the training images in eval mode (no TSRD), for the train-test gap
        extra["train_eval_acc"], _ = evaluate(model, x_tr, y_tr, task)
        log(f"    train acc (eval mode) {extra['train_eval_acc']:.4f}")
    t0 = time.perf_counter()
    if cfg.get("stop_gain") is not None:
        # A run that chooses the epoch count never looks at the test set.
        acc, rate = None, None
        log("    epoch-count selection run: no test evaluation")
    else:
        acc, rate = evaluate(model, data["x_test"], data["y_test"], task)
        log(f"    test acc {acc:.4f}  firing rate {rate:.4f}  (eval {time.perf_counter() - t0:.1f}s)")
    eval_s = time.perf_counter() - t0
    return {
        **extra,
        "task": task,
        "variant": variant,
        "seed": seed,
        "test_acc": acc,
        "firing_rate": rate,
        "seconds_per_epoch": float(np.mean(epoch_times)),
        "eval_seconds": eval_s,
        "epochs": epoch_log,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


# ----------------------------------------------------------------------------- runner
def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(threads: int) -> dict:
    return {
        "git_commit": _git_commit(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), no GPU",
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "staa_backend": os.environ.get("STAA_BACKEND", "auto"),
    }


def run_path(out_dir: str, task: str, variant: str, seed: int) -> str:
    name = variant.replace("+", "-")
    return os.path.join(out_dir, f"{task}_{name}_seed{seed}.json")


def load_run(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def build_config(args) -> dict:
    return {
        "train_size": args.train_size,
        "test_size": args.test_size,
        "subset_seed": 0,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": 0.0,
        "optimizer": "Adam",
        "schedule": "cosine to 0 over all steps, per step",
        "widths": list(args.widths),
        "static_T": 4,
        "event_T": args.event_T,
        "event_size": 34,
        "event_seed": 0,
        "data_dir": os.path.abspath(args.data),
        # Added for the long protocol; left out when unset so earlier protocols' cached runs still match.
        **({"val_size": args.val_size} if args.val_size else {}),
        **({"stop_gain": args.stop_gain} if args.stop_gain is not None else {}),
        **({"eval_train": True} if args.eval_train else {}),
    }


def _protocol(cfg: dict) -> dict:
    """The part of the config that must match for a cached run to be reused."""
    return {k: v for k, v in cfg.items() if k != "data_dir"}


def run_ladder(args, log=print) -> List[dict]:
    torch.set_num_threads(args.threads)
    cfg = build_config(args)
    os.makedirs(args.out, exist_ok=True)
    # Seed-major order: an interrupted ladder still has every variant at the first seeds.
    plan = [(task, v, s) for s in args.seeds for task in args.tasks for v in args.variants_for(task)]
    todo, results = [], []
    for task, variant, seed in plan:
        cached = load_run(run_path(args.out, task, variant, seed))
        if cached is not None:
            if _protocol(cached["config"]) != _protocol(cfg):
                raise SystemExit(
                    f"{run_path(args.out, task, variant, seed)} was made with a different protocol "
                    f"({_protocol(cached['config'])}); pass another --out or delete the file to rerun it"
                )
            results.append(cached)
        else:
            todo.append((task, variant, seed))
    log(f"{len(plan)} runs planned, {len(plan) - len(todo)} cached in {args.out}, {len(todo)} to run")
    if not todo:
        return results
    raw = fmnist_events.load_fashion_mnist(args.data) if args.raw is None else args.raw
    prepared: Dict[str, Dict[str, torch.Tensor]] = {}
    started = time.perf_counter()
    for i, (task, variant, seed) in enumerate(todo):
        if task not in prepared:
            t0 = time.perf_counter()
            prepared[task] = prepare_task(task, raw, cfg)
            log(f"prepared {task} data: {len(prepared[task]['y_train'])} train, {len(prepared[task]['y_test'])} test "
                f"({time.perf_counter() - t0:.1f}s)")
        done = time.perf_counter() - started
        eta = "" if i == 0 else f", ~{done / i * (len(todo) - i) / 60:.0f} min left"
        log(f"[{i + 1}/{len(todo)}] {task} {variant} seed {seed}{eta}")
        record = train_one(task, variant, seed, prepared[task], cfg, log=log, impl=args.impl)
        record["config"] = cfg
        record["machine"] = machine_info(args.threads)
        record["machine"]["neuron_impl"] = args.impl if variant != "LIF" else "benchmark MultiStepLIF"
        record["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record["command"] = args.command
        write_json(run_path(args.out, task, variant, seed), record)
        results.append(record)
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=fmnist_events.DEFAULT_DATA_DIR, help="directory with the four Fashion-MNIST IDX files")
    p.add_argument("--out", default=DEFAULT_OUT, help="directory of the per-run JSON cache")
    p.add_argument("--report", default=os.path.join(REPO, "docs", "results"),
                   help="where accuracy.md and accuracy.png go ('' to skip the report)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--variants", nargs="+", default=None, help="subset of variants (default: the task's whole ladder)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", nargs="+", type=int, default=[16, 32])
    p.add_argument("--event-T", type=int, default=8)
    p.add_argument("--val-size", type=int, default=0,
                   help="validation images drawn from the training images outside the train subset; "
                        "validation accuracy is recorded after every epoch")
    p.add_argument("--stop-gain", type=float, default=None,
                   help="stop early once validation accuracy gains less than this fraction over 2 epochs "
                        "(needs --val-size; 0.001 = 0.1 points); --epochs is then the maximum")
    p.add_argument("--eval-train", action="store_true",
                   help="also record the accuracy on the training images in eval mode (train-test gap)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--impl", default="module", choices=IMPLS,
                   help="STAA neuron implementation: staa.STAALIF as shipped, or the same neuron via staa.reference")
    args = p.parse_args(argv)
    # The invocation that produced a run, as recorded in its JSON (run from the repository root).
    args.command = " ".join(["python benchmarks/accuracy/run_ladder.py",
                             *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if args.event_T < 8:
        p.error("--event-T must be >= 8")
    if args.stop_gain is not None and not args.val_size:
        p.error("--stop-gain needs a validation split (--val-size)")
    chosen = args.variants

    def variants_for(task):
        ladder = TASKS[task]
        return ladder if chosen is None else [v for v in ladder if v in chosen]

    if chosen is not None:
        unknown = set(chosen) - set(STATIC_VARIANTS) - set(EVENT_VARIANTS)
        if unknown:
            p.error(f"unknown variants {sorted(unknown)}; static: {STATIC_VARIANTS}, event: {EVENT_VARIANTS}")
    args.variants_for = variants_for
    args.raw = None
    return args


def main(argv=None, raw: Optional[Dict[str, np.ndarray]] = None) -> int:
    args = parse_args(argv)
    args.raw = raw

    def log(msg):
        print(msg, flush=True)

    try:
        run_ladder(args, log=log)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    if args.report:
        import make_report

        make_report.write_report(args.out, args.report, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
