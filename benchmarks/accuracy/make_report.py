"""Build the accuracy results page (markdown table and plot) from the per-run JSON files.

    python benchmarks/accuracy/make_report.py [--runs docs/results/accuracy-runs] [--out docs/results]
    python benchmarks/accuracy/make_report.py --large
    python benchmarks/accuracy/make_report.py --long

Writes ``accuracy.md`` and ``accuracy.png`` (the small protocol), or with ``--large``
``accuracy-large.md`` and ``accuracy-large.png`` from the large protocol's runs, its
reference runs and ``accuracy-large-timing.json`` (the plot needs matplotlib; without it only
the page is written). Every number on the page is computed from the run files; runs that
are planned but missing are listed as missing.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

STATIC_VARIANTS = ("LIF", "IF", "GC", "GC+PE", "GC+PE+SA", "GC+PE+SA+TSRD")
EVENT_VARIANTS = ("LIF", "IF", "STAA")
TASKS = {"static": STATIC_VARIANTS, "event": EVENT_VARIANTS}  # the small protocol's ladder
# The large protocol's ladder: the small one plus step attention alone, without and with TSRD.
LARGE_TASKS = {
    "static": ("LIF", "IF", "IF+SA", "IF+SA+TSRD", "GC", "GC+PE", "GC+PE+SA", "GC+PE+SA+TSRD"),
    "event": ("LIF", "IF", "IF+SA", "STAA"),
}
LONG_ROWS = ("LIF", "IF+SA", "IF+SA+TSRD", "GC+PE+SA", "GC+PE+SA+TSRD")  # the long protocol, static task
FULL = {"static": "GC+PE+SA+TSRD", "event": "STAA"}  # the paper's neuron on each task
# The ladder's steps (each adds a block or blocks); pairs whose rows have no runs are left out.
STEPS = {
    "static": [("LIF", "IF"), ("IF", "GC"), ("GC", "GC+PE"), ("GC+PE", "GC+PE+SA"), ("GC+PE+SA", "GC+PE+SA+TSRD"),
               ("IF", "IF+SA"), ("IF+SA", "GC+PE+SA"), ("IF+SA", "IF+SA+TSRD")],
    "event": [("LIF", "IF"), ("IF", "STAA"), ("IF", "IF+SA"), ("IF+SA", "STAA")],
}
# What a step adds, where the name of its upper row does not say it.
STEP_ADDS = {
    ("IF", "IF+SA"): "SA alone",
    ("IF+SA", "GC+PE+SA"): "GC+PE on top of SA",
    ("IF+SA", "IF+SA+TSRD"): "TSRD on IF+SA",
    ("IF+SA", "STAA"): "GC+PE+TSRD on top of SA",
}
TASK_TITLES = {
    "static": "Fashion-MNIST, static images (direct encoding, T=4)",
    "event": "Fashion-MNIST, events simulated from the images (T=8)",
}
NEURONS = {
    "LIF": "LIF, tau=2, hard reset",
    "IF": "STAALIF, all blocks off (no leak, no attention)",
    "IF+SA": "STAALIF, sa",
    "IF+SA+TSRD": "STAALIF, sa, tsrd=0.1",
    "GC": "STAALIF, gc",
    "GC+PE": "STAALIF, gc+pe",
    "GC+PE+SA": "STAALIF, gc+pe+sa",
    "GC+PE+SA+TSRD": "STAALIF, gc+pe+sa, tsrd=0.1",
    "STAA": "STAALIF, gc+pe+sa, tsrd=0.1",
}
PLOT_TITLES = {
    "static": "Fashion-MNIST static images (T=4)",
    "event": "Events simulated from Fashion-MNIST (T=8)",
}
REPRODUCE = "python benchmarks/accuracy/run_ladder.py"


def load_runs(runs_dir: str) -> List[dict]:
    runs = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def summarize(runs: List[dict]) -> Dict[Tuple[str, str], dict]:
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["variant"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        acc = [100.0 * r["test_acc"] for r in rs]
        m, s = mean_std(acc)
        out[key] = {
            "n": len(rs),
            "seeds": [r["seed"] for r in rs],
            "acc": acc,
            "mean": m,
            "std": s,
            "sec_epoch": mean_std([r["seconds_per_epoch"] for r in rs])[0],
            "sec_epochs": [r["seconds_per_epoch"] for r in rs],
            "rate": mean_std([r["firing_rate"] for r in rs])[0],
            "n_params": rs[0].get("n_params"),
        }
    return out


def _fmt_acc(st: dict) -> str:
    if st["n"] < 2:
        return f"{st['mean']:.2f} (1 seed)"
    return f"{st['mean']:.2f} ± {st['std']:.2f}"


def _ladder_steps(task: str) -> List[Tuple[str, str]]:
    """The ladder's steps, then the baseline against the full neuron."""
    return STEPS[task] + [("LIF", FULL[task])]


def _added(a: str, b: str) -> str:
    """What the step ``a -> b`` adds, for the summary."""
    return STEP_ADDS.get((a, b)) or (b[len(a) + 1:] if b.startswith(a + "+") else b)


def _compare(sa: dict, sb: dict) -> Tuple[float, Optional[float]]:
    diff = sb["mean"] - sa["mean"]
    if sa["n"] < 2 or sb["n"] < 2:
        return diff, None
    return diff, math.sqrt(sa["std"] ** 2 / sa["n"] + sb["std"] ** 2 / sb["n"])


