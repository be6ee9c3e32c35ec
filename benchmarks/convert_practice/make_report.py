"""The convert-in-practice results page from the run files of ``run.py``.

Writes ``docs/results/convert-practice.md`` and, when matplotlib is installed,
``docs/results/convert-practice.png``:

    python benchmarks/convert_practice/make_report.py [--runs DIR]
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
for _p in (HERE, os.path.join(REPO, "benchmarks", "accuracy")):
    if _p not in sys.path:
        sys.path.append(_p)

from run import DEFAULT_OUT, NETS, SCHEDULE, SEEDS, VARIANTS, CONVERT_OPTIONS  # noqa: E402

PAGE = os.path.join(REPO, "docs", "results", "convert-practice.md")
PLOT = os.path.join(REPO, "docs", "results", "convert-practice.png")

ABOUT = {
    "original": "the spikingjelly network as built (IF or LIF nodes, ATan surrogate)",
    "converted": "`staa.convert(net, example_input)` with convert's defaults: the nodes after convolutions "
                 "become STAA-LIF (ATan carried; they follow BatchNorm, so step attention keeps its default "
                 "initialisation), the nodes after Linear layers are kept (`linear=\"keep\"`)",
    "converted-linear": "the same with `linear=\"convert\"`: the nodes after Linear layers become STAA-LIF too "
                        "(not after a norm layer, so their step attention starts open, `sa_init_bias=3`)",
    "converted-sa-default": "as converted, with `sa_init_bias=None` for every node (`nn.Linear`'s "
                            "initialisation of step attention: the gate starts near 0.5)",
    "converted-linear-sa-default": "as converted-linear, with `sa_init_bias=None` for every node",
    "converted-sa-open": "as converted, with `sa_init_bias=3` for every node (the gate starts open)",
    "converted-linear-sa-open": "as converted-linear, with `sa_init_bias=3` for every node",
}


def load(runs_dir: str) -> List[dict]:
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(runs_dir, "*.json")))]


def mean_se(values: List[float]) -> Tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def summary(runs: List[dict]) -> Dict[Tuple[str, str], dict]:
    out = {}
    for net in NETS:
        for v in VARIANTS:
            rs = [r for r in runs if r["net"] == net and r["variant"] == v]
            if rs:
                out[(net, v)] = {
                    "n": len(rs), "seeds": sorted(r["seed"] for r in rs),
                    "acc": mean_se([100 * r["test_accuracy"] for r in rs]),
                    "step": mean_se([1000 * r["step_s_mean"] for r in rs]),
                    "params": rs[0]["params"],
                }
    return out


def verdict(s, net: str, variant: str) -> str:
    if (net, "original") not in s or (net, variant) not in s:
        return "incomplete"
    (mo, so), (mc, sc) = s[(net, "original")]["acc"], s[(net, variant)]["acc"]
    gap, se = mc - mo, math.sqrt(so ** 2 + sc ** 2)
    if gap >= 0:
        return f"goal met ({gap:+.2f} points, SE {se:.2f})"
    if -gap <= 2 * se:
        return f"required met, goal missed ({gap:+.2f} points, within 2 SE = {2 * se:.2f})"
    return f"required missed ({gap:+.2f} points, more than 2 SE = {2 * se:.2f} below)"


def why_lines(s) -> List[str]:
    """A plain statement per network about convert's defaults, with the reason when the goal is missed."""
    out = []
    for net in NETS:
        if (net, "original") not in s or (net, "converted") not in s:
            continue
        (mo, so), (mc, sc) = s[(net, "original")]["acc"], s[(net, "converted")]["acc"]
        gap, se = mc - mo, math.sqrt(so ** 2 + sc ** 2)
        if gap >= 0:
            out.append(f"- **{net}**, convert's defaults: {gap:+.2f} points against the original (SE {se:.2f}): "
                       f"the goal is met.")
        elif -gap <= se:
            out.append(f"- **{net}**, convert's defaults: {gap:+.2f} points (SE {se:.2f}): the goal is missed by less "
                       f"than one standard error of the difference, so at 3 seeds and one epoch the converted "
                       f"network and the original cannot be told apart; the required bound (within 2 SE) holds.")
        else:
            out.append(f"- **{net}**, convert's defaults: {gap:+.2f} points (SE {se:.2f}): the goal is missed. STAA-LIF "
                       f"has no leak, so the converted network starts from other dynamics than the original LIF "
                       f"network and has one epoch to adapt its new weights.")
    return out


def plot(s, runs) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, len(NETS), figsize=(5 * len(NETS), 3.6), squeeze=False)
    for ax, net in zip(axes[0], NETS):
        names = [v for v in VARIANTS if (net, v) in s]
        ax.bar(range(len(names)), [s[(net, v)]["acc"][0] for v in names],
               yerr=[s[(net, v)]["acc"][1] for v in names], capsize=5,
               color=[{"original": "#888888", "converted": "#3a7bd5"}.get(v, "#9ab8e6") for v in names])
        for i, v in enumerate(names):
            vals = [100 * r["test_accuracy"] for r in runs if r["net"] == net and r["variant"] == v]
            ax.plot([i] * len(vals), vals, "k.", ms=4)
        ax.set_xticks(range(len(names)), [v.replace("converted", "conv").replace("-", "\n") for v in names],
                      fontsize=7)
        accs = [100 * r["test_accuracy"] for r in runs if r["net"] == net]
        ax.set_ylim(max(0, min(accs) - 3), min(100, max(accs) + 2))
        ax.set_title(net)
        ax.set_ylabel("test accuracy (%)")
    fig.suptitle("spikingjelly networks on Fashion-MNIST before and after staa.convert (mean ± SE, dots: seeds)")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return True


