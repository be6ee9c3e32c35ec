"""The report of :func:`staa.profile` (:class:`ProfileReport`, one :class:`LayerStats` per layer),
its table and the side-by-side comparison of two reports."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ._text import aligned_rows

#: Energy per accumulate and per multiply-accumulate, in joules (45 nm, as in the STAA-SNN paper).
E_AC = 0.9e-12
E_MAC = 4.6e-12


@dataclass
class LayerStats:
    """One row of a :class:`ProfileReport`; counts are per single-sample inference over T.

    Attributes:
        name: qualified module name in the model (``""`` for the model itself).
        kind: ``"spiking"`` or ``"synaptic"``.
        type: class name of the module.
        output_shape: output shape of the layer's first call.
        calls: how many times the layer ran in the forward.
        firing_rate: spiking rows: fraction of non-zero outputs over all steps.
        firing_rate_per_step: spiking rows: that fraction for each time step.
        input_binary: synaptic rows: whether every input value was 0 or 1.
        input_nonzero: synaptic rows: fraction of non-zero input values.
        dense_macs: synaptic rows: MACs of the layer as a dense, real-valued layer.
        acs: accumulates (synaptic rows with binary input).
        macs: real-valued multiply-accumulates that are charged as MACs.
        energy_j: ``acs * e_ac + macs * e_mac`` in joules.
    """

    name: str
    kind: str
    type: str
    output_shape: List[int]
    calls: int = 0
    firing_rate: Optional[float] = None
    firing_rate_per_step: Optional[List[float]] = None
    input_binary: Optional[bool] = None
    input_nonzero: Optional[float] = None
    dense_macs: Optional[float] = None
    acs: float = 0.0
    macs: float = 0.0
    energy_j: float = 0.0


@dataclass
class ProfileReport:
    """What :func:`profile` measured. ``str(report)`` is a table.

    Attributes:
        rows: one :class:`LayerStats` per spiking and synaptic layer, in the order they ran.
        batch_size: samples in the observed forward (counts are divided by it).
        T: time steps seen by the spiking layers (``None`` without spiking layers).
        e_ac, e_mac: energy per AC and per MAC in joules.
    """

    rows: List[LayerStats]
    batch_size: int
    T: Optional[int]
    e_ac: float = E_AC
    e_mac: float = E_MAC
    _spikes: float = field(default=0.0, repr=False)
    _neuron_steps: float = field(default=0.0, repr=False)

    @property
    def spiking_rows(self) -> List[LayerStats]:
        return [r for r in self.rows if r.kind == "spiking"]

    @property
    def synaptic_rows(self) -> List[LayerStats]:
        return [r for r in self.rows if r.kind == "synaptic"]

    @property
    def total_acs(self) -> float:
        return sum(r.acs for r in self.rows)

    @property
    def total_macs(self) -> float:
        return sum(r.macs for r in self.rows)

    @property
    def energy_j(self) -> float:
        """Energy of one single-sample inference over T steps, in joules."""
        return self.total_acs * self.e_ac + self.total_macs * self.e_mac

    @property
    def firing_rate(self) -> Optional[float]:
        """Spikes over neuron-steps across all spiking layers."""
        return self._spikes / self._neuron_steps if self._neuron_steps else None

    def to_list(self) -> List[Dict[str, Any]]:
        """The rows as a list of plain dicts."""
        return [asdict(r) for r in self.rows]

    def to_dict(self) -> Dict[str, Any]:
        """Rows, totals and settings as one JSON-serialisable dict."""
        return {
            "batch_size": self.batch_size,
            "T": self.T,
            "e_ac": self.e_ac,
            "e_mac": self.e_mac,
            "rows": self.to_list(),
            "totals": {
                "acs": self.total_acs,
                "macs": self.total_macs,
                "energy_j": self.energy_j,
                "firing_rate": self.firing_rate,
            },
        }

    def to_json(self, path) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    def __str__(self) -> str:
        return format_report(self)

    def compare(self, other: "ProfileReport", labels=("original", "converted")) -> str:
        """This report and ``other`` side by side, one line per layer name (for example a model
        before and after :func:`staa.convert`, which keeps the layer names): each layer's type,
        firing rate, ACs, MACs and energy in both, and the totals. ``labels`` name the two."""
        return compare_reports(self, other, labels)


def _si(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}" if x != int(x) else str(int(x))


def _energy(j: float) -> str:
    if j == 0:
        return "0"
    for div, unit in ((1e-3, "mJ"), (1e-6, "uJ"), (1e-9, "nJ")):
        if abs(j) >= div:
            return f"{j / div:.3g} {unit}"
    return f"{j / 1e-12:.3g} pJ"


def _rates(r: LayerStats, limit: int = 8) -> str:
    if r.firing_rate_per_step is None:
        return "-"
    steps = [f"{v:.2f}" for v in r.firing_rate_per_step]
    if len(steps) > limit:
        steps = steps[: limit - 1] + ["..."]
    return " ".join(steps)


def format_report(report: ProfileReport) -> str:
    header = ["layer", "type", "output", "input", "rate", "rate per step", "dense MACs", "ACs", "MACs", "energy"]
    lines = []
    for r in report.rows:
        shape = "x".join(str(s) for s in r.output_shape)
        if r.calls > 1:
            shape += f" ({r.calls} calls)"
        if r.kind == "spiking":
            inp = "-"
            rate = "-" if r.firing_rate is None else f"{r.firing_rate:.3f}"
        else:
            inp = f"spikes {r.input_nonzero:.3f}" if r.input_binary else "real"
            rate = "-"
        lines.append(
            [r.name or "(model)", r.type, shape, inp, rate, _rates(r), _si(r.dense_macs), _si(r.acs), _si(r.macs),
             _energy(r.energy_j)]
        )
    rate = report.firing_rate
    lines.append(
        ["total", "", "", "", "-" if rate is None else f"{rate:.3f}", "", "", _si(report.total_acs),
         _si(report.total_macs), _energy(report.energy_j)]
    )
    head, *body, total = aligned_rows([header, *lines], right={4, 6, 7, 8, 9})
    rule = "-" * max(len(line) for line in (head, *body, total))
    out = [head, rule, *body, rule, total]
    T = "-" if report.T is None else report.T
    out.append(
        f"per single-sample inference over T={T} (batch of {report.batch_size} observed); input: 'spikes f' = "
        f"binary with non-zero fraction f (ACs), 'real' (MACs); energy = ACs x {report.e_ac * 1e12:g} pJ "
        f"+ MACs x {report.e_mac * 1e12:g} pJ"
    )
    return "\n".join(out)


def compare_reports(a: ProfileReport, b: ProfileReport, labels=("original", "converted")) -> str:
    """:meth:`ProfileReport.compare`: ``a`` and ``b`` side by side, rows matched by layer name."""
    la, lb = (str(x) for x in labels)
    by_name_b = {r.name: r for r in b.rows}
    names = [r.name for r in a.rows] + [r.name for r in b.rows if r.name not in {x.name for x in a.rows}]
    by_name_a = {r.name: r for r in a.rows}

    def rate(r: Optional[LayerStats]) -> str:
        return "-" if r is None or r.firing_rate is None else f"{r.firing_rate:.3f}"

    def cell(r: Optional[LayerStats], value) -> str:
        return "" if r is None else value(r)

    header = ["layer", "type", f"rate {la}", f"rate {lb}", f"ACs {la}", f"ACs {lb}", f"MACs {la}", f"MACs {lb}",
              f"energy {la}", f"energy {lb}"]
    lines = []
    for name in names:
        ra, rb = by_name_a.get(name), by_name_b.get(name)
        types = [r.type for r in (ra, rb) if r is not None]
        kind = types[0] if len(set(types)) == 1 else " -> ".join(types)
        lines.append([name or "(model)", kind, rate(ra), rate(rb), cell(ra, lambda r: _si(r.acs)),
                      cell(rb, lambda r: _si(r.acs)), cell(ra, lambda r: _si(r.macs)), cell(rb, lambda r: _si(r.macs)),
                      cell(ra, lambda r: _energy(r.energy_j)), cell(rb, lambda r: _energy(r.energy_j))])

    def total_rate(r: ProfileReport) -> str:
        return "-" if r.firing_rate is None else f"{r.firing_rate:.3f}"

    lines.append(["total", "", total_rate(a), total_rate(b), _si(a.total_acs), _si(b.total_acs), _si(a.total_macs),
                  _si(b.total_macs), _energy(a.energy_j), _energy(b.energy_j)])
    head, *body, total = aligned_rows([header, *lines], right=set(range(2, 10)))
    rule = "-" * max(len(line) for line in (head, *body, total))
    Ta, Tb = ("-" if r.T is None else r.T for r in (a, b))
    return "\n".join([head, rule, *body, rule, total,
                      f"per single-sample inference: {la} over T={Ta}, {lb} over T={Tb}"])
