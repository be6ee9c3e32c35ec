"""benchmarks/cost_model.py: the model's arithmetic, the scaling of meter counts, and the --compare
mode on a fake GPU result (no meter, no triton: fast)."""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
import cost_model as cm  # noqa: E402

DEV = dict(bw=1e12, bw_sheet=1e12, sms=100)


def test_launch_time_is_the_larger_of_bytes_and_chain():
    bw_bound = dict(bytes=1e9, programs=1000, chain=10)  # 1 ms of bytes, 6 µs of chain
    assert cm.launch_time(bw_bound, DEV) == pytest.approx(cm.T_DEV + 1e-3)
    chain_bound = dict(bytes=1e3, programs=1000, chain=1000)
    assert cm.launch_time(chain_bound, DEV) == pytest.approx(cm.T_DEV + 1000 * cm.T_RT)
    # Ten programs on a 100-SM device draw a tenth of the bandwidth.
    few = dict(bytes=1e9, programs=10, chain=1)
    assert cm.launch_time(few, DEV) == pytest.approx(cm.T_DEV + 1e-2)


def test_predict_eager_is_host_or_device_graph_is_device():
    counts = dict(launches=[dict(name="k", bytes=0, programs=1, chain=0)] * 3, ops=2, glue_ops=1)
    r = cm.predict(counts, DEV)
    assert r["device"] == pytest.approx(3 * cm.T_DEV + 3 * cm.T_DEV)
    assert r["host"] == pytest.approx(3 * (cm.T_TRI + cm.T_DRV) + 3 * cm.T_OP)
    assert r["eager"] == max(r["host"], r["device"]) and r["graph"] == r["device"]
    measured_host = cm.predict(counts, DEV, host_launcher_s=1e-3)
    assert measured_host["host"] == pytest.approx(1e-3 + 3 * cm.T_DRV + 3 * cm.T_OP)


def test_byte_floor_and_fused_lif():
    assert cm.byte_floor((4, 1, 1, 1), 4) == pytest.approx(4 * (28 + 1))
    assert cm.byte_floor((4, 2, 3), 2) == pytest.approx(24 * (18 + 1))
    lif = cm.fused_lif((1, 1, 10 ** 6), 4, DEV)
    assert lif["graph"] == pytest.approx(2 * cm.T_DEV + 24e6 / 1e12)


def _pt(B, P, f, ops=2):
    launches = [dict(name=n, bytes=f(B, P, k), programs=B * (k + 1), chain=5 + k) for k, n in enumerate("abc")]
    return dict(B=B, P=P, counts=dict(launches=launches, ops=ops, glue_ops=1))


def test_scale_is_exact_for_affine_and_bilinear_counts():
    def f(B, P, k):
        return 10 + k + 2 * B + 3 * P + 7 * B * P

    two = [_pt(1, 16, f), _pt(2, 16, f)]
    c = cm.scale(two, 64, 16)
    assert [r["bytes"] for r in c["launches"]] == [pytest.approx(f(64, 16, k)) for k in range(3)]
    assert [r["programs"] for r in c["launches"]] == [pytest.approx(64 * (k + 1)) for k in range(3)]
    assert [r["chain"] for r in c["launches"]] == [5, 6, 7]
    four = two + [_pt(1, 64, f), _pt(2, 64, f)]
    c = cm.scale(four, 128, 4096)
    assert [r["bytes"] for r in c["launches"]] == [pytest.approx(f(128, 4096, k)) for k in range(3)]
    with pytest.raises(ValueError, match="launch sequence"):
        cm.scale([_pt(1, 16, f), _pt(2, 16, f, ops=3)], 64, 16)
    with pytest.raises(ValueError, match="B at two values"):
        cm.scale([_pt(1, 16, f)], 64, 16)