def write(runs_dir: str) -> None:
    runs = load(runs_dir)
    s = summary(runs)
    have_plot = plot(s, runs) if runs else False
    sched = SCHEDULE
    lines = [
        "# `staa.convert` in practice: third-party spikingjelly networks on Fashion-MNIST",
        "",
        "Two networks we did not write (one also in single-step mode), taken from spikingjelly 2.0's installed "
        "files and trained with their own loss (MSE between output firing rates and one-hot labels) and "
        "surrogate (ATan), before and after `staa.convert`. How they are loaded without torchvision: "
        "`benchmarks/convert_practice/third_party.py`.",
        "",
        "| network | source |",
        "|---|---|",
        "| csnn | `examples/conv_fashion_mnist.py`, class `CSNN`: two conv-BN-IF-pool blocks, Linear-IF, Linear-IF |",
        "| plif_net | `model/parametric_lif_net.py`, `FashionMNISTNet` with `LIFNode`, `detach_reset=True`: two "
        "conv-BN-LIF-pool blocks, dropout, Linear-LIF, Linear-LIF, a voting layer |",
        "| plif_net_s | the same network in the zoo's default single-step mode, called once per step; converted, its "
        "STAA-LIF nodes are single-step too and carry their state between calls |",
        "",
        "## Verdict (each converted variant against its network's original)",
        "",
        "| network | variant | verdict |",
        "|---|---|---|",
    ]
    for net in NETS:
        for v in VARIANTS:
            if v != "original" and (net, v) in s:
                lines.append(f"| {net} | {v} | {verdict(s, net, v)} |")
    lines += ["", *why_lines(s)]
    lines += [
        "",
        "## Results",
        "",
        "| network | variant | runs (seeds) | test accuracy % (mean ± SE) | ms per training step (mean ± SE) | "
        "parameters |",
        "|---|---|---|---|---|---|",
    ]
    for net in NETS:
        for v in VARIANTS:
            if (net, v) in s:
                e = s[(net, v)]
                (a, ase), (t, tse) = e["acc"], e["step"]
                lines.append(f"| {net} | {v} | {e['n']} ({', '.join(map(str, e['seeds']))}) | {a:.2f} ± {ase:.2f} | "
                             f"{t:.0f} ± {tse:.0f} | {e['params']:,} |")
    if have_plot:
        lines += ["", "![accuracy per network and variant](convert-practice.png)"]
    lines += [
        "",
        "## Variants",
        "",
        *[f"- **{v}**: {ABOUT[v]}; options `{CONVERT_OPTIONS[v]}`." for v in VARIANTS],
        "",
        "Step attention's initialisation: convert starts its gate open (`sa_init_bias=3`, σ(3) ≈ 0.95) except for "
        "nodes right after a normalisation layer, which keep `nn.Linear`'s initialisation (gate ≈ 0.5; "
        "docs/convert.md, \"Initialisation\"). The `-sa-default` variants use `nn.Linear`'s initialisation "
        "everywhere, the `-sa-open` variants start it open everywhere (convert's defaults at two earlier "
        "commits; their run files say which). On these networks, where BatchNorm precedes every converted conv "
        "node, the open gate cost 1-2 points, which led to the per-node rule.",
        "",
        "Every run on this page was made on the same machine in one campaign, one run at a time. (A campaign on "
        "another machine gave different numbers for the same seeds, e.g. csnn original seed 1 74.45% there and "
        "83.45% here: float results differ between CPUs, and one epoch amplifies the difference.)",
        "",
        "## Schedule (fixed before the first converted run)",
        "",
        f"- Data: the first {sched['train_images']:,} Fashion-MNIST training images (shuffled per seed each epoch) "
        f"and the first {sched['test_images']:,} test images, from the IDX files; pixels scaled to [0, 1].",
        f"- T = {sched['T']}, direct encoding (the image at every step); conv channels {sched['channels']} (the "
        f"scripts default to 128; CPU budget); batch {sched['batch']}, {sched['epochs']} epoch, "
        f"{sched['optimizer']}(lr={sched['lr']:g}); seeds {', '.join(map(str, SEEDS))} set the weights, the "
        f"conversion and the batch order.",
        f"- Time per step: wall time of forward, loss, backward and optimizer step, mean over the steps after the "
        f"first {sched['warmup_steps']}, one torch thread, CPU (2 cores), one run at a time with no other heavy "
        f"work on the machine (each run file keeps the load average before and after).",
        "",
        "## Runs",
        "",
        "| network | variant | seed | test accuracy % | ms per step | loss, first 10 -> last 10 steps | commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (NETS.index(r["net"]), VARIANTS.index(r["variant"]), r["seed"])):
        lines.append(f"| {r['net']} | {r['variant']} | {r['seed']} | {100 * r['test_accuracy']:.2f} | "
                     f"{1000 * r['step_s_mean']:.0f} | {r['loss_first10']:.4f} -> {r['loss_last10']:.4f} | "
                     f"{str(r.get('commit'))[:8]}{' (+changes)' if r.get('src_dirty') else ''} |")
    env = runs[-1] if runs else {}
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "sudo apt-get install -y dataset-fashion-mnist        # the IDX files, in /usr/share/datasets/fashion-mnist",
        "pip install --no-deps spikingjelly==2.0.0 && pip install loguru tqdm packaging",
        "python benchmarks/convert_practice/run.py            # every run (resumes), then this page",
        "python benchmarks/convert_practice/make_report.py    # this page from the run files",
        "```",
        "",
        f"Environment: torch {env.get('torch')}, Python {env.get('python')}, {env.get('machine')}. One JSON per run "
        f"in `docs/results/convert-practice-runs/`.",
        "",
    ]
    with open(PAGE, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {PAGE}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    write(args.runs)


if __name__ == "__main__":
    main()
