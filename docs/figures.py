"""Draw the figures of docs/choosing-options.md (needs matplotlib):

    python docs/figures.py            # writes docs/neuron-diagram.png and docs/membrane-traces.png

* ``neuron-diagram.png``: one time step of STAA-LIF (PE, GC1, GC2, SA, fire and reset, TSRD's bypass).
* ``membrane-traces.png``: one neuron's membrane potential under a LIF node and under STAALIF
  for the same input current, from ``store_v_seq``.
"""
from __future__ import annotations

import argparse
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _box(ax, xy, w, h, text, color):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#333333"))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=9)


def _arrow(ax, a, b, style="-|>", color="#333333", ls="-"):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, color=color, ls=ls, lw=1.2))


def diagram(path: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4)
    ax.axis("off")
    ax.text(0.2, 3.0, "$I_t$", fontsize=12, va="center")
    ax.text(0.2, 1.0, "$H_{t-1}$", fontsize=12, va="center")
    _box(ax, (1.1, 2.7), 1.4, 0.6, "+ $PE_t$\n(eq. 11)", "#f3e6c9")
    _box(ax, (3.0, 2.7), 1.5, 0.6, "GC1\n(eqs. 7-10)", "#cfe0f5")
    _box(ax, (3.0, 0.7), 1.5, 0.6, "GC2\n(eqs. 7-10)", "#cfe0f5")
    ax.add_patch(plt.Circle((5.3, 2.0), 0.22, fc="white", ec="#333333"))
    ax.text(5.3, 2.0, "+", ha="center", va="center", fontsize=12)
    _box(ax, (5.9, 1.7), 1.4, 0.6, "SA\n(eq. 12)", "#d6ecd2")
    _box(ax, (7.8, 1.7), 1.7, 0.6, "fire $V_t \\geq v_{th}$\nreset (eqs. 2-3)", "#f5d0d0")
    _arrow(ax, (0.75, 3.0), (1.1, 3.0))
    _arrow(ax, (2.5, 3.0), (3.0, 3.0))
    _arrow(ax, (1.0, 1.0), (3.0, 1.0))
    _arrow(ax, (4.5, 3.0), (5.2, 2.2))
    _arrow(ax, (4.5, 1.0), (5.2, 1.8))
    ax.text(4.9, 2.35, "$U_t$ (eq. 13)", fontsize=8)
    _arrow(ax, (5.52, 2.0), (5.9, 2.0))
    _arrow(ax, (7.3, 2.0), (7.8, 2.0))
    ax.text(7.35, 2.15, "$V_t$", fontsize=9)
    _arrow(ax, (9.5, 2.0), (9.9, 2.0))
    ax.text(9.55, 2.25, "$S_t$", fontsize=10)
    _arrow(ax, (8.65, 1.7), (8.65, 0.35))
    ax.text(8.75, 0.45, "$H_t$ (next step)", fontsize=9)
    ax.add_patch(plt.Rectangle((0.95, 0.5), 6.55, 3.05, fill=False, ls="--", ec="#888888"))
    ax.text(1.0, 3.62, "STAA aggregator: skipped by TSRD (prob. $\\beta$, steps $t \\geq 1$, training), "
            "which uses $V_t = I_t + H_{t-1}$", fontsize=8, color="#555555")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def traces(path: str, T: int = 16, seed: int = 0) -> None:
    import matplotlib.pyplot as plt

    import staa

    torch.manual_seed(seed)
    C, H = 8, 4
    current = (torch.rand(T, 1, C, H, H) * 1.2 + 0.3).double()  # [T, B, C, H, W], the same for both neurons
    staa_lif = staa.STAALIF(C, T, tsrd=0.0, store_v_seq=True, dtype=torch.float64).eval()
    with torch.no_grad():
        s_staa = staa_lif(current)
    h_staa = staa_lif.v_seq
    # LIF with tau = 2 and hard reset, decay_input as spikingjelly: V = H + (I - H) / tau
    tau, v_th = 2.0, 1.0
    h, h_lif, s_lif = torch.zeros_like(current[0]), [], []
    for t in range(T):
        v = h + (current[t] - h) / tau
        s = (v >= v_th).double()
        h = v * (1 - s)
        h_lif.append(h)
        s_lif.append(s)
    h_lif, s_lif = torch.stack(h_lif), torch.stack(s_lif)
    # the neuron that fires most under both, so the figure shows resets of each
    both = torch.minimum(s_lif.sum(0), s_staa.sum(0))[0]
    c, i, j = (int(k) for k in torch.nonzero(both == both.max())[0])
    steps = range(T)
    fig, axes = plt.subplots(2, 1, figsize=(7, 4), sharex=True)
    axes[0].step(steps, current[:, 0, c, i, j], where="mid", color="#666666")
    axes[0].set_ylabel("input $I_t$")
    for name, v, s, col in (("LIF (tau 2)", h_lif, s_lif, "#888888"), ("STAALIF", h_staa, s_staa, "#3a7bd5")):
        axes[1].plot(steps, v[:, 0, c, i, j], "-o", ms=3, color=col, label=name)
        fired = [t for t in steps if s[t, 0, c, i, j] > 0]
        axes[1].plot(fired, [1.15] * len(fired), "|", ms=12, color=col)
    axes[1].axhline(v_th, ls="--", color="#aa3333", lw=0.8)
    axes[1].set_ylabel("state $H_t$ after reset\n(spikes: ticks above)", fontsize=8)
    axes[1].set_xlabel("time step t")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=HERE, help="folder for the two PNG files (default docs/)")
    args = ap.parse_args(argv)
    diagram(os.path.join(args.out, "neuron-diagram.png"))
    traces(os.path.join(args.out, "membrane-traces.png"))
    print(f"wrote {args.out}/neuron-diagram.png and {args.out}/membrane-traces.png")


if __name__ == "__main__":
    main()
