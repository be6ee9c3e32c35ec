"""Checks of the accuracy benchmark (benchmarks/accuracy): IDX reader, event simulator, runner.

No dataset is needed: everything runs on tiny synthetic IDX files.
"""
import json
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "accuracy")
sys.path.insert(0, BENCH)

import fmnist_events  # noqa: E402
import make_report  # noqa: E402
import run_ladder  # noqa: E402


@settings(deadline=None, max_examples=10)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    dtype=st.sampled_from(["u1", "i1", "i2", "i4", "f4", "f8"]),
    gz=st.booleans(),
)
def test_idx_roundtrip(tmp_path_factory, shape, dtype, gz):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal(shape) * 50).astype(dtype)
    path = str(tmp_path_factory.mktemp("idx") / ("a.idx" + (".gz" if gz else "")))
    fmnist_events.write_idx(path, arr)
    back = fmnist_events.read_idx(path)
    assert back.shape == arr.shape and back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)


def test_idx_known_bytes(tmp_path):
    # Hand-written header: magic 0x00000803, dims 2 x 1 x 3, then six pixels.
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 250, 251, 252])
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(raw)
    arr = fmnist_events.read_idx(str(path))
    assert arr.shape == (2, 1, 3) and arr.dtype == np.uint8
    assert arr.tolist() == [[[1, 2, 3]], [[250, 251, 252]]]
    path.write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="bytes"):
        fmnist_events.read_idx(str(path))
    path.write_bytes(b"\x01" + raw[1:])
    with pytest.raises(ValueError, match="not an IDX file"):
        fmnist_events.read_idx(str(path))


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fmnist_events.load_fashion_mnist(str(tmp_path))


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        r0, c0 = rng.integers(2, 14, size=2)
        img[i, r0 : r0 + 12, c0 : c0 + 10] = rng.integers(80, 256)
    return img


def test_events_shape_determinism_and_content():
    img = _images(3)
    a = fmnist_events.simulate_events(img, T=8, seed=1)
    b = fmnist_events.simulate_events(img, T=8, seed=1)
    c = fmnist_events.simulate_events(img, T=8, seed=2)
    assert a.shape == (3, 8, 2, 34, 34) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # A bright patch moving over a dark background makes both ON and OFF events in every frame.
    assert (a[:, :, 0].sum(dim=(2, 3)) > 0).all() and (a[:, :, 1].sum(dim=(2, 3)) > 0).all()
    # Without noise, a blank image makes no events and a closed saccade path returns to the start,
    # so ON and OFF events of the patch nearly balance.
    blank = fmnist_events.simulate_events(np.zeros((2, 28, 28), np.uint8), T=8, seed=0, noise_rate=0.0)
    assert blank.sum() == 0
    clean = fmnist_events.simulate_events(img, T=12, seed=0, noise_rate=0.0).float()
    on, off = clean[:, :, 0].sum(), clean[:, :, 1].sum()
    assert abs(on - off) / (on + off) < 0.2
    with pytest.raises(ValueError, match="frames"):
        fmnist_events.simulate_events(img, T=100, seed=0)


def _write_fake_dataset(root, n_train=40, n_test=20):
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        img = _images(n, seed)
        lab = (np.arange(n) % 10).astype(np.uint8)
        fmnist_events.write_idx(os.path.join(root, f"{split}-images-idx3-ubyte.gz"), img)
        fmnist_events.write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte"), lab)