def _fake_counts(tmp_path):
    rows = []

    def f(B, P, k):
        return 1e3 * B * P

    for name, shape in cm.USER_SHAPES.items():
        T, _, C, *sp = shape
        planes = cm.BIG_PLANES.get(name, [tuple(sp)])
        for plane in planes:
            P = 1
            for s in plane:
                P *= s
            for B in (1, 2):
                for d in ("float32", "bfloat16"):
                    for path in (("per_step",) if name == "big" else ("per_step", "persistent")):
                        rows.append(dict(name=name, shape=[T, B, C, *plane], dtype=d, path=path,
                                         counts=_pt(B, P, f)["counts"]))
    p = tmp_path / "counts.json"
    p.write_text(json.dumps(dict(rows=rows)))
    return p


def test_compare_puts_measurement_beside_prediction(tmp_path, capsys):
    counts = _fake_counts(tmp_path)
    neuron = tmp_path / "gpu_abc_neuron.json"
    neuron.write_text(json.dumps(dict(results=[
        dict(shape="u1 [4,32,128,32,32]", dtype="float32", provider="staa-triton-per_step", median_ms=0.5),
        dict(shape="u1 [4,32,128,32,32]", dtype="float32", provider="staa-triton-graph", median_ms=100.0),
        dict(shape="u2 [4,64,512,4,4]", dtype="float32", provider="sj-lif", median_ms=0.1),
        dict(shape="u1 [4,32,128,32,32]", dtype="float32", provider="staa-triton", status="failed"),
    ])))
    graph = tmp_path / "gpu_abc_graph.md"
    graph.write_text("| shape | backend | mode | eager ms | graph replay ms | eager / replay | replay = eager |\n"
                     "|---|---|---|---|---|---|---|\n"
                     "| u2 [4,64,512,4,4] | triton | eval | 3.000 | 0.800 | 3.8 | yes |\n"
                     "| u2 [4,64,512,4,4] | torch | eval | 9.000 | 2.000 | 4.5 | yes |\n")
    assert cm.main(["--compare", str(neuron), str(graph), "--counts", str(counts)]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| [")]
    assert len(rows) == 3, out  # sj-lif, the failed row and the torch backend are not the Triton route
    pred = {(tuple(r["shape"]), r["dtype"], r["path"], r["mode"]): r["predicted_ms"]
            for r in cm.prediction_rows(json.loads(counts.read_text())["rows"], cm.USER_SHAPES, ("float32",),
                                        ("per_step", "persistent"), "H200",
                                        lambda s: "persistent" if s[2] * cm._plane(s) <= 8192 else "per_step")}
    want = pred[((4, 32, 128, 32, 32), "float32", "per_step", "eager")]
    line = next(ln for ln in rows if "per_step | eager" in ln)
    assert f"| 0.500 | {want:.3f} | {100 * (want / 0.5 - 1):+.0f}%" in line
    graph_line = next(ln for ln in rows if "[4, 32, 128, 32, 32]" in ln and "| graph |" in ln)
    assert "> 30%" in graph_line  # 100 ms measured: far off, and the line says why
    assert any("[4, 64, 512, 4, 4] | float32 | auto | graph | 0.800" in ln for ln in rows)


def test_compare_without_counts_says_how_to_make_them(tmp_path, capsys):
    assert cm.main(["--compare", str(tmp_path / "x.json"), "--counts", str(tmp_path / "none.json")]) == 2
    assert "--count" in capsys.readouterr().err


def test_graph_table_of_b10c880_parses():
    path = os.path.join(os.path.dirname(HERE), "benchmarks", "results", "gpu_graph.md")
    got = cm.parse_graph_md(open(path).read())
    assert got[("early [4,64,128,32,32]", "per_step", "eval")] == (7.69, 1.21)
    assert len(got) == 4


def test_host_from_host_cost_results(tmp_path):
    f = tmp_path / "host_cost.json"
    f.write_text(json.dumps(dict(trees=[dict(label="old"), dict(label="new")], results=[
        dict(tree="old", path="per_step", median_us=dict(total=900.0)),
        dict(tree="new", path="per_step", median_us=dict(total=600.0)),
        dict(tree="new", path="persistent", median_us=dict(total=200.0))])))
    assert cm.host_from(str(f)) == {"per_step": pytest.approx(6e-4), "persistent": pytest.approx(2e-4)}
    assert cm.host_from(None) == {}


def test_compare_with_no_files_fails_clearly(capsys):
    assert cm.main(["--compare"]) == 1
    assert "no result files" in capsys.readouterr().err


def test_host_per_launch_from_host_cost_results(tmp_path):
    f = tmp_path / "host_cost.json"
    f.write_text(json.dumps(dict(trees=[dict(label="old"), dict(label="new")], results=[
        dict(tree="old", path="per_step", median_us=dict(total=900.0), counts=dict(launches=18)),
        dict(tree="new", path="per_step", median_us=dict(total=600.0), counts=dict(launches=20))])))
    assert cm.host_per_launch(str(f)) == pytest.approx(30e-6)
    assert cm.host_per_launch(None) is None


def test_row_predictions_sum_the_layers_and_share_kernels_with_tsrd(monkeypatch):
    """Counts that depend on the row's blocks and the layer: each row's prediction is the sum of its two
    layers' predictions, TSRD rows take their base row's kernels, LIF is the fused-LIF ideal."""
    monkeypatch.setattr(cm, "auto_path", lambda shape: "per_step")
    dev = "H200"
    rows = []
    for r, nk in (("IF+SA", 2), ("GC+PE+SA", 3)):
        for layer, shape in cm.PROTOCOL_LAYERS.items():
            T, _, C, *sp = shape
            for B in (1, 2):
                launches = [dict(name=f"k{i}", bytes=1e6 * B * C, programs=B * 10, chain=4) for i in range(nk)]
                rows.append(dict(name=f"{r}|{layer}", shape=[T, B, C, *sp], dtype="float32", path="per_step",
                                 counts=dict(launches=launches, ops=1, glue_ops=0)))
    pred = cm.row_predictions(rows, dev, per_launch_s=30e-6)
    assert set(pred) == {"LIF", "IF+SA", "GC+PE+SA", "IF+SA+TSRD", "GC+PE+SA+TSRD"}
    assert pred["IF+SA+TSRD"]["graph_ms"] == pred["IF+SA"]["graph_ms"]
    assert pred["GC+PE+SA+TSRD"]["same_kernels_as"] == "GC+PE+SA" and pred["LIF"]["same_kernels_as"] is None
    assert pred["IF+SA"]["launches"] == 4 and pred["GC+PE+SA"]["launches"] == 6 and pred["LIF"]["launches"] == 4
    want = 0.0
    for layer, shape in cm.PROTOCOL_LAYERS.items():
        c = cm.counts_at(rows, f"GC+PE+SA|{layer}", shape, "float32", "per_step")
        assert c["launches"][0]["bytes"] == pytest.approx(1e6 * shape[1] * shape[2])  # extrapolated to B = 128
        want += cm.predict(c, cm.DEVICES[dev], 30e-6 * 3)["graph"]
    assert pred["GC+PE+SA"]["graph_ms"] == pytest.approx(want * 1e3)
    lif = sum(cm.fused_lif(s, 4, cm.DEVICES[dev])["graph"] for s in cm.PROTOCOL_LAYERS.values())
    assert pred["LIF"]["graph_ms"] == pytest.approx(lif * 1e3)
    page = cm.rows_markdown(dict(command="python benchmarks/cost_model.py --rows", commit="abc1234", device=dev,
                                 counts="benchmarks/results/cost_counts_rows.json", layers=cm.PROTOCOL_LAYERS,
                                 host_per_launch_us=30.0, rows=pred))
    assert "| IF+SA+TSRD |" in page and "kernels of IF+SA" in page and "30.0 µs measured" in page


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("triton") is None, reason="triton is not installed")
def test_count_switches_the_blocks():
    """The meter counts the neuron a row asks for: step attention alone moves fewer bytes than the full
    neuron (same launch sequence: the disabled blocks' work is skipped inside the kernels)."""
    shape = (2, 1, 4, 2, 2)
    rows = cm.count([(shape, "float32", "per_step", dict(gc=False, pe=False, sa=True)),
                     (shape, "float32", "per_step")])["rows"]
    assert rows[0]["blocks"] == dict(gc=False, pe=False, sa=True) and rows[1]["blocks"] == {}

    def total(r):
        return sum(x["bytes"] for x in r["counts"]["launches"])

    assert 0 < total(rows[0]) < total(rows[1])
