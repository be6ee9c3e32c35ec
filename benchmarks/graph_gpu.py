"""One STAALIF forward + backward captured in a CUDA graph and replayed, against eager.

    python benchmarks/graph_gpu.py

Checks that the Triton route needs no host synchronisation (capture fails if it does) and
shows the time left once host launch overhead is gone. Prints a small table. Needs CUDA.
"""
from __future__ import annotations

import os
import sys


def main() -> int:
    import torch

    import staa

    print("| shape | path | eager ms | graph replay ms | replay = eager output |")
    print("|---|---|---|---|---|")
    for sname, shape in {"early [4,64,128,32,32]": (4, 64, 128, 32, 32), "deep [4,64,512,4,4]": (4, 64, 512, 4, 4)}.items():
        for path in ("per_step", "persistent"):
            os.environ["STAA_TRITON_PATH"] = path
            torch.manual_seed(0)
            m = staa.STAALIF(shape[2], shape[0], backend="triton", device="cuda").eval()
            x = (torch.randn(shape, device="cuda") * 0.8 + 0.35).requires_grad_(True)
            gy = torch.randn(shape, device="cuda")

            def step():
                m.reset()
                x.grad = None
                y = m(x)
                y.backward(gy)
                return y

            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(s)
            y_eager = step().detach().clone()
            gx_eager = x.grad.detach().clone()
            try:
                g = torch.cuda.CUDAGraph()
                x.grad = None
                with torch.cuda.graph(g):
                    m.reset()
                    y_static = m(x)
                    y_static.backward(gy)
                status = ""
            except Exception as exc:
                print(f"| {sname} | {path} | | capture failed: {type(exc).__name__}: {str(exc)[:120]} | |")
                continue

            def timed(fn, n=20):
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(n):
                    fn()
                b.record()
                torch.cuda.synchronize()
                return a.elapsed_time(b) / n

            eager = timed(step)
            replay = timed(g.replay)
            same = torch.equal(y_static, y_eager) and torch.allclose(x.grad, gx_eager, rtol=1e-5, atol=1e-6)
            print(f"| {sname} | {path} | {eager:.3f} | {replay:.3f} | {same} |{status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