def test_runner_end_to_end_and_resume(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write_fake_dataset(str(data))
    out, report = tmp_path / "runs", tmp_path / "report"
    argv = [
        "--data", str(data), "--out", str(out), "--report", str(report),
        "--tasks", "static", "event", "--variants", "LIF", "STAA", "GC+PE+SA+TSRD", "--seeds", "0",
        "--train-size", "20", "--test-size", "10", "--epochs", "1", "--batch-size", "10", "--widths", "4", "8",
    ]
    torch_threads = torch.get_num_threads()
    try:
        assert run_ladder.main(argv) == 0
    finally:
        torch.set_num_threads(torch_threads)
    files = sorted(os.listdir(out))
    assert files == ["event_LIF_seed0.json", "event_STAA_seed0.json",
                     "static_GC-PE-SA-TSRD_seed0.json", "static_LIF_seed0.json"]
    rec = json.loads((out / "static_GC-PE-SA-TSRD_seed0.json").read_text())
    assert 0.0 <= rec["test_acc"] <= 1.0 and 0.0 <= rec["firing_rate"] <= 1.0
    assert rec["config"]["train_size"] == 20 and len(rec["epochs"]) == 1
    assert rec["command"].startswith("python benchmarks/accuracy/run_ladder.py --data ")
    assert rec["command"].endswith("--widths 4 8")
    page = (report / "accuracy.md").read_text()
    assert "simulated" in page and "Missing runs" in page and "static IF seed 0" in page
    assert f"{100 * rec['test_acc']:.2f}" in page

    # A second call finds every run cached and trains nothing.
    capsys.readouterr()
    assert run_ladder.main(argv) == 0
    assert "0 to run" in capsys.readouterr().out

    # A cached run made under another protocol is not silently reused.
    with pytest.raises(SystemExit, match="different protocol"):
        run_ladder.main(argv[:-7] + ["--epochs", "2", "--batch-size", "10", "--widths", "4", "8"])


def test_validation_split_is_disjoint_from_training_and_fixed():
    train = run_ladder.fixed_subset(100, 40, 0)
    val = run_ladder.validation_subset(100, train, 25, 2)
    assert len(val) == 25 and len(set(val)) == 25
    assert not set(val) & set(train), "validation images must never be trained on"
    assert np.array_equal(val, run_ladder.validation_subset(100, train, 25, 2))
    with pytest.raises(ValueError, match="exceeds the 60 training images"):
        run_ladder.validation_subset(100, train, 61, 2)


@pytest.mark.parametrize("accs, stop", [
    ([0.80, 0.85], False),                # fewer than 3 epochs: never
    ([0.80, 0.85, 0.851], False),         # +5.1 points over 2 epochs
    ([0.80, 0.850, 0.8509], False),       # 0.8509 - 0.80
    ([0.85, 0.8505, 0.8509], True),       # +0.09 points over 2 epochs
    ([0.85, 0.86, 0.84], True),           # a drop
])
def test_plateau_rule(accs, stop):
    assert run_ladder.plateaued(accs, 0.001) is stop


def test_large_protocol_config_unchanged_by_the_long_protocol_flags():
    """The long protocol's flags add config keys only when set, so the large protocol's cached
    runs keep matching the runner's config."""
    args = run_ladder.parse_args(["--train-size", "20000", "--test-size", "0", "--epochs", "3"])
    cfg = run_ladder.build_config(args)
    cached = json.load(open(os.path.join(run_ladder.REPO, "docs", "results", "accuracy-large-runs",
                                         "static_IF_seed0.json")))["config"]
    assert set(cfg) == set(cached)


def test_runner_validation_early_stop_and_train_accuracy(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_fake_dataset(str(data))
    out = tmp_path / "runs"
    argv = ["--data", str(data), "--out", str(out), "--report", "", "--tasks", "static", "--variants", "LIF",
            "--seeds", "0", "--train-size", "20", "--test-size", "10", "--val-size", "10", "--epochs", "6",
            "--stop-gain", "1.0", "--eval-train", "--batch-size", "10", "--widths", "4", "8"]
    torch_threads = torch.get_num_threads()
    try:
        assert run_ladder.main(argv) == 0
    finally:
        torch.set_num_threads(torch_threads)
    rec = json.loads((out / "static_LIF_seed0.json").read_text())
    # A gain of 100 points is never reached: the rule stops at the third epoch.
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2, 3]
    assert all(0.0 <= e["val_acc"] <= 1.0 for e in rec["epochs"])
    assert 0.0 <= rec["train_eval_acc"] <= 1.0
    assert rec["test_acc"] is None, "an epoch-count selection run must not evaluate on the test set"
    assert rec["config"]["val_size"] == 10 and rec["config"]["eval_train"] is True
    with pytest.raises(SystemExit):
        run_ladder.parse_args(["--stop-gain", "0.001"])


def test_runner_missing_data_exit_code(tmp_path, capsys):
    assert run_ladder.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--report", ""]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_lif_baseline_dynamics():
    lif = run_ladder.MultiStepLIF(tau=2.0)
    x = torch.full((4, 1), 1.5, requires_grad=True)
    s = lif(x)
    # H: 0.75, 1.125 -> spike, reset to 0, 0.75, 1.125 -> spike
    assert s[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_report_statistics():
    m, s = make_report.mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert make_report.mean_std([4.0]) == (4.0, 0.0)


@pytest.mark.parametrize("variant", ["IF", "GC+PE", "GC+PE+SA+TSRD"])
@pytest.mark.parametrize("training", [False, True])
def test_reference_impl_matches_module(variant, training):
    """The benchmark's two implementations are the same neuron: in float64 every spike is equal
    and gradients agree, in eval and in training (where TSRD draws its mask: the same RNG
    state gives both the same mask)."""
    torch.manual_seed(0)
    ref = run_ladder.make_neuron(variant, 8, 4, impl="reference").double()
    mod = run_ladder.make_neuron(variant, 8, 4, impl="module").double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.3)
    mod.load_state_dict(ref.state_dict())
    ref.train(training), mod.train(training)
    x = (torch.randn(4, 2, 8, 3, 3, dtype=torch.float64) * 2).requires_grad_()
    gy = torch.randn(x.shape, dtype=torch.float64)
    outs = []
    for m in (ref, mod):
        torch.manual_seed(0)  # its first draw drops step 2 when tsrd=0.1
        s = m(x)
        outs.append((s, torch.autograd.grad((s * gy).sum(), [x, *m.parameters()])))
    (a, ga), (b, gb) = outs
    assert torch.equal(a, b)
    assert 0 < a.mean() < 1
    for g1, g2 in zip(ga, gb):
        torch.testing.assert_close(g2, g1, rtol=1e-10, atol=1e-10)
    if training and variant.endswith("TSRD"):
        torch.manual_seed(0)  # the same draw as above
        drawn = mod._draw_drop(4, 0, x.device)
        assert drawn.any(), "pick a seed whose TSRD draw drops a step, so the drop path is exercised"


def _fake_run(task, variant, seed, acc, impl="module", sec=10.0):
    return {"task": task, "variant": variant, "seed": seed, "test_acc": acc, "firing_rate": 0.1,
            "seconds_per_epoch": sec, "n_params": 123,
            "machine": {"machine": "test CPU", "torch_threads": 1, "torch": "x", "python": "3", "git_commit": "abc1234",
                        "neuron_impl": impl}}


def _fake_large(ref_offset):
    """Five seeds per row with a known spread; reference runs shifted by ``ref_offset`` (fraction)."""
    spread = [-0.002, -0.001, 0.0, 0.001, 0.002]  # std 0.158 points
    base = {"LIF": 0.860, "IF": 0.870, "IF+SA": 0.8755, "IF+SA+TSRD": 0.8715, "GC": 0.8705, "GC+PE": 0.8700,
            "GC+PE+SA": 0.876, "GC+PE+SA+TSRD": 0.872, "STAA": 0.858}
    runs = []
    for task, variants in make_report.LARGE_TASKS.items():
        for v in variants:
            b = base[v] if task == "static" or v == "STAA" else base[v] - 0.01
            runs += [_fake_run(task, v, s, b + d) for s, d in enumerate(spread)]
    ref = [_fake_run("static", "GC+PE+SA", s, base["GC+PE+SA"] + spread[s] + ref_offset, impl="reference")
           for s in range(3)]
    return runs, ref


def test_large_report_states_every_step_and_the_protocol_target():
    runs, ref = _fake_large(0.0)
    page = make_report.render_large(runs, ref, None, plotted=False)
    assert "Accuracy, large protocol" in page and "accuracy-protocol.md" in page
    # LIF -> full STAA stated plainly with its standard error: +1.20 points, SE sqrt(2 * 0.158^2 / 5) = 0.10
    assert "LIF → full STAA, static: +1.20 points, standard error 0.10" in page
    # Every ladder step with its SE; blocks that do not help are named.
    for a, b in make_report._ladder_steps("static"):
        assert f"- {a} → {b}:" in page
    assert "did not help at this scale, static" in page
    line = next(l for l in page.splitlines() if "did not help at this scale, static" in l)
    assert "GC (IF → GC: +0.05" in line and "PE (GC → GC+PE: -0.05" in line and "TSRD (" in line
    assert "SA (GC+PE → GC+PE+SA" not in line and "SA alone" not in line  # +0.60 and +0.55: they helped
    assert "GC+PE on top of SA (IF+SA → GC+PE+SA: +0.05" in line and "TSRD on IF+SA (IF+SA → IF+SA+TSRD: -0.40" in line
    assert "| IF+SA | STAALIF, sa | 5 | 87.55 ± 0.16 |" in page
    assert "target <= 0.25: met" in page
    assert "Not measured yet" in page  # no timing file given


def test_large_report_op_vs_reference_verdict():
    runs, ref = _fake_large(0.0)
    close = make_report.op_vs_reference(make_report.summarize(runs), make_report.summarize(ref))
    assert len(close) == 1 and close[0]["seeds"] == [0, 1, 2] and close[0]["within"]
    assert close[0]["diff"] == pytest.approx(0.0, abs=1e-9)
    runs, ref = _fake_large(0.005)  # reference 0.5 points higher: beyond the 0.1-point seed spread of seeds 0-2
    far = make_report.op_vs_reference(make_report.summarize(runs), make_report.summarize(ref))
    assert not far[0]["within"] and far[0]["diff"] == pytest.approx(0.5)
    page = make_report.render_large(runs, ref, None, plotted=False)
    assert "they do not train alike" in page


def test_large_report_flags_a_protocol_that_missed_its_target():
    runs, ref = _fake_large(0.0)
    for r in runs:  # widen the LIF spread to about 1.6 points
        if r["variant"] == "LIF":
            r["test_acc"] += 10 * (r["test_acc"] - 0.860 if r["task"] == "static" else r["test_acc"] - 0.850)
    page = make_report.render_large(runs, ref, None, plotted=False)
    assert "NOT met" in page


def test_large_report_reads_timing_and_writes_files(tmp_path):
    runs, ref = _fake_large(0.0)
    rd, refd = tmp_path / "runs", tmp_path / "ref"
    for d, rs in ((rd, runs), (refd, ref)):
        d.mkdir()
        for r in rs:
            (d / f"{r['task']}_{r['variant'].replace('+', '-')}_seed{r['seed']}.json").write_text(json.dumps(r))
    timing = {"command": "python benchmarks/accuracy/time_epoch.py", "started_utc": "now",
              "machine": {"machine": "test CPU", "torch_threads": 1, "torch": "x", "git_commit": "abc1234"},
              "tasks": {"static": {"variant": "GC+PE+SA", "block": 20, "blocks": 10, "module_seconds_per_epoch": 80.0,
                                   "reference_seconds_per_epoch": 120.0, "reference_over_module": 1.5}}}
    tp = tmp_path / "timing.json"
    tp.write_text(json.dumps(timing))
    out = tmp_path / "out"
    assert make_report.main(["--large", "--runs", str(rd), "--reference-runs", str(refd), "--timing", str(tp),
                             "--out", str(out)]) == 0
    page = (out / "accuracy-large.md").read_text()
    assert "| static | GC+PE+SA | 200 | 80.0 | 120.0 | 1.50x |" in page
    assert "87.60 ± 0.16" in page  # static GC+PE+SA mean ± std computed from the files


def test_small_report_says_its_protocol():
    runs, _ = _fake_large(0.0)
    runs = [r for r in runs if r["variant"] in make_report.TASKS[r["task"]]]
    for r in runs:
        r["config"] = {"train_size": 4000, "test_size": 2000}
    page = make_report.render(runs, plotted=False)
    assert page.startswith("# Accuracy, small protocol") and "accuracy-large.md" in page


def _fake_long(lif_spread=1.0):
    spread = [-0.002, -0.001, 0.0, 0.001, 0.002]  # std 0.158 points
    base = {"LIF": 0.870, "IF+SA": 0.880, "IF+SA+TSRD": 0.877, "GC+PE+SA": 0.8805, "GC+PE+SA+TSRD": 0.8790}
    runs = []
    for v, b in base.items():
        for s, d in enumerate(spread):
            r = _fake_run("static", v, s, b + d * (lif_spread if v == "LIF" else 1.0))
            r["train_eval_acc"], r["config"] = 0.95, {"epochs": 9}
            runs.append(r)
    sel = dict(_fake_run("static", "LIF", 0, None), epochs=[{"epoch": e, "val_acc": a} for e, a in
                                                           enumerate([0.85, 0.86, 0.865, 0.8655], 1)],
               config={"val_size": 10000, "epochs": 15, "stop_gain": 0.001})
    return runs, [sel]


def test_long_report_verdicts_gap_and_cost():
    runs, sel = _fake_long()
    cost = {"command": "python benchmarks/accuracy/cost_rows.py", "started_utc": "now", "batch_size": 128,
            "block": 20, "steps": 200, "machine": {"machine": "test CPU", "torch_threads": 1, "torch": "x",
                                                   "git_commit": "abc1234"},
            "rows": {v: {"params": 100 + i, "params_over_lif": i, "seconds_per_step": 0.1 * (1 + i),
                         "saved_bytes_per_step": 2 ** 20 * (1 + i)} for i, v in enumerate(make_report.LONG_ROWS)}}
    page = make_report.render_long(runs, sel, cost)
    assert "stopped after **4 epochs**" in page and "| validation | 85.00 | 86.00 | 86.50 | 86.55 |" in page
    # full - IF+SA = -0.10 with SE 0.10: IF+SA keeps the gain
    assert "the full neuron is -0.10 ± 0.10 points above IF+SA" in page
    assert "IF+SA keeps the full neuron's gain within one standard error." in page
    assert "TSRD on the long schedule, GC+PE+SA → GC+PE+SA+TSRD**: -0.15 ± 0.10" in page
    assert "TSRD on the long schedule, IF+SA → IF+SA+TSRD**: -0.30 ± 0.10 points (beyond twice" in page
    assert "target <= 0.20: met" in page
    # train 95.00, test 88.00: gap +7.00
    assert "| IF+SA | STAALIF, sa | 5 | 88.00 ± 0.16 | 87.80, 87.90, 88.00, 88.10, 88.20 | 95.00 | +7.00 |" in page
    # cost: IF+SA is LONG_ROWS[1]: 0.2 s/step, 2x LIF, 2 MiB
    assert "| IF+SA | +1.00 ± 0.10 | 101 | 1 | 200.0 | 2.00x | 2.0 |" in page
    gpu = {"command": "python benchmarks/cost_model.py --rows", "commit": "abc1234", "device": "H200",
           "rows": {v: {"eager_ms": 1.0 + i, "graph_ms": 0.5 + i} for i, v in enumerate(make_report.LONG_ROWS)}}
    page = make_report.render_long(runs, sel, cost, gpu)
    assert "predicted GPU ms, neuron layers (eager / graph) |" in page
    assert "`python benchmarks/cost_model.py --rows`" in page
    assert "| IF+SA | +1.00 ± 0.10 | 101 | 1 | 200.0 | 2.00x | 2.0 | 2.00 / 1.50 |" in page
    runs, sel = _fake_long(lif_spread=3.0)  # LIF std 0.47: LIF -> rows SE 0.21
    page = make_report.render_long(runs, sel, None)
    assert "NOT met" in page and "Not measured yet" in page and "Incomplete" not in page


def test_long_report_names_rows_short_of_the_minimum_seeds():
    runs, sel = _fake_long()
    runs = [r for r in runs if not (r["variant"] == "IF+SA+TSRD" or (r["variant"] == "LIF" and r["seed"] >= 1))]
    page = make_report.render_long(runs, sel, None)
    assert "**Incomplete**" in page and "LIF (2 more), IF+SA+TSRD (3 more)." in page
    assert "| IF+SA+TSRD | STAALIF, sa, tsrd=0.1 | 0 | missing |" in page


def test_cost_rows_measures_every_row(tmp_path):
    import cost_rows

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_fake_dataset(str(data_dir))
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        assert cost_rows.main(["--data", str(data_dir), "--train-size", "20", "--steps", "2", "--block", "1",
                               "--rows", "LIF", "IF+SA", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rec = json.loads((out / "accuracy-long-cost.json").read_text())
    lif, sa = rec["rows"]["LIF"], rec["rows"]["IF+SA"]
    assert lif["params_over_lif"] == 0 and sa["params_over_lif"] > 0
    assert len(sa["per_block_seconds_per_step"]) == 2 and sa["seconds_per_step"] > 0
    assert sa["saved_bytes_per_step"] > lif["saved_bytes_per_step"] > 0


def test_time_epoch_interleaves_both_implementations(tmp_path):
    import time_epoch

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_fake_dataset(str(data_dir))
    args = run_ladder.parse_args(["--train-size", "20", "--test-size", "10", "--batch-size", "10", "--widths", "4", "8",
                                  "--data", str(data_dir)])
    cfg = run_ladder.build_config(args)
    data = run_ladder.prepare_task("static", fmnist_events.load_fashion_mnist(str(data_dir)), cfg)
    seen = []
    threads = torch.get_num_threads()
    try:
        r = time_epoch.time_task("static", data, cfg, steps=4, block=2, warmup=1, log=seen.append)
    finally:
        torch.set_num_threads(threads)
    assert r["blocks"] == 2 and set(r["per_step_seconds"]) == {"module", "reference"}
    assert all(len(v) == 2 and min(v) > 0 for v in r["per_step_seconds"].values())
    assert r["steps_per_epoch"] == 2
    for impl in ("module", "reference"):
        ps = r["per_step_seconds"][impl]
        assert r[impl + "_seconds_per_epoch"] == pytest.approx((ps[0] + ps[1]) / 2 * 2)  # median of two x 2 steps
    assert r["reference_over_module"] > 0 and len(seen) == 2