def summary_lines(summary: Dict[Tuple[str, str], dict]) -> List[str]:
    """Plain-language summary computed from the numbers (no hand-written claims)."""
    out = []
    for task in TASKS:
        full = FULL[task]
        pairs = [(a, b) for a, b in _ladder_steps(task) if (task, a) in summary and (task, b) in summary]
        if not pairs:
            continue
        clear, noise, negative, rate = [], [], [], []
        for a, b in pairs:
            diff, se = _compare(summary[(task, a)], summary[(task, b)])
            name = f"{a} → {b}"
            if diff < 0:
                negative.append(f"{name} ({diff:+.2f})")
            if se is not None and (se == 0.0 or abs(diff) > 2.0 * se):
                clear.append(f"{name} ({diff:+.2f} ± {se:.2f})")
            elif se is not None and abs(diff) <= se:
                noise.append(name)
            ra, rb = summary[(task, a)]["rate"], summary[(task, b)]["rate"]
            if ra > 0 and (rb / ra > 1.25 or rb / ra < 0.8) and (a, b) != ("LIF", full):
                rate.append(f"{name} {ra:.3f} → {rb:.3f}")
        parts = [f"**{task.capitalize()}**:"]
        if ("LIF", full) in pairs:
            diff, se = _compare(summary[(task, "LIF")], summary[(task, full)])
            se_text = "" if se is None else f" (standard error {se:.2f})"
            parts.append(f"full STAA ({full}) vs the LIF baseline {diff:+.2f} points{se_text}.")
        parts.append("Steps beyond twice their standard error: " + (", ".join(clear) or "none") + ".")
        parts.append("Steps within one standard error (seed noise at this scale): " + (", ".join(noise) or "none") + ".")
        parts.append("Steps that lowered the mean: " + (", ".join(negative) or "none") + ".")
        if rate:
            parts.append("Firing rate changed by more than 25% at: " + "; ".join(rate) + ".")
        out.append("- " + " ".join(parts))
    return out


def _step_text(a: str, b: str, sa: dict, sb: dict) -> str:
    diff = sb["mean"] - sa["mean"]
    if sa["n"] < 2 or sb["n"] < 2:
        return f"- {a} → {b}: {diff:+.2f} points (too few seeds to compare with the seed spread)."
    se = math.sqrt(sa["std"] ** 2 / sa["n"] + sb["std"] ** 2 / sb["n"])
    if se == 0.0 or abs(diff) > 2.0 * se:
        verdict = "larger than twice the standard error of the difference"
    elif abs(diff) > se:
        verdict = "between one and two standard errors of the difference: suggestive, not conclusive"
    else:
        verdict = "within one standard error of the difference: not distinguishable from seed noise here"
    return f"- {a} → {b}: {diff:+.2f} points (standard error {se:.2f}); {verdict}."


def _binomial_se(summary: Dict[Tuple[str, str], dict], n_test) -> float:
    """Binomial standard error (points) of an accuracy near the mean of all rows on ``n_test`` images."""
    if not summary or not n_test:
        return float("nan")
    p = sum(st["mean"] for st in summary.values()) / len(summary) / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n_test)


SMALL_SUPTITLE = "Mean ± std over seeds (dots: single seeds); small Conv-SNN, train subset, few epochs"
LARGE_SUPTITLE = ("Large protocol: mean ± std over 5 seeds (dots: single seeds); 20k train images, 3 epochs, "
                  "full test set")


