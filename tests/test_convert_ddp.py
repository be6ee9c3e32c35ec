"""A converted model under 2-process DistributedDataParallel (CPU, gloo)."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import requires_spikingjelly

import convert_helpers as h

pytestmark = [
    requires_spikingjelly,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_step_matches_a_single_process_step_on_the_whole_batch(tmp_path):
    seed = 3
    mp.spawn(h.ddp_worker, args=(2, _free_port(), str(tmp_path), seed), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")

    net = h.ddp_model(seed)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = h.ddp_batch(seed)
    h.sgd_step(net, x, y)
    single = net.state_dict()

    assert rank0.keys() == rank1.keys() == single.keys()
    assert any(k.endswith(".pos") for k in single)  # STAALIF parameters are part of the comparison
    for k in single:
        assert torch.equal(rank0[k], rank1[k]), k
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-5, atol=1e-6, msg=k)
    moved = [k for k in single if not torch.equal(single[k], start[k])]
    assert len(moved) == len(single), sorted(set(single) - set(moved))  # every parameter took a step
