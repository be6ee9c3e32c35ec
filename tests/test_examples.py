"""The training examples under docs/examples/ run: a few steps on tiny data, so they cannot rot."""
import gzip
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import requires_spikingjelly

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
FMNIST = "/usr/share/datasets/fashion-mnist"


def _run(script, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("STAA_BACKEND", None)
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _import_train_fmnist():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import train_fmnist
    finally:
        sys.path.remove(str(EXAMPLES))
    return train_fmnist


@pytest.mark.slow
def test_train_fmnist_runs_saves_and_reloads(tmp_path):
    ckpt = tmp_path / "model.pt"
    out = _run("train_fmnist.py", "--random-data", "--steps", "3", "--train-size", "192", "--test-size", "64",
               "--batch", "32", "--channels", "4", "--threads", "1", "--log-every", "1", "--checkpoint", str(ckpt),
               "--results", str(tmp_path / "run.json"))
    assert len(re.findall(r"step \d+: loss", out)) == 3
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["command"].startswith("python docs/examples/train_fmnist.py --random-data --steps 3")
    assert record["commit"] and record["machine"]["cpu"] and record["results"]["steps"] == 3
    assert 0 <= record["results"]["test_accuracy"] <= 1
    m = re.search(r"reloaded model: test accuracy ([0-9.]+) \(same\)", out)
    assert m, out
    # the checkpoint rebuilds the model without the script's arguments
    tf = _import_train_fmnist()
    saved = torch.load(ckpt, map_location="cpu")
    model = tf.ConvSNN(**saved["config"])
    model.load_state_dict(saved["model"])
    assert saved["config"] == {"channels": 4, "T": 4} and saved["steps"] == 3
    with torch.no_grad():
        assert model.eval()(tf.encode(torch.rand(2, 1, 28, 28), 4, "direct")).shape == (2, 10)


def test_train_fmnist_poisson_encoding_and_reset():
    tf = _import_train_fmnist()
    img = torch.rand(3, 1, 28, 28)
    x = tf.encode(img, 5, "poisson")
    assert x.shape == (5, 3, 1, 28, 28) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(tf.encode(img, 2, "direct")[1], img)
    model = tf.ConvSNN(4, 5)
    model(x)
    assert model.sn1.v is not None
    tf.reset_net(model)
    assert model.sn1.v is None and model.sn2.v is None


def test_idx_reader(tmp_path):
    tf = _import_train_fmnist()
    imgs = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([1, 7, 9], dtype=torch.uint8)
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 3, 28, 28) + imgs.numpy().tobytes())
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + labels.numpy().tobytes())
    tr_x, tr_y, te_x, te_y = tf.load_fmnist(str(tmp_path))
    assert tr_x.shape == (3, 1, 28, 28) and torch.allclose(tr_x[:, 0] * 255, imgs.float())
    assert tr_y.tolist() == [1, 7, 9] and te_y.dtype == torch.int64
    assert tf.load_fmnist(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not os.path.exists(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")), reason="no Fashion-MNIST")
def test_train_fmnist_on_the_real_files(tmp_path):
    out = _run("train_fmnist.py", "--steps", "2", "--test-size", "64", "--channels", "4", "--threads", "1",
               "--checkpoint", str(tmp_path / "m.pt"))
    assert "train 60000 / test 64 images" in out and "(same)" in out


@requires_spikingjelly
@pytest.mark.slow
def test_convert_spikingjelly_example_trains(tmp_path):
    out = _run("convert_spikingjelly.py", "--random-data", "--steps", "3", "--batch", "16", "--test-size", "32",
               "--threads", "1", "--results", str(tmp_path / "run.json"))
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["command"].endswith("--results " + str(tmp_path / "run.json"))
    assert record["results"]["steps"] == 3 and "replaced 2 node(s)" in record["results"]["report"]
    assert "replaced 2 node(s) with STAALIF, skipped 1" in out
    assert "classifier.2" in out and "excluded" in out
    assert len(re.findall(r"step \d+: loss", out)) == 1  # step 3 is the last one
    assert re.search(r"test accuracy after 3 steps: [0-9.]+ on 32 images", out)