def plot(summary: Dict[Tuple[str, str], dict], path: str, suptitle: str = SMALL_SUPTITLE, tasks=TASKS) -> bool:
    """One panel per task: mean test accuracy per variant with ±1 std error bars and the seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [2, 1]})
    for ax, (task, variants) in zip(axes, tasks.items()):
        xs, labels = [], []
        for i, v in enumerate(variants):
            labels.append(v.replace("+", "+\n"))
            st = summary.get((task, v))
            if st is None:
                ax.text(i, 0.5, "missing", transform=ax.get_xaxis_transform(), ha="center", color="gray")
                continue
            color = "tab:gray" if v in ("LIF", "IF") else "tab:blue"
            ax.errorbar(i, st["mean"], yerr=st["std"], fmt="o", color=color, capsize=5, markersize=7)
            ax.scatter([i + 0.12] * len(st["acc"]), st["acc"], s=10, color="black", alpha=0.5, zorder=3)
            ax.annotate(f"{st['mean']:.2f}", (i, st["mean"] + st["std"]), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=7)
            xs.append(i)
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(PLOT_TITLES[task], fontsize=9)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.5, len(variants) - 0.5)
        ax.margins(y=0.12)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def events_figure(data_dir: str, path: str, n: int = 3, T: int = 8) -> None:
    """Plot ``n`` test images next to their ``T`` simulated event frames (ON red, OFF blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sys.path.insert(0, HERE)
    import fmnist_events

    raw = fmnist_events.load_fashion_mnist(data_dir)
    images = raw["test_images"][:n]
    frames = fmnist_events.simulate_events(images, T=T, seed=1).float().numpy()
    fig, axes = plt.subplots(n, T + 1, figsize=(1.3 * (T + 1), 1.45 * n))
    for i in range(n):
        axes[i, 0].imshow(images[i], cmap="gray")
        for t in range(T):
            on, off = frames[i, t, 0], frames[i, t, 1]
            scale = max(float(frames[i].max()), 1.0)
            rgb = np.stack([on / scale, np.zeros_like(on), off / scale], axis=-1)
            axes[i, t + 1].imshow(np.clip(rgb * 2.0, 0.0, 1.0))
            if i == 0:
                axes[i, t + 1].set_title(f"t={t}", fontsize=8)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Simulated events (ON red, OFF blue) from Fashion-MNIST test images along a three-leg saccade",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(runs: List[dict], plot_name: str = "accuracy.png", plotted: bool = True,
           events_png: Optional[str] = None) -> str:
    summary = summarize(runs)
    cfg = runs[0]["config"] if runs else {}
    machine = runs[0].get("machine", {}) if runs else {}
    seeds_planned = sorted({r["seed"] for r in runs}) or [0, 1, 2]
    seeds_planned = sorted(set(seeds_planned) | {0, 1, 2})
    lines = [
        "# Accuracy, small protocol: the STAA ablation ladder on Fashion-MNIST",
        "",
        "**Every number on this page comes from the small protocol** (the settings under Protocol below: a training "
        "subset, few epochs, a test subset). Its standard errors are about as large as the effects. The "
        "[large protocol](accuracy-large.md) (20,000 training images, 3 epochs, the full test set, 5 seeds, the "
        "module's own op), fixed to make them small, answers the same questions there.",
        "",
        "The paper's Table 4 adds the STAA blocks one at a time to a LIF network (CIFAR-100, ResNet-20, T=4:",
        "LIF 72.30 → +GC 73.22 → +PE 73.79 → +SA 74.78 → +TSRD 75.10). This page runs the same ladder at a scale",
        "a 2-core CPU can train: a small Conv-SNN on a subset of Fashion-MNIST for a few epochs. It shows what the",
        "blocks do at this scale, not what they do on CIFAR-100; read the differences against the seed spread.",
        "",
        "**The event task uses simulated events.** No event-camera recording is involved: each real Fashion-MNIST",
        "image is moved along a three-leg saccade (as N-MNIST was recorded), log-intensity changes beyond a contrast",
        "threshold become ON/OFF events, and the events are binned into frames "
        "(`benchmarks/accuracy/fmnist_events.py`).",
        "",
    ]
    if not runs:
        lines += ["No finished runs yet.", "", "Reproduce with:", "", "```", REPRODUCE, "```", ""]
        return "\n".join(lines)
    summ = summary_lines(summary)
    if summ:
        lines += ["## Summary", "", "Computed from the tables below (accuracy differences in points):", ""] + summ + [""]
    if plotted:
        lines += [f"![test accuracy per variant, one panel per task]({plot_name})", ""]
    missing = []
    for task, variants in TASKS.items():
        lines += [f"## {TASK_TITLES[task]}", ""]
        if task == "event" and events_png:
            lines += [f"![simulated event frames of three test images]({events_png})", ""]
        lines += [
            "| variant | neuron | seeds | test accuracy % (mean ± std) | per seed | train s / epoch | firing rate | params |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in variants:
            st = summary.get((task, v))
            if st is None:
                lines.append(f"| {v} | {NEURONS[v]} | 0 | missing | | | | |")
                missing += [f"{task} {v} seed {s}" for s in seeds_planned]
                continue
            missing += [f"{task} {v} seed {s}" for s in seeds_planned if s not in st["seeds"]]
            per_seed = ", ".join(f"{a:.2f}" for a in st["acc"])
            lines.append(
                f"| {v} | {NEURONS[v]} | {st['n']} | {_fmt_acc(st)} | {per_seed} | {st['sec_epoch']:.1f} | "
                f"{st['rate']:.3f} | {st['n_params']} |"
            )
        lines.append("")
        steps = _ladder_steps(task)
        text = [_step_text(a, b, summary[(task, a)], summary[(task, b)])
                for a, b in steps if (task, a) in summary and (task, b) in summary]
        if text:
            n_max = max(summary[(task, v)]["n"] for v in variants if (task, v) in summary)
            lines += [f"Differences of the means (standard error from the two seed spreads; with {n_max} seeds it is "
                      "itself rough, so read twice the standard error as a screening line, not a significance test):", ""]
            lines += text + [""]
    if missing:
        lines += ["## Missing runs", "", "These planned runs have not finished; they are not in the tables:", ""]
        lines += [f"- {m}" for m in missing] + [""]
    n_tr, n_te = cfg.get("train_size"), cfg.get("test_size")
    impls = sorted({r.get("machine", {}).get("neuron_impl", "module") for r in runs if r["variant"] != "LIF"})
    impl_text = {
        "module": "`staa.STAALIF` as shipped",
        "reference": "`staa.STAALIF`'s weights run through the plain reference `staa.reference.staa_lif_reference` "
        "(`--impl reference`; the same neuron, the slow spec implementation)",
    }
    extra_flags = " --impl reference" if impls == ["reference"] else ""
    if seeds_planned != [0, 1, 2]:
        extra_flags += " --seeds " + " ".join(str(x) for x in seeds_planned)
    commits = sorted({r.get("machine", {}).get("git_commit") or "unknown" for r in runs})
    lines += [
        "## Protocol",
        "",
        "Fixed for every variant and seed of a task; only the spiking neuron changes.",
        "",
        f"- Data: Fashion-MNIST from the IDX files of the `dataset-fashion-mnist` package. Train on a fixed random "
        f"subset of {n_tr} of the 60000 training images (the same subset for every run and both tasks), test on a "
        f"fixed random subset of {n_te} of the 10000 test images.",
        f"- Network: [conv3x3 (no bias) → BatchNorm → neuron → 2x2 average pool] with widths {cfg.get('widths')}, "
        "then a linear layer; the logits are averaged over time steps. BatchNorm normalises over time and batch.",
        f"- Static task: pixels scaled to [0, 1], direct encoding (the first conv-BN output fed at every step), "
        f"T={cfg.get('static_T')}.",
        f"- Event task: simulated ON/OFF events on a {cfg.get('event_size')}x{cfg.get('event_size')} canvas, "
        f"T={cfg.get('event_T')} frames of event counts (2 channels); simulator seed {cfg.get('event_seed')} "
        "(train) and +1 (test).",
        f"- Training: {cfg.get('optimizer')}, lr {cfg.get('lr')}, weight decay {cfg.get('weight_decay')}, "
        f"{cfg.get('schedule')}, batch size {cfg.get('batch_size')}, {cfg.get('epochs')} epochs, cross-entropy, "
        "backpropagation through time with the rectangular surrogate (width 1) in every neuron.",
        "- Neurons: threshold 1, hard reset to 0. LIF: H = V + (X - V) / 2. STAALIF variants as in the tables "
        "(reduction r=4, alpha=2); TSRD drops only at training, never at test. STAALIF implementation: "
        + "; ".join(impl_text.get(i, i) for i in impls) + ".",
        f"- Seeds: {', '.join(str(x) for x in seeds_planned)}; the seed sets the initial weights, the batch order "
        "and the TSRD draws. The training subset, test subset and simulated events are the same for every seed.",
        "- Firing rate: spikes / (neurons x time steps) over all spiking layers on the test subset.",
        f"- Uncertainty: the std is over training seeds only. Every run is tested on the same {n_te} images, so the "
        f"absolute accuracies also carry a test-sampling error of about "
        f"{_binomial_se(summary, n_te):.1f} points; since every row is tested on the same images, most of it is common to all rows and it "
        "matters less for the differences between rows than for the absolute level.",
        f"- Machine: {machine.get('machine')}, {machine.get('torch_threads')} torch thread, torch "
        f"{machine.get('torch')}, Python {machine.get('python')}. Seconds per epoch are wall-clock training "
        "time on this machine while others shared it, so they are indicative only; they include the "
        "whole network, not just the neuron. Each run's JSON records the git commit the tree was at when it "
        f"finished ({len(commits)} distinct; the tree was being worked on meanwhile, outside this benchmark).",
        "",
        "## Reproduce",
        "",
        "```",
        "sudo apt-get install -y dataset-fashion-mnist   # the IDX files, in /usr/share/datasets/fashion-mnist",
        "pip install matplotlib                          # for the plot",
        f"{REPRODUCE} \\",
        f"    --train-size {n_tr} --test-size {n_te} --epochs {cfg.get('epochs')} --batch-size "
        f"{cfg.get('batch_size')} --lr {cfg.get('lr')} --widths {' '.join(str(w) for w in cfg.get('widths', []))} "
        f"--event-T {cfg.get('event_T')}{extra_flags}",
        "```",
        "",
        "Finished runs are cached as JSON in `docs/results/accuracy-runs/` (one file per task, variant and seed), "
        "so an interrupted ladder resumes; delete a file to rerun it. The page and plot alone are rebuilt with "
        "`python benchmarks/accuracy/make_report.py` (add `--events-figure /usr/share/datasets/fashion-mnist` to "
        "redraw the event frames figure).",
        "",
    ]
    return "\n".join(lines)


LARGE_SE_TARGET = 0.25  # points: the protocol's bound on the standard error of a difference of two rows
LARGE_FLAGS = ("--train-size 20000 --test-size 0 --epochs 3 --batch-size 128 --lr 0.001 --widths 32 64 "
               "--event-T 8")


def op_vs_reference(summary: Dict[Tuple[str, str], dict], ref_summary: Dict[Tuple[str, str], dict]) -> List[dict]:
    """For each (task, variant) run on both implementations: the two means at the shared seeds, their
    difference, and the module's seed standard deviation at those seeds (the yardstick)."""
    out = []
    for key, ref in sorted(ref_summary.items()):
        mod = summary.get(key)
        if mod is None:
            continue
        seeds = [s for s in ref["seeds"] if s in mod["seeds"]]
        if not seeds:
            continue
        m_acc = [a for s, a in zip(mod["seeds"], mod["acc"]) if s in seeds]
        r_acc = [a for s, a in zip(ref["seeds"], ref["acc"]) if s in seeds]
        m_mean, m_std = mean_std(m_acc)
        r_mean, r_std = mean_std(r_acc)
        diff = r_mean - m_mean
        out.append({"task": key[0], "variant": key[1], "seeds": seeds, "module": m_acc, "reference": r_acc,
                    "module_mean": m_mean, "module_std": m_std, "reference_mean": r_mean, "reference_std": r_std,
                    "diff": diff, "within": abs(diff) <= m_std,
                    "module_sec_epoch": mean_std([r for s, r in zip(mod["seeds"], mod["sec_epochs"]) if s in seeds])[0],
                    "reference_sec_epoch": ref["sec_epoch"]})
    return out


def _max_se(summary: Dict[Tuple[str, str], dict], task: str) -> Optional[float]:
    ses = [_compare(summary[(task, a)], summary[(task, b)])[1] for a, b in _ladder_steps(task)
           if (task, a) in summary and (task, b) in summary]
    ses = [x for x in ses if x is not None]
    return max(ses) if ses else None


def _machine_lines(runs: List[dict]) -> List[str]:
    """The "Machine and reproduce" heading and the paragraph naming the machine and the runs' commits."""
    commits = sorted({r.get("machine", {}).get("git_commit") or "unknown" for r in runs})
    machine = runs[0].get("machine", {})
    return [
        "## Machine and reproduce",
        "",
        f"Runs on {machine.get('machine')}, {machine.get('torch_threads')} torch thread per run, torch "
        f"{machine.get('torch')}, Python {machine.get('python')}. Each run file records the commit the tree was at "
        f"when the run finished: {', '.join(c[:7] for c in commits)}.",
        "",
    ]


def render_large(runs: List[dict], ref_runs: List[dict], timing: Optional[dict], plot_name: str = "accuracy-large.png",
                 plotted: bool = True) -> str:
    """The large-protocol results page: ladder tables, every step with its standard error, the op vs the
    reference, and time per epoch of both implementations (from ``time_epoch.py``)."""
    summary = summarize(runs)
    lines = [
        "# Accuracy, large protocol: the STAA ablation ladder on Fashion-MNIST",
        "",
        "Every number on this page comes from the **large protocol**, fixed before its runs and stated in "
        "[accuracy-protocol.md](accuracy-protocol.md): 20,000 training images, 3 epochs, batch 128, the full "
        "10,000-image test set, 5 seeds per row (the seeds column says how many have finished), and `staa.STAALIF` as shipped (the module's own op, the path every "
        "multi-step layer takes). The older [small-protocol page](accuracy.md) is kept as it was; its numbers are not "
        "mixed into this one.",
        "",
        "The paper's Table 4 adds the blocks one at a time on CIFAR-100 (ResNet-20, T=4: LIF 72.30 → +GC 73.22 → +PE "
        "73.79 → +SA 74.78 → +TSRD 75.10). This page runs that ladder with a small Conv-SNN on Fashion-MNIST, static "
        "and with simulated events; it shows what the blocks do at this scale, not on CIFAR-100.",
        "",
    ]
    if not runs:
        return "\n".join(lines + ["No finished runs yet.", ""])
    lines += ["## Summary", "", "Computed from the tables below (accuracy differences in points, standard errors "
              "from the seed spreads):", ""] + summary_lines(summary)
    for task in TASKS:
        full = FULL[task]
        if (task, "LIF") in summary and (task, full) in summary:
            diff, se = _compare(summary[(task, "LIF")], summary[(task, full)])
            se_text = "" if se is None else f", standard error {se:.2f}"
            lines.append(f"- **LIF → full STAA, {task}: {diff:+.2f} points{se_text}.**")
        unhelpful = []
        for a, b in _ladder_steps(task):
            if a == "LIF" or (task, a) not in summary or (task, b) not in summary:
                continue  # LIF -> IF changes the neuron model, not a block; LIF -> full is stated above
            diff, se = _compare(summary[(task, a)], summary[(task, b)])
            if diff < 0 or (se is not None and diff <= se):
                unhelpful.append(f"{_added(a, b)} ({a} → {b}: {diff:+.2f} ± {se:.2f})")
        if unhelpful:
            lines.append(f"- Blocks that did not help at this scale, {task} (step within one standard error or "
                         "below zero): " + "; ".join(unhelpful) + ".")
        worst = _max_se(summary, task)
        if worst is not None:
            met = "met" if worst <= LARGE_SE_TARGET else "NOT met"
            lines.append(f"- Protocol target, {task}: the largest standard error of a ladder difference is "
                         f"{worst:.2f} points (target <= {LARGE_SE_TARGET:.2f}: {met}).")
    lines.append("")
    if plotted:
        lines += [f"![test accuracy per variant, one panel per task]({plot_name})", ""]
    for task, variants in LARGE_TASKS.items():
        lines += [f"## {TASK_TITLES[task]}", "",
                  "| variant | neuron | seeds | test accuracy % (mean ± std) | per seed | firing rate | params |",
                  "|---|---|---|---|---|---|---|"]
        for v in variants:
            st = summary.get((task, v))
            if st is None:
                lines.append(f"| {v} | {NEURONS[v]} | 0 | missing | | | |")
                continue
            per_seed = ", ".join(f"{a:.2f}" for a in st["acc"])
            lines.append(f"| {v} | {NEURONS[v]} | {st['n']} | {_fmt_acc(st)} | {per_seed} | {st['rate']:.3f} | "
                         f"{st['n_params']} |")
        lines += ["", "Each step of the ladder, and LIF against the full neuron:", ""]
        lines += [_step_text(a, b, summary[(task, a)], summary[(task, b)])
                  for a, b in _ladder_steps(task) if (task, a) in summary and (task, b) in summary]
        lines.append("")
    comps = op_vs_reference(summary, summarize(ref_runs)) if ref_runs else []
    lines += ["## The op and the reference train alike", ""]
    if not comps:
        lines += ["No reference runs yet.", ""]
    for c in comps:
        seeds = ", ".join(str(x) for x in c["seeds"])
        verdict = ("within the module's seed standard deviation: they train alike" if c["within"] else
                   "LARGER than the module's seed standard deviation: they do not train alike")
        lines += [
            f"{c['variant']} on the {c['task']} task, seeds {seeds}, the same weights at the start: once through "
            "`staa.STAALIF`'s op (the module) and once through `staa.reference.staa_lif_reference` "
            "(`--impl reference`). Float32 rounding differs between the two, so the runs are not bit-equal.",
            "",
            "| implementation | per seed | mean ± std |",
            "|---|---|---|",
            f"| module (op) | {', '.join(f'{a:.2f}' for a in c['module'])} | {c['module_mean']:.2f} ± {c['module_std']:.2f} |",
            f"| reference | {', '.join(f'{a:.2f}' for a in c['reference'])} | {c['reference_mean']:.2f} ± "
            f"{c['reference_std']:.2f} |",
            "",
            f"Reference minus module: {c['diff']:+.2f} points; the module's seed standard deviation at these seeds is "
            f"{c['module_std']:.2f}, so the difference is {verdict}.",
            "",
        ]
    lines += ["## Time per training epoch: module vs reference", ""]
    if not timing:
        lines += ["Not measured yet: run `python benchmarks/accuracy/time_epoch.py` on an idle machine.", ""]
    else:
        mach = timing.get("machine", {})
        lines += [
            f"Measured by `{timing.get('command', 'python benchmarks/accuracy/time_epoch.py').strip()}` on "
            f"{mach.get('machine')}, {mach.get('torch_threads')} torch thread, torch {mach.get('torch')}, commit "
            f"{(mach.get('git_commit') or 'unknown')[:7]}, {timing.get('started_utc')}. The same network, data and "
            "batch size as the runs above; both implementations built from the same seed and timed in alternating "
            "blocks of training steps (forward, backward, Adam step) in one process, so a change of machine load "
            "hits both alike. Seconds per epoch = median seconds per step over the blocks x steps per epoch; the "
            "whole network is timed, not just the neuron.",
            "",
            "| task | variant | steps timed (each) | module s / epoch | reference s / epoch | reference / module |",
            "|---|---|---|---|---|---|",
        ]
        for task, r in sorted(timing.get("tasks", {}).items(), key=lambda kv: list(TASKS).index(kv[0])):
            n_steps = r["block"] * r["blocks"]
            lines.append(f"| {task} | {r['variant']} | {n_steps} | {r['module_seconds_per_epoch']:.1f} | "
                         f"{r['reference_seconds_per_epoch']:.1f} | {r['reference_over_module']:.2f}x |")
        lines += ["", "(The seconds per epoch recorded inside each run's JSON come from a machine shared with other "
                  "work and are not used here.)", ""]
    lines += _machine_lines(runs + ref_runs) + [
        "```",
        "sudo apt-get install -y dataset-fashion-mnist",
        f"{REPRODUCE} {LARGE_FLAGS} --seeds 0 1 2 3 4 \\",
        "    --out docs/results/accuracy-large-runs --report ''",
        f"{REPRODUCE} {LARGE_FLAGS} --seeds 0 1 2 --impl reference --tasks static --variants GC+PE+SA \\",
        "    --out docs/results/accuracy-large-runs-reference --report ''",
        "python benchmarks/accuracy/time_epoch.py          # on an idle machine",
        "python benchmarks/accuracy/make_report.py --large  # this page and accuracy-large.png",
        "```",
        "",
    ]
    return "\n".join(lines)


LONG_MIN_SEEDS = 3  # the long protocol's minimum seeds per row
LONG_SE_TARGET = 0.2  # points: the long protocol's bound on the standard error of a reported difference
# The differences the long protocol reports (docs/results/accuracy-long-protocol.md).
LONG_DIFFS = [("LIF", "GC+PE+SA+TSRD"), ("LIF", "IF+SA"), ("IF+SA", "GC+PE+SA"), ("GC+PE+SA", "GC+PE+SA+TSRD"),
              ("IF+SA", "IF+SA+TSRD")]
LONG_FLAGS = "--train-size 20000 --test-size 0 --eval-train --batch-size 128 --lr 0.001 --widths 32 64 --tasks static"
SELECTION_FLAGS = ("--train-size 20000 --test-size 0 --val-size 10000 --epochs 15 --stop-gain 0.001 --batch-size 128 "
                   "--lr 0.001 --widths 32 64 --tasks static --variants LIF --seeds 0")


def _verdict(diff: float, se: Optional[float]) -> str:
    if se is None:
        return "too few seeds to judge"
    if se == 0.0 or abs(diff) > 2.0 * se:
        return "beyond twice its standard error"
    if abs(diff) > se:
        return "between one and two standard errors: suggestive, not conclusive"
    return "within one standard error: not distinguishable from seed noise"


def _pm(se: Optional[float]) -> str:
    """`` ± se``, or nothing where a row has one seed and so no standard error."""
    return "" if se is None else f" ± {se:.2f}"


def _long_summary(summary: Dict[Tuple[str, str], dict]) -> List[str]:
    """The two verdicts the long protocol exists for, computed from the runs."""
    def diff(a, b):
        if ("static", a) not in summary or ("static", b) not in summary:
            return None
        return _compare(summary[("static", a)], summary[("static", b)])

    out = []
    full, cheap = diff("LIF", "GC+PE+SA+TSRD"), diff("LIF", "IF+SA")
    gap = diff("IF+SA", "GC+PE+SA+TSRD")
    if full and cheap and gap:
        d, se = gap
        keeps = se is not None and d <= se
        out.append(
            f"- **Step attention alone (IF+SA) against the paper's full neuron (GC+PE+SA+TSRD)**: LIF → full "
            f"{full[0]:+.2f}{_pm(full[1])}, LIF → IF+SA {cheap[0]:+.2f}{_pm(cheap[1])}; the full neuron is "
            f"{d:+.2f}{_pm(se)} points above IF+SA ({_verdict(d, se)}). "
            + ("" if se is None else
               "IF+SA keeps the full neuron's gain within one standard error." if keeps else
               "IF+SA does NOT keep the full neuron's gain within one standard error."))
    for a, b in (("GC+PE+SA", "GC+PE+SA+TSRD"), ("IF+SA", "IF+SA+TSRD")):
        r = diff(a, b)
        if r:
            d, se = r
            out.append(f"- **TSRD on the long schedule, {a} → {b}**: {d:+.2f}{_pm(se)} points ({_verdict(d, se)}).")
    ses = [r[1] for r in (diff(a, b) for a, b in LONG_DIFFS) if r and r[1] is not None]
    if ses:
        met = "met" if max(ses) <= LONG_SE_TARGET else "NOT met"
        out.append(f"- Protocol target: the largest standard error of a reported difference is {max(ses):.2f} points "
                   f"(target <= {LONG_SE_TARGET:.2f}: {met}).")
    return out


def _selection_lines(selection: List[dict]) -> List[str]:
    if not selection:
        return ["The epoch-count selection run has not finished.", ""]
    r = selection[0]
    accs = [e["val_acc"] for e in r["epochs"]]
    lines = [f"Chosen by one LIF run (seed {r['seed']}) on a {r['config']['val_size']}-image validation split drawn "
             "from the training images outside the training subset, the cosine schedule spread over "
             f"{r['config']['epochs']} epochs; it stopped after **{len(accs)} epochs** (validation accuracy gained "
             f"less than {100 * r['config']['stop_gain']:.1f} points over 2 epochs, or the maximum). Validation "
             "accuracy per epoch (%):", "",
             "| epoch | " + " | ".join(str(e["epoch"]) for e in r["epochs"]) + " |",
             "|---|" + "---|" * len(accs),
             "| validation | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |", ""]
    return lines


def render_long(runs: List[dict], selection: List[dict], cost: Optional[dict], predicted: Optional[dict] = None) -> str:
    """The long-protocol results page: rows with their train-test gaps, the reported differences, and each
    row's cost beside its accuracy gain."""
    summary = summarize(runs)
    lines = [
        "# Accuracy, long protocol: which blocks earn their cost",
        "",
        "Every number on this page comes from the **long protocol**, fixed before its runs in "
        "[accuracy-long-protocol.md](accuracy-long-protocol.md): the static Fashion-MNIST task with the large "
        "protocol's 20,000 training images and full test set, trained for an epoch count chosen on a validation "
        "split, `staa.STAALIF` as shipped. It asks two questions the [3-epoch large protocol](accuracy-large.md) "
        "cannot answer: does step attention alone keep the full neuron's gain at a fraction of its cost, and does "
        "TSRD help or hurt once training runs long enough to overfit?",
        "",
        "## Epoch count",
        "",
    ] + _selection_lines(selection)
    if not runs:
        return "\n".join(lines + ["No finished runs yet.", ""])
    lines += ["## Summary", "", "Computed from the tables below (differences in points, standard errors from the "
              "seed spreads):", ""] + _long_summary(summary) + [""]
    short = [(v, LONG_MIN_SEEDS - summary[("static", v)]["n"] if ("static", v) in summary else LONG_MIN_SEEDS)
             for v in LONG_ROWS]
    short = [(v, k) for v, k in short if k > 0]
    if short:
        lines += ["**Incomplete**: the protocol asks for at least "
                  f"{LONG_MIN_SEEDS} seeds per row, and these rows lack finished runs: "
                  + ", ".join(f"{v} ({k} more)" for v, k in short)
                  + ". Until they land, every figure on this page rests on fewer seeds than the protocol fixes.", ""]
    lines += ["## Rows", "",
              "Train accuracy is measured after training on the 20,000 training images in eval mode (no TSRD draws); "
              "the gap is train minus test.", "",
              "| row | neuron | seeds | test accuracy % (mean ± std) | per seed | train accuracy % | train-test gap | "
              "firing rate | params |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in LONG_ROWS:
        st = summary.get(("static", v))
        if st is None:
            lines.append(f"| {v} | {NEURONS[v]} | 0 | missing | | | | | |")
            continue
        rs = [r for r in runs if r["variant"] == v and "train_eval_acc" in r]
        train = mean_std([100.0 * r["train_eval_acc"] for r in rs])[0] if rs else float("nan")
        lines.append(f"| {v} | {NEURONS[v]} | {st['n']} | {_fmt_acc(st)} | {', '.join(f'{a:.2f}' for a in st['acc'])} "
                     f"| {train:.2f} | {train - st['mean']:+.2f} | {st['rate']:.3f} | {st['n_params']} |")
    lines += ["", "The differences the protocol reports:", ""]
    diffs = [_step_text(a, b, summary[("static", a)], summary[("static", b)])
             for a, b in LONG_DIFFS if ("static", a) in summary and ("static", b) in summary]
    lines += diffs or ["- none yet: no pair of rows it compares has finished runs."]
    lines += ["", "## Cost beside benefit", ""]
    if not cost:
        lines += ["Not measured yet: run `python benchmarks/accuracy/cost_rows.py` on an idle machine.", ""]
    else:
        mach = cost.get("machine", {})
        base = cost["rows"].get("LIF", {}).get("seconds_per_step")
        lines += [
            f"Measured by `{cost.get('command', 'python benchmarks/accuracy/cost_rows.py').strip()}` on "
            f"{mach.get('machine')}, {mach.get('torch_threads')} torch thread, torch {mach.get('torch')}, commit "
            f"{(mach.get('git_commit') or 'unknown')[:7]}, {cost.get('started_utc')}: the protocol's whole network at "
            f"batch {cost.get('batch_size')}, every row built from the same seed and trained in alternating blocks "
            f"of {cost.get('block')} steps ({cost.get('steps')} steps each), the median over blocks. Saved for "
            "backward: the bytes autograd keeps during one training forward (parameters excluded).",
            "",
            "The LIF row's neuron is the plain PyTorch loop every accuracy run uses (`staa._demo.MultiStepLIF`), "
            "not a fused LIF, so its time is no LIF's best: the layer alone against spikingjelly's LIF is in "
            "[performance.md](../performance.md). The saved bytes are mostly the convolutions' and BatchNorms' "
            "activations, which every row keeps alike.",
            "",
        ]
        gpu = predicted.get("rows", {}) if predicted else {}
        if gpu:
            lines += [
                f"Predicted GPU time: `{predicted.get('command', 'python benchmarks/cost_model.py --rows')}` at commit "
                f"{predicted.get('commit', 'unknown')}, the cost model's prediction ({predicted.get('device')}) for the "
                "network's two neuron layers, forward + backward at the protocol's batch, eager and replayed from a "
                "CUDA graph ([cost_model_rows.md](../../benchmarks/results/cost_model_rows.md)); not measured on a "
                "GPU. Its LIF is a fused LIF (the model's ideal), and the TSRD rows are predicted with their base "
                "row's kernels.",
                "",
            ]
        head = ("| row | accuracy over LIF (points) | params | params over LIF | CPU ms / training step | x LIF | "
                "MiB saved for backward |")
        lines += [head + (" predicted GPU ms, neuron layers (eager / graph) |" if gpu else ""),
                  "|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
        for v in LONG_ROWS:
            c = cost["rows"].get(v)
            if c is None:
                continue
            gain = "baseline" if v == "LIF" else "no runs yet"
            if v != "LIF" and ("static", "LIF") in summary and ("static", v) in summary:
                d, se = _compare(summary[("static", "LIF")], summary[("static", v)])
                gain = f"{d:+.2f}" + ("" if se is None else f" ± {se:.2f}")
            ratio = f"{c['seconds_per_step'] / base:.2f}x" if base else ""
            g = gpu.get(v)
            lines.append(f"| {v} | {gain} | {c['params']} | {c['params_over_lif']} | "
                         f"{1000 * c['seconds_per_step']:.1f} | {ratio} | {c['saved_bytes_per_step'] / 2**20:.1f} |"
                         + ((f" {g['eager_ms']:.2f} / {g['graph_ms']:.2f} |" if g else " |") if gpu else ""))
        lines.append("")
    epochs = runs[0]["config"]["epochs"]
    seeds = " ".join(str(x) for x in sorted({r["seed"] for r in runs}))
    lines += _machine_lines(runs) + [
        "```",
        "sudo apt-get install -y dataset-fashion-mnist",
        f"{REPRODUCE} {SELECTION_FLAGS} \\",
        "    --out docs/results/accuracy-long-selection --report ''",
        f"{REPRODUCE} {LONG_FLAGS} --epochs {epochs} \\",
        f"    --variants {' '.join(LONG_ROWS)} --seeds {seeds} \\",
        "    --out docs/results/accuracy-long-runs --report ''",
        "python benchmarks/accuracy/cost_rows.py           # on an idle machine",
        "python benchmarks/accuracy/make_report.py --long  # this page",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_long_report(runs_dir: str, selection_dir: str, cost_path: str, out_dir: str, log=print,
                      predicted_path: Optional[str] = None) -> str:
    os.makedirs(out_dir, exist_ok=True)
    runs = load_runs(runs_dir) if os.path.isdir(runs_dir) else []
    selection = load_runs(selection_dir) if os.path.isdir(selection_dir) else []
    cost = predicted = None
    if os.path.isfile(cost_path):
        with open(cost_path) as f:
            cost = json.load(f)
    if predicted_path and os.path.isfile(predicted_path):
        with open(predicted_path) as f:
            predicted = json.load(f)
    path = os.path.join(out_dir, "accuracy-long.md")
    with open(path, "w") as f:
        f.write(render_long(runs, selection, cost, predicted))
    log(f"wrote {path}")
    return path


def write_large_report(runs_dir: str, ref_dir: str, timing_path: str, out_dir: str, log=print) -> str:
    os.makedirs(out_dir, exist_ok=True)
    runs, ref_runs = load_runs(runs_dir), (load_runs(ref_dir) if os.path.isdir(ref_dir) else [])
    timing = None
    if os.path.isfile(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)
    plotted = (plot(summarize(runs), os.path.join(out_dir, "accuracy-large.png"), LARGE_SUPTITLE, LARGE_TASKS)
               if runs else False)
    path = os.path.join(out_dir, "accuracy-large.md")
    with open(path, "w") as f:
        f.write(render_large(runs, ref_runs, timing, "accuracy-large.png", plotted))
    log(f"wrote {path}" + (" and accuracy-large.png" if plotted else ""))
    return path


def write_report(runs_dir: str, out_dir: str, log=print) -> str:
    os.makedirs(out_dir, exist_ok=True)
    runs = load_runs(runs_dir)
    plotted = plot(summarize(runs), os.path.join(out_dir, "accuracy.png")) if runs else False
    events_png = "accuracy-events.png" if os.path.isfile(os.path.join(out_dir, "accuracy-events.png")) else None
    page = render(runs, "accuracy.png", plotted, events_png)
    path = os.path.join(out_dir, "accuracy.md")
    with open(path, "w") as f:
        f.write(page)
    log(f"wrote {path}" + (" and accuracy.png" if plotted else ""))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Rebuild the accuracy results page from the run JSON files")
    p.add_argument("--runs", default=os.path.join(REPO, "docs", "results", "accuracy-runs"))
    p.add_argument("--out", default=os.path.join(REPO, "docs", "results"))
    p.add_argument("--events-figure", metavar="DATA_DIR", default=None,
                   help="also draw accuracy-events.png (simulated frames of three test images) from the IDX files")
    p.add_argument("--large", action="store_true",
                   help="build the large-protocol page accuracy-large.md instead (runs from --runs, default "
                        "docs/results/accuracy-large-runs; reference runs from --reference-runs; timing from --timing)")
    p.add_argument("--reference-runs", default=os.path.join(REPO, "docs", "results", "accuracy-large-runs-reference"))
    p.add_argument("--timing", default=os.path.join(REPO, "docs", "results", "accuracy-large-timing.json"))
    p.add_argument("--long", action="store_true",
                   help="build the long-protocol page accuracy-long.md (runs from docs/results/accuracy-long-runs, "
                        "the epoch-count selection run from accuracy-long-selection, costs from accuracy-long-cost.json, "
                        "predicted GPU times from benchmarks/results/cost_model_rows.json)")
    args = p.parse_args(argv)
    if args.long:
        res = os.path.join(REPO, "docs", "results")
        write_long_report(os.path.join(res, "accuracy-long-runs"), os.path.join(res, "accuracy-long-selection"),
                          os.path.join(res, "accuracy-long-cost.json"), args.out,
                          predicted_path=os.path.join(REPO, "benchmarks", "results", "cost_model_rows.json"))
        return 0
    if args.large:
        runs = args.runs
        if runs == p.get_default("runs"):
            runs = os.path.join(REPO, "docs", "results", "accuracy-large-runs")
        write_large_report(runs, args.reference_runs, args.timing, args.out)
        return 0
    if args.events_figure:
        os.makedirs(args.out, exist_ok=True)
        events_figure(args.events_figure, os.path.join(args.out, "accuracy-events.png"))
    write_report(args.runs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
