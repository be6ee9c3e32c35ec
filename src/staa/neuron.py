"""The STAALIF module: a drop-in replacement for LIF nodes (spikingjelly-compatible)."""
from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from ._backend import check_backend_name
from ._blocks import GlobalContext, StepAttention, hidden_features, is_uninitialized
from .functional import NeuronConfig, staa_lif_multistep
from .reference import STAAParams, compute_dtype, staa_lif_reference

Tensor = torch.Tensor

STEP_MODES = ("s", "m")


class STAALIF(nn.Module):
    r"""STAA-LIF neuron: LIF with the spatial-temporal attention aggregator (STAA-SNN, CVPR 2025).

    Per time step t (hard reset, ``H_{-1} = v_reset``; soft reset ``H_{-1} = 0``)::

        X_t = I_t + PE_t                       (eq. 11, ``pos``)
        U_t = GC1(X_t) + GC2(H_{t-1})          (eqs. 7-10, 13, ``gc_x`` and ``gc_h``)
        V_t = SA(U_t)                          (eq. 12, ``sa``)
        S_t = [V_t >= v_threshold]             (eq. 2, rectangular surrogate, eq. 5)
        H_t = v_reset S_t + V_t (1 - S_t)      (eq. 3; soft reset: V_t - v_threshold S_t)

    In training, TSRD (sec. 3.2) skips the whole aggregator at each step t >= 1 with
    probability ``tsrd`` and uses V_t = I_t + H_{t-1}.

    Args:
        channels: C, or ``None`` to size lazily at the first multi-step forward.
        T: number of time steps (length of the position encoding), or ``None`` to take
            it from the first multi-step forward. Single-step mode with ``pe=True`` needs it.
        r: reduction ratio of the channel MLPs; hidden width Ch = max(C // r, 4).
        alpha: SA's pooling scale (eq. 12), fixed.
        tsrd: TSRD drop probability beta in [0, 1); 0 disables it.
        gc, pe, sa: enable the global-context blocks, position encoding, step attention.
            With all three off and ``tsrd=0`` the neuron is an IF neuron.
        v_threshold: firing threshold.
        v_reset: reset potential (hard reset), or ``None`` for soft reset.
        detach_reset: stop the gradient through S inside the reset.
        surrogate_width: width a of the rectangular surrogate (eq. 5).
        step_mode: ``"m"`` (input ``[T, B, C, H, W]`` or ``[T, B, C]``) or ``"s"``
            (input ``[B, C, H, W]`` or ``[B, C]`` per call, state kept between calls).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (``auto`` honours ``STAA_BACKEND``).
        store_v_seq: in multi-step mode keep every H as ``v_seq`` ``[T, ...]``.

    Shapes: output spikes have the input's shape and dtype.
    """

    def __new__(cls, *args, **kwargs):
        # When spikingjelly is already loaded, build an instance of a subclass that is
        # also a spikingjelly MemoryModule, so its utilities accept it without warnings.
        if cls is STAALIF and "spikingjelly.activation_based.base" in sys.modules:
            from ._sjcompat import compat_class

            cls = compat_class()
        return super().__new__(cls)

    def __init__(
        self,
        channels: Optional[int] = None,
        T: Optional[int] = None,
        *,
        r: int = 4,
        alpha: float = 2.0,
        tsrd: float = 0.1,
        gc: bool = True,
        pe: bool = True,
        sa: bool = True,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        detach_reset: bool = False,
        surrogate_width: float = 1.0,
        step_mode: str = "m",
        backend: str = "auto",
        store_v_seq: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if channels is not None and (not isinstance(channels, int) or channels < 1):
            raise ValueError(f"channels must be a positive int or None, got {channels!r}")
        if T is not None and (not isinstance(T, int) or T < 1):
            raise ValueError(f"T must be a positive int or None, got {T!r}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be an int >= 1, got {r!r}")
        if not 0.0 <= float(tsrd) < 1.0:
            raise ValueError(f"tsrd must be in [0, 1), got {tsrd!r}")
        if not float(surrogate_width) > 0.0:
            raise ValueError(f"surrogate_width must be > 0, got {surrogate_width!r}")
        check_backend_name(backend)
        self.channels = channels
        self.T = T
        self.r = r
        self.tsrd = float(tsrd)
        self.cfg = NeuronConfig(
            alpha=float(alpha),
            v_threshold=float(v_threshold),
            v_reset=None if v_reset is None else float(v_reset),
            detach_reset=bool(detach_reset),
            surrogate_width=float(surrogate_width),
        )
        self.backend = backend
        self.step_mode = step_mode
        self.store_v_seq = store_v_seq
        factory = {"device": device, "dtype": dtype}
        hidden = None if channels is None else hidden_features(channels, r)
        if pe:
            if channels is not None and T is not None:
                self.pos = nn.Parameter(torch.zeros(T, channels, **factory))
            else:
                self.pos = UninitializedParameter(**factory)
        else:
            self.pos = None
        self.gc_x = GlobalContext(channels, hidden, **factory) if gc else None
        self.gc_h = GlobalContext(channels, hidden, **factory) if gc else None
        self.sa = StepAttention(channels, hidden, alpha, **factory) if sa else None
        self._h: Optional[Tensor] = None  # membrane state H, never a buffer
        self._t = 0
        self._v_seq: Optional[Tensor] = None
        self._register_load_state_dict_pre_hook(self._materialize_from_state_dict)

    # ------------------------------------------------------------------ settings
    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value not in STEP_MODES:
            raise ValueError(f"step_mode must be 's' (single-step) or 'm' (multi-step), got {value!r}")
        self._step_mode = value

    def supported_step_mode(self):
        return STEP_MODES

    @property
    def v_threshold(self) -> float:
        return self.cfg.v_threshold

    @property
    def v_reset(self) -> Optional[float]:
        return self.cfg.v_reset

    @property
    def detach_reset(self) -> bool:
        return self.cfg.detach_reset

    @property
    def surrogate_width(self) -> float:
        return self.cfg.surrogate_width

    @property
    def alpha(self) -> float:
        return self.cfg.alpha

    @property
    def hidden(self) -> Optional[int]:
        """Hidden width Ch = max(C // r, 4) of the channel MLPs (None until sized)."""
        return None if self.channels is None else hidden_features(self.channels, self.r)

    def extra_repr(self) -> str:
        blocks = [n for n, on in (("gc", self.gc_x is not None), ("pe", self.pos is not None), ("sa", self.sa is not None)) if on]
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset}"
        return (
            f"channels={self.channels}, T={self.T}, blocks={'+'.join(blocks) or 'none'}, tsrd={self.tsrd}, "
            f"v_threshold={self.v_threshold}, {reset}, step_mode={self.step_mode}, backend={self.backend}"
        )

    # ------------------------------------------------------------------ state
    @property
    def v(self) -> Optional[Tensor]:
        """The last membrane state H (after reset), shaped like one step of the input."""
        return self._h

    @property
    def v_seq(self) -> Optional[Tensor]:
        """Every H of the last multi-step call ``[T, ...]`` when ``store_v_seq`` is set."""
        return self._v_seq

    @property
    def t(self) -> int:
        """Index of the next single-step call into the sequence."""
        return self._t

    def reset(self) -> None:
        """Clear the membrane state and the step index (``functional.reset_net`` calls this)."""
        self._h = None
        self._t = 0
        self._v_seq = None

    def detach(self) -> None:
        """Cut the membrane state from the graph (``functional.detach_net`` calls this)."""
        if self._h is not None:
            self._h = self._h.detach()

    # ------------------------------------------------------------------ sizing
    def has_uninitialized_params(self) -> bool:
        return any(is_uninitialized(p) for p in self.parameters())

    def _materialize(self, channels: int, T: Optional[int]) -> None:
        if self.channels is None:
            self.channels = channels
        if self.T is None and T is not None:
            self.T = T
        hidden = hidden_features(self.channels, self.r)
        for block in (self.gc_x, self.gc_h, self.sa):
            if block is not None and any(is_uninitialized(p) for p in block.parameters()):
                block.materialize(self.channels, hidden)
        if self.pos is not None and is_uninitialized(self.pos):
            if self.T is None:
                raise ValueError(
                    "STAALIF with pe=True needs T to size the position encoding; pass T=... to the "
                    "constructor or run one multi-step forward first"
                )
            with torch.no_grad():
                self.pos.materialize((self.T, self.channels))
                self.pos.zero_()

    def _materialize_from_state_dict(self, state_dict, prefix, *args):
        if not self.has_uninitialized_params():
            return
        channels, T = self.channels, self.T
        if prefix + "pos" in state_dict and self.pos is not None:
            T, channels = state_dict[prefix + "pos"].shape
        for name in ("gc_x.query.weight", "gc_h.query.weight", "sa.fc1.weight"):
            if prefix + name in state_dict:
                channels = state_dict[prefix + name].shape[1]
        if channels is not None:
            self._materialize(int(channels), None if T is None else int(T))

    # ------------------------------------------------------------------ forward
    def params(self) -> STAAParams:
        """The layer's weights as the tuple the functional paths take."""
        return STAAParams(
            self.pos,
            None if self.gc_x is None else self.gc_x.params(),
            None if self.gc_h is None else self.gc_h.params(),
            None if self.sa is None else self.sa.params(),
        )

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"STAALIF expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"STAALIF expects a floating-point input, got dtype {x.dtype}; convert it with .float()"
            )
        allowed = (3, 5) if self.step_mode == "m" else (2, 4)
        if x.dim() not in allowed:
            expected = "[T, B, C, H, W] or [T, B, C]" if self.step_mode == "m" else "[B, C, H, W] or [B, C]"
            raise ValueError(
                f"step_mode={self.step_mode!r} expects input of shape {expected}, got a {x.dim()}-D tensor "
                f"of shape {list(x.shape)}; set step_mode to match the input (functional.set_step_mode)"
            )
        c_dim = 2 if self.step_mode == "m" else 1
        c = x.shape[c_dim]
        if self.channels is not None and c != self.channels:
            raise ValueError(
                f"STAALIF was built for {self.channels} channels but the input has {c} at dim {c_dim} "
                f"(shape {list(x.shape)})"
            )
        for p in self.parameters():
            if p.device != x.device:
                raise ValueError(
                    f"input is on {x.device} but STAALIF's parameters are on {p.device}; move one of them "
                    f"(model.to(device) or x.to(device))"
                )
            break

    def _draw_drop(self, steps: int, first_step: int, device) -> Tensor:
        """TSRD mask: bool ``[steps]``; step t (absolute) is dropped with prob ``tsrd`` if t >= 1."""
        if self.training and self.tsrd > 0.0:
            drop = torch.rand(steps, device=device) < self.tsrd
            if first_step == 0:
                drop[0] = False
            return drop
        return torch.zeros(steps, dtype=torch.bool, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """Spikes for ``x``: ``[T, B, C, H, W]``/``[T, B, C]`` (multi-step) or
        ``[B, C, H, W]``/``[B, C]`` (single-step), same shape and dtype as ``x``."""
        self._check_input(x)
        if self.step_mode == "m":
            return self._multi_step(x)
        return self._single_step(x)

    def _multi_step(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        if self.has_uninitialized_params() or self.T is None:
            self._materialize(x.shape[2], T)
        if self.T is not None and T > self.T:
            raise ValueError(
                f"input has T={T} time steps but this STAALIF was built for T={self.T} "
                f"(position encoding of length {self.T}); use T <= {self.T} or build it with T={T}"
            )
        x4 = x.reshape(T, x.shape[1], x.shape[2], -1)
        drop = self._draw_drop(T, 0, x.device)
        spikes, v_last, v_seq = staa_lif_multistep(
            x4, self.params(), drop, self.cfg, self.backend, store_v_seq=self.store_v_seq
        )
        self._h = v_last.reshape(x.shape[1:])
        self._v_seq = None if v_seq is None else v_seq.reshape(x.shape)
        self._t = 0
        return spikes.reshape(x.shape)

    def _single_step(self, x: Tensor) -> Tensor:
        if self.has_uninitialized_params():
            if self.pos is not None and self.T is None:
                raise ValueError(
                    "single-step STAALIF with pe=True needs T (the sequence length) to size the position "
                    "encoding; pass T=... to the constructor or run one multi-step forward first"
                )
            self._materialize(x.shape[1], None)
        x4 = x.reshape(1, x.shape[0], x.shape[1], -1)
        cd = compute_dtype(x.dtype)
        if self._h is None or self._h.shape != x.shape or self._h.device != x.device or self._h.dtype != cd:
            # New sequence or a different batch: start from rest.
            self._h = None
            self._t = 0
        if self.T is not None and self._t >= self.T:
            raise ValueError(
                f"single-step call at t={self._t} but this STAALIF has T={self.T} steps; call reset() "
                f"(or functional.reset_net) between sequences"
            )
        h0 = None if self._h is None else self._h.reshape(x4.shape[1:])
        drop = self._draw_drop(1, self._t, x.device)
        spikes, h = staa_lif_reference(
            x4, self.params(), drop, **self.cfg._asdict(), h0=h0, t0=self._t, return_states=True
        )
        self._h = h[0].reshape(x.shape)
        self._t += 1
        return spikes.reshape(x.shape)
