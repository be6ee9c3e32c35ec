"""Fashion-MNIST IDX reader and an N-MNIST-style event simulator for the accuracy ladder.

The event task follows how N-MNIST was recorded (Orchard et al., 2015): the static
image is moved in front of an event camera along a three-leg saccade (a triangle),
each pixel emits an ON/OFF event whenever its log intensity has changed by more
than a contrast threshold since its last event, and the events are binned into T
frames of two channels (ON, OFF). Here the camera is simulated, so the events come
from the real Fashion-MNIST images but are not a sensor recording.
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

HOW_TO_GET = (
    "Install the Debian package that ships them:\n"
    "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
    "(it puts the four *-ubyte.gz files in /usr/share/datasets/fashion-mnist), or copy the four files\n"
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and\n"
    "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist (data/fashion)\n"
    "into a directory and pass it with --data DIR. This benchmark never downloads anything."
)

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) into a numpy array of its stored shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (first two bytes must be zero, got {raw[:2]!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(dims)) if ndim else 1
    offset = 4 + 4 * ndim
    expected = offset + count * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: header says shape {tuple(dims)} ({expected} bytes) but the file has {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return data.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    for code, dtype in _IDX_DTYPES.items():
        if dtype.kind == array.dtype.kind and dtype.itemsize == array.dtype.itemsize:
            break
    else:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(dtype, copy=False).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find(data_dir: str, stem: str) -> Optional[str]:
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    return None


def load_fashion_mnist(data_dir: str = DEFAULT_DATA_DIR) -> Dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays: images uint8 ``[N, 28, 28]``, labels uint8 ``[N]``.

    Raises ``FileNotFoundError`` with instructions when a file is missing.
    """
    out, missing = {}, []
    for key, stem in FILES.items():
        path = _find(data_dir, stem)
        if path is None:
            missing.append(stem + "[.gz]")
        else:
            out[key] = read_idx(path)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {data_dir!r}: missing {', '.join(missing)}.\n{HOW_TO_GET}"
        )
    for split in ("train", "test"):
        n_img, n_lab = len(out[split + "_images"]), len(out[split + "_labels"])
        if n_img != n_lab:
            raise ValueError(f"{split} split has {n_img} images but {n_lab} labels")
    return out


# ----------------------------------------------------------------------------- events

# Saccade vertices in pixels (dx, dy) relative to the centred image: a triangle walked
# once, start -> second vertex -> third vertex -> start, like the three N-MNIST saccades.
SACCADE = ((-2.0, 2.0), (0.0, -2.0), (2.0, 2.0))


def saccade_path(steps_per_leg: int) -> np.ndarray:
    """Positions ``[3 * steps_per_leg + 1, 2]`` (dx, dy) along the closed three-leg path."""
    pts = [np.asarray(SACCADE[0])]
    for leg in range(3):
        a, b = np.asarray(SACCADE[leg]), np.asarray(SACCADE[(leg + 1) % 3])
        for k in range(1, steps_per_leg + 1):
            pts.append(a + (b - a) * k / steps_per_leg)
    return np.stack(pts)


def _shift(canvas: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """Translate ``[N, 1, H, W]`` by (dx, dy) pixels with bilinear sampling, zeros outside."""
    n, _, h, w = canvas.shape
    theta = torch.tensor([[1.0, 0.0, -2.0 * dx / w], [0.0, 1.0, -2.0 * dy / h]], dtype=canvas.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(canvas.shape), align_corners=False)
    return F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def simulate_events(
    images: np.ndarray,
    T: int = 8,
    seed: int = 0,
    *,
    size: int = 34,
    steps_per_leg: int = 8,
    threshold: float = 0.25,
    threshold_sigma: float = 0.03,
    noise_rate: float = 1e-3,
    log_eps: float = 0.1,
    chunk: int = 2048,
) -> torch.Tensor:
    """Simulated N-MNIST-style event frames from static images.

    Each uint8 image ``[N, h, w]`` is centred on a ``size x size`` canvas and moved
    along :func:`saccade_path`. A pixel emits ``floor(|dL| / c)`` events of the sign
    of dL, where dL is the change of L = log(log_eps + I) since its last event and c its
    contrast threshold (``threshold`` with a fixed per-pixel mismatch of relative std
    ``threshold_sigma``, separate for ON and OFF). Background-activity noise adds one
    event with probability ``noise_rate`` per pixel, polarity and frame. The
    ``3 * steps_per_leg`` moves are split evenly over ``T`` frames.

    Deterministic given ``seed`` (it fixes the threshold mismatch and the noise).
    Returns event counts ``[N, T, 2, size, size]`` (uint8; channel 0 ON, 1 OFF).
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be [N, H, W], got shape {images.shape}")
    n, h, w = images.shape
    if h > size or w > size:
        raise ValueError(f"canvas size {size} is smaller than the images ({h}x{w})")
    path = saccade_path(steps_per_leg)
    moves = len(path) - 1
    if not 1 <= T <= moves:
        raise ValueError(f"T={T} frames need 1 <= T <= {moves} moves along the path (raise steps_per_leg)")
    gen = torch.Generator().manual_seed(int(seed))
    c = threshold * (1.0 + threshold_sigma * torch.randn(2, size, size, generator=gen))
    c = c.clamp_min(0.25 * threshold)
    c_on, c_off = c[0], c[1]
    frame_of = (np.arange(moves) * T) // moves
    out = torch.zeros(n, T, 2, size, size, dtype=torch.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    for start in range(0, n, chunk):
        img = torch.as_tensor(images[start : start + chunk], dtype=torch.float32) / 255.0
        canvas = torch.zeros(len(img), 1, size, size)
        canvas[:, 0, top : top + h, left : left + w] = img
        ref = torch.log(log_eps + _shift(canvas, *path[0]).clamp_min(0.0))[:, 0]
        counts = torch.zeros(len(img), T, 2, size, size, dtype=torch.int32)
        for k in range(moves):
            level = torch.log(log_eps + _shift(canvas, *path[k + 1]).clamp_min(0.0))[:, 0]
            diff = level - ref
            n_on = torch.floor(diff.clamp_min(0.0) / c_on)
            n_off = torch.floor((-diff).clamp_min(0.0) / c_off)
            ref = ref + n_on * c_on - n_off * c_off
            f = int(frame_of[k])
            counts[:, f, 0] += n_on.to(torch.int32)
            counts[:, f, 1] += n_off.to(torch.int32)
        if noise_rate > 0:
            noise = torch.rand(counts.shape, generator=gen) < noise_rate
            counts += noise.to(torch.int32)
        out[start : start + chunk] = counts.clamp(max=255).to(torch.uint8)
    return out


def event_stats(frames: torch.Tensor) -> Tuple[float, float]:
    """(mean events per sample, fraction of ON events) of ``[N, T, 2, H, W]`` frames."""
    per_sample = frames.float().sum(dim=(1, 2, 3, 4))
    total = per_sample.sum().clamp_min(1.0)
    return float(per_sample.mean()), float(frames[:, :, 0].float().sum() / total)
