"""The STAALIF module: a drop-in replacement for LIF nodes (spikingjelly-compatible)."""
from __future__ import annotations

import inspect
import warnings
from typing import Optional

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from . import _checks, _spikingjelly
from ._backend import check_backend_name, resolve_backend
from ._blocks import GlobalContext, StepAttention, hidden_features, is_uninitialized
from ._checks import past_T_message
from .functional import NeuronConfig, _check_not_transformed, staa_lif
from .ops import _op
from .reference import STAAParams
from .surrogate import Surrogate, surrogate_spec

Tensor = torch.Tensor

STEP_MODES = ("s", "m")


class STAALIF(nn.Module):
    r"""STAA-LIF neuron: LIF with the spatial-temporal attention aggregator (STAA-SNN, CVPR 2025).

    Per time step t (hard reset, ``H_{-1} = v_reset``; soft reset ``H_{-1} = 0``)::

        X_t = I_t + PE_t                       (eq. 11, ``pos``)
        U_t = GC1(X_t) + GC2(H_{t-1})          (eqs. 7-10, 13, ``gc_x`` and ``gc_h``)
        V_t = SA(U_t)                          (eq. 12, ``sa``)
        S_t = [V_t >= v_threshold]             (eq. 2; surrogate gradient, eq. 5 by default)
        H_t = v_reset S_t + V_t (1 - S_t)      (eq. 3; soft reset: V_t - v_threshold S_t)

    In training, TSRD (sec. 3.2) skips the whole aggregator at each step t >= 1 with
    probability ``tsrd`` and uses V_t = I_t + H_{t-1}.

    Args:
        channels: C, or ``None`` to size lazily at the first multi-step forward.
        T: number of time steps (length of the position encoding), or ``None`` to take
            it from the first multi-step forward. Single-step mode with ``pe=True`` needs it.
            With ``pe=False`` nothing depends on T: it is not needed, not enforced, and a
            lazy layer does not record it.
        r: reduction ratio of the channel MLPs; hidden width Ch = max(C // r, 4).
        alpha: step attention's pooling scale (eq. 12), fixed, > 0. Not the surrogate's alpha.
        tsrd: TSRD drop probability beta in [0, 1); 0 disables it. The default is the paper's;
            in this project's runs (docs/results/accuracy-long.md, 13 epochs) it lowered the
            full neuron's test accuracy by about 0.3 points and did not help step attention
            alone, so set ``tsrd=0`` unless you reproduce the paper.
        gc, pe, sa: enable the global-context blocks, position encoding, step attention.
            With all three off and ``tsrd=0`` the neuron is an IF neuron. ``gc=False, pe=False,
            tsrd=0`` (step attention alone) is the cheaper choice docs/choosing-options.md
            recommends when speed matters.
        v_threshold: firing threshold.
        v_reset: reset potential (hard reset), or ``None`` for soft reset.
        detach_reset: stop the gradient through S inside the reset.
        surrogate: the spike's surrogate gradient: ``"rect"`` (the paper's eq. 5, default),
            ``"atan"``, ``"sigmoid"`` (spikingjelly's ``ATan``, ``Sigmoid``) or ``"fast_sigmoid"``
            (snnTorch's); formulas in :mod:`staa.surrogate`.
        surrogate_width: the rectangle's width a (``rect`` only; default 1).
        surrogate_alpha: the sharpness of ``atan`` (default 2), ``sigmoid`` (4) or
            ``fast_sigmoid`` (its slope, 25). Giving the one that does not fit the kind is an error.
        step_mode: ``"m"`` (input ``[T, B, C, H, W]`` or ``[T, B, C]``, one sequence from rest per
            call) or ``"s"`` (input ``[B, C, H, W]`` or ``[B, C]`` per call, the state carried
            between calls, gradients flowing through it; ``reset()`` starts a new sequence).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (``auto`` honours ``STAA_BACKEND``).
        store_v_seq: in multi-step mode keep every H as ``v_seq`` ``[T, ...]``.
        check_finite: raise ``ValueError`` when an input holds NaN or Inf. Off by default because
            it synchronises with the host (a GPU stall; not capturable in a CUDA graph); without it,
            a non-finite value gives NaN spikes where it reaches, so the loss shows it.
        sa_init_bias: the value step attention's ``fc2.bias`` starts at; ``None`` (default) keeps
            ``nn.Linear``'s initialisation, where the gate σ(...) starts near 0.5 and halves V. A
            value of 3 starts the gate near 0.95, so a new layer passes its input on almost
            unchanged. ``staa.convert`` chooses per node: 3 where no normalisation layer runs just
            before the neuron (networks without BatchNorm there lose their activity when every layer
            halves it), ``None`` right after a BatchNorm/GroupNorm/LayerNorm layer. The state dict
            is the same.
        device, dtype: of the parameters; ``dtype`` a floating-point dtype.

    Shapes: output spikes have the input's shape, dtype and memory format. The state is kept
    in float32 (float64 for float64 inputs).
    """

    def __new__(cls, *args, **kwargs):
        # When spikingjelly is already loaded, build an instance of a subclass that is
        # also a spikingjelly MemoryModule, so its utilities accept it without warnings.
        if cls is STAALIF and _spikingjelly.is_loaded():
            cls = _spikingjelly.compat_class(STAALIF)
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
        surrogate: str = "rect",
        surrogate_width: Optional[float] = None,
        surrogate_alpha: Optional[float] = None,
        step_mode: str = "m",
        backend: str = "auto",
        store_v_seq: bool = False,
        check_finite: bool = False,
        sa_init_bias: Optional[float] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype (float32, float64, float16, bfloat16) or None, "
                            f"got {dtype!r}; STAA-LIF is real-valued")
        channels = _checks.count(channels, "channels", allow_none=True)
        T = _checks.count(T, "T", allow_none=True)
        self.channels = channels
        self.T = T
        self._init_settings(r, alpha, tsrd, v_threshold, v_reset, detach_reset, surrogate, surrogate_width,
                            surrogate_alpha, step_mode, backend, store_v_seq, check_finite)
        self._init_blocks(channels, T, gc, pe, sa, sa_init_bias, {"device": device, "dtype": dtype})
        self._h: Optional[Tensor] = None  # membrane state H, never a buffer
        self._t = 0  # host-side step counter (eager calls)
        self._step: Optional[Tensor] = None  # the same counter as a device tensor (compiled calls)
        self._t_on_host = True  # False after a compiled single-step call: read _step instead
        self._v_seq: Optional[Tensor] = None
        self._h_inference = False  # H was made by an eager call under inference_mode (read by compiled calls)
        self._reset_task = -1  # the autograd graph task reset() ran in (-1: outside a backward pass)
        # True once every parameter is materialized (lazy layers: after the first call); a
        # shortcut for the per-call check, which walks every submodule.
        self._sized = not self.has_uninitialized_params()
        self._register_load_state_dict_pre_hook(self._materialize_from_state_dict)

    def _init_settings(self, r, alpha, tsrd, v_threshold, v_reset, detach_reset, surrogate, surrogate_width,
                       surrogate_alpha, step_mode, backend, store_v_seq, check_finite) -> None:
        """Validate the neuron's settings and keep them (``cfg`` holds what the op takes)."""
        self.r = _checks.count(r, "r")
        if tsrd is None:
            raise TypeError("tsrd must be a probability in [0, 1); use tsrd=0.0 to switch TSRD off, got None")
        self.tsrd = _checks.real(tsrd, "tsrd", low=0.0, high=1.0, high_open=True,
                                 what="a probability in [0, 1) (TSRD's beta; 0 switches it off)")
        v_threshold = _checks.real(v_threshold, "v_threshold")
        v_reset = _checks.real(v_reset, "v_reset", allow_none=True, what="a finite number (None: soft reset)")
        if v_reset is not None and v_threshold <= v_reset:
            warnings.warn(
                f"STAALIF: v_threshold={v_threshold:g} <= v_reset={v_reset:g}: a neuron that fires is reset to a "
                f"potential at or above its threshold and fires again at the next step unless its input is negative",
                stacklevel=3,  # the caller of STAALIF(...)
            )
        self.cfg = NeuronConfig(
            alpha=_checks.real(alpha, "alpha", low=0.0, low_open=True,
                               what="a finite number > 0 (step attention's pooling scale, eq. 12; the surrogate's "
                                    "alpha is surrogate_alpha)"),
            v_threshold=v_threshold,
            v_reset=v_reset,
            detach_reset=_checks.flag(detach_reset, "detach_reset"),
            surrogate=surrogate_spec(surrogate, surrogate_width, surrogate_alpha),
        )
        self.backend = check_backend_name(backend)
        self.step_mode = step_mode
        self.store_v_seq = _checks.flag(store_v_seq, "store_v_seq")
        self.check_finite = _checks.flag(check_finite, "check_finite")

    def _init_blocks(self, channels, T, gc, pe, sa, sa_init_bias, factory) -> None:
        """The learnable blocks: position encoding ``pos``, ``gc_x`` (GC1), ``gc_h`` (GC2), ``sa``;
        lazy (uninitialised) where ``channels`` or ``T`` is not known yet."""
        gc, pe, sa = (_checks.flag(v, n) for v, n in ((gc, "gc"), (pe, "pe"), (sa, "sa")))
        hidden = None if channels is None else hidden_features(channels, self.r)
        if pe:
            if channels is not None and T is not None:
                self.pos = nn.Parameter(torch.zeros(T, channels, **factory))
            else:
                self.pos = UninitializedParameter(**factory)
        else:
            self.pos = None
        self.gc_x = GlobalContext(channels, hidden, **factory) if gc else None
        self.gc_h = GlobalContext(channels, hidden, **factory) if gc else None
        sa_init_bias = _checks.real(sa_init_bias, "sa_init_bias", allow_none=True,
                                    what="a finite number (None: nn.Linear's default initialisation)")
        self.sa = StepAttention(channels, hidden, self.cfg.alpha, init_bias=sa_init_bias, **factory) if sa else None

    # ------------------------------------------------------------------ settings
    @property
    def step_mode(self) -> str:
        """``"m"`` (multi-step) or ``"s"`` (single-step); settable."""
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value not in STEP_MODES:
            raise ValueError(f"step_mode must be 's' (single-step) or 'm' (multi-step), got {value!r}")
        self._step_mode = value

    def supported_step_mode(self):
        """The step modes this neuron runs: ``("s", "m")`` (spikingjelly's protocol)."""
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
    def surrogate(self) -> Surrogate:
        """The surrogate gradient: ``(kind, param)``, see :mod:`staa.surrogate`."""
        return self.cfg.surrogate

    @property
    def surrogate_width(self) -> Optional[float]:
        """The rectangle's width a (eq. 5); ``None`` for the other kinds."""
        sg = self.cfg.surrogate
        return sg.param if sg.kind == "rect" else None

    @property
    def surrogate_alpha(self) -> Optional[float]:
        """The sharpness of the ``atan``/``sigmoid``/``fast_sigmoid`` surrogate; ``None`` for ``rect``."""
        sg = self.cfg.surrogate
        return None if sg.kind == "rect" else sg.param

    @property
    def alpha(self) -> float:
        """Step attention's pooling scale (eq. 12); not the surrogate's alpha."""
        return self.cfg.alpha

    @property
    def hidden(self) -> Optional[int]:
        """Hidden width Ch = max(C // r, 4) of the channel MLPs (None until sized)."""
        return None if self.channels is None else hidden_features(self.channels, self.r)

    def extra_repr(self) -> str:
        """Sizes, blocks, reset, surrogate, step mode and backend, as ``print(layer)`` shows them."""
        blocks = [n for n, on in (("gc", self.gc_x is not None), ("pe", self.pos is not None), ("sa", self.sa is not None)) if on]
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset}"
        return (
            f"channels={self.channels}, T={self.T}, blocks={'+'.join(blocks) or 'none'}, tsrd={self.tsrd}, "
            f"v_threshold={self.v_threshold}, {reset}, {self.surrogate.describe()}, step_mode={self.step_mode}, "
            f"backend={self.backend}"
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
        """Index of the next single-step call into the sequence (T after a multi-step call)."""
        if not self._t_on_host and self._step is not None:
            self._t, self._t_on_host = int(self._step), True
        return self._t

    def reset(self) -> None:
        """Clear the membrane state and the step index (``functional.reset_net`` calls this)."""
        self._h = None
        self._t = 0
        self._step = None
        self._t_on_host = True
        self._v_seq = None
        self._h_inference = False
        self._reset_task = _graph_task()

    def detach(self) -> None:
        """Cut the membrane state from the graph (``functional.detach_net`` calls this); the step
        index is kept, so truncated backpropagation through time continues the same sequence."""
        if self._h is not None:
            self._h = self._h.detach()

    def reset_parameters(self) -> None:
        """Give every parameter its documented initialisation again: ``pos`` zero, the GC blocks'
        ``nn.Linear``/``nn.LayerNorm`` initialisation with ``value`` zero, step attention's
        ``nn.Linear`` initialisation with ``fc2.bias`` at ``sa_init_bias`` when set. With the same
        seed it draws exactly what the constructor drew. Lazy parameters stay lazy. The state is not
        touched (``reset()`` clears it).

        Meta-device initialisation: ``STAALIF(..., device="meta").to_empty(device=d)`` followed by
        ``reset_parameters()`` (FSDP calls it on each module that holds parameters; every
        submodule's own ``reset_parameters`` gives its part of the same initialisation)."""
        if self.pos is not None and not is_uninitialized(self.pos):
            with torch.no_grad():
                self.pos.zero_()
        for block in (self.gc_x, self.gc_h, self.sa):
            if block is not None:
                block.reset_parameters()

    def __getstate__(self):
        # copy.deepcopy (AveragedModel, EMA copies) and pickling take H cut from the graph: a
        # tensor inside an autograd graph cannot be deep-copied, and a copy has no use for the graph.
        parent = getattr(super(), "__getstate__", None)  # object.__getstate__ exists from Python 3.11
        state = parent() if parent is not None else self.__dict__
        h = state.get("_h")
        if isinstance(h, Tensor) and h.requires_grad:
            state = dict(state, _h=h.detach())
        return state

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .double(), ...: the stored state follows the module, as in spikingjelly.
        # It is cast back to its compute dtype (float32, or float64 for double) at the next call.
        # nn.Module's own: spikingjelly's MemoryModule._apply (a base of the spikingjelly-compatible
        # subclass) takes no recurse argument, which to_empty passes, and STAALIF has no _memories for it.
        out = nn.Module._apply(self, fn, *args, **kwargs)
        if self._h is not None:
            self._h = fn(self._h)
        if self._step is not None:
            self._step = fn(self._step)
        return out

    # ------------------------------------------------------------------ sizing
    def has_uninitialized_params(self) -> bool:
        """True while the layer is lazy (C or T not yet known)."""
        return any(is_uninitialized(p) for p in self.parameters())

    def _materialize(self, channels: int, T: Optional[int]) -> None:
        # Parameters are made outside inference mode, so a layer first called under
        # torch.inference_mode() can still be trained (as nn.LazyLinear can).
        with torch.inference_mode(False):
            self._materialize_params(channels, T)

    def _materialize_params(self, channels: int, T: Optional[int]) -> None:
        if self.channels is None:
            self.channels = channels
        if self.T is None and T is not None and self.pos is not None:
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
        self._sized = not self.has_uninitialized_params()

    def _unsized(self) -> bool:
        """True while a lazy layer still has parameters to materialize."""
        return not self._sized and self.has_uninitialized_params()

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
            raise ValueError(_dims_message(self.step_mode, x))
        c_dim = 2 if self.step_mode == "m" else 1
        c = x.shape[c_dim]
        if self.channels is not None and c != self.channels:
            raise ValueError(
                f"STAALIF was built for {self.channels} channels but the input has {c} at dim {c_dim} "
                f"(shape {list(x.shape)})"
            )
        unsized = self._unsized()
        if unsized and x.numel() == 0:
            what = "0 channels" if c == 0 else ("T=0" if self.step_mode == "m" and x.shape[0] == 0 else "no elements")
            raise ValueError(
                f"STAALIF cannot size itself from an empty input ({what}, shape {list(x.shape)}); pass "
                f"channels=...{' and T=...' if self.pos is not None else ''} to the constructor or give it a "
                f"non-empty input first"
            )
        if self.step_mode == "m" and self.pos is not None and self.T is not None and x.shape[0] > self.T:
            raise ValueError(
                f"input has T={x.shape[0]} time steps but this STAALIF was built for T={self.T} "
                f"(position encoding of length {self.T}); use T <= {self.T} or build it with T={x.shape[0]}"
            )
        for p in self.parameters():
            if p.device != x.device:
                raise ValueError(
                    f"input is on {x.device} but STAALIF's parameters are on {p.device}; move one of them "
                    f"(model.to(device) or x.to(device))"
                )
            if p.is_complex():
                raise TypeError(f"STAALIF's parameters are {p.dtype}; STAA-LIF is real-valued: convert the module "
                                f"to a floating-point dtype (.float())")
            break
        if unsized:  # an explicit backend that cannot run here fails before the layer sizes itself
            resolve_backend(self.backend, x.device)
        if self.check_finite and not torch.compiler.is_compiling() and not x.is_meta:
            _checks.finite_input(x)

    def _draw_drop(self, steps: int, first_step, device) -> Tensor:
        """TSRD mask: bool ``[steps]``; step t (absolute) is dropped with prob ``tsrd`` if t >= 1.

        ``first_step`` is an int, or a 0-d tensor (single-step calls compiled or captured in a CUDA
        graph). The draw is one ``torch.rand`` on the input's device: under CUDA-graph capture
        (``torch.cuda.graph``, ``make_graphed_callables``, ``torch.compile(mode="reduce-overhead")``)
        it reads the generator's state on the device, so every replay draws a new mask; nothing
        here reads a device value on the host."""
        if self.training and self.tsrd > 0.0:
            drop = torch.rand(steps, device=device) < self.tsrd
            if isinstance(first_step, Tensor):
                return drop & (first_step + torch.arange(steps, device=device) > 0)
            if first_step == 0:
                drop[0] = False
            return drop
        return torch.zeros(steps, dtype=torch.bool, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """Spikes for ``x``: ``[T, B, C, H, W]``/``[T, B, C]`` (multi-step) or
        ``[B, C, H, W]``/``[B, C]`` (single-step), same shape, dtype and memory format as ``x``.

        A spike is NaN where the membrane potential is not finite (a NaN or Inf reached the
        neuron), so the loss shows it; ``check_finite=True`` raises on a non-finite input instead.
        """
        if isinstance(x, Tensor):
            _check_not_transformed(x)
        self._check_input(x)
        if self.check_finite and torch.compiler.is_compiling():
            x = _op.finite_or_raise(x)  # the same check, run by the compiled graph at every call
        if self.step_mode == "m":
            out = self._multi_step(x)
        else:
            out = self._single_step(x)
        return _like(out, x)

    def _multi_step(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        if self._unsized() or (self.T is None and self.pos is not None):
            self._materialize(x.shape[2], T)
        # (T <= self.T was checked with the input; an empty sequence draws no TSRD mask)
        drop = self._draw_drop(T, 0, x.device) if T else torch.zeros(0, dtype=torch.bool, device=x.device)
        spikes, h_last, v_seq = staa_lif(
            x, self.params(), self.cfg, drop=drop, backend=self.backend, store_v_seq=self.store_v_seq
        )
        if torch.compiler.is_exporting():  # an exported program keeps no state: it maps a sequence to spikes
            return spikes
        # A multi-step call is one sequence from rest; a following single-step call continues it at t = T.
        self._h = h_last.detach()
        self._v_seq = v_seq
        self._t, self._step, self._t_on_host = T, None, True
        if not torch.compiler.is_compiling():
            self._h_inference = torch.is_inference_mode_enabled()
        return spikes

    def _single_step(self, x: Tensor) -> Tensor:
        if torch.compiler.is_exporting():
            raise RuntimeError(
                "torch.export of a single-step STAALIF would record one step from rest and drop the state that "
                "links the steps; export the model in multi-step mode (functional.set_step_mode(model, 'm')), "
                "whose program maps a whole sequence [T, B, ...] to its spikes"
            )
        if self._unsized():
            if self.pos is not None and self.T is None:
                raise ValueError(
                    "single-step STAALIF with pe=True needs T (the sequence length) to size the position "
                    "encoding; pass T=... to the constructor or run one multi-step forward first"
                )
            self._materialize(x.shape[1], None)
        h0 = self._h
        if h0 is not None:
            self._check_state(h0, x)
        # Compiled and CUDA-graph-captured calls keep the step index in the device counter _step: a
        # Python int would be specialised on (a recompilation per step) or frozen into the captured
        # graph, and reading the counter back to the host would synchronise (not capturable). Eager
        # calls keep the host int. The counter starts from the host index where there is no counter yet.
        on_device = torch.compiler.is_compiling() or _capturing(x)
        if not on_device or self._step is None:  # the host index is known: check it here
            if self.pos is not None and self.t >= self.pos.shape[0]:
                raise ValueError(past_T_message(self.t, 1, self.pos.shape[0]))
        if on_device:
            step = self._step if self._step is not None else torch.full((), self._t, dtype=torch.long, device=x.device)
            t0 = step
        else:
            t0 = self.t
        drop = self._draw_drop(1, t0, x.device)
        spikes, h_last, _ = staa_lif(x.unsqueeze(0), self.params(), self.cfg, drop=drop, h0=h0, t0=t0,
                                     backend=self.backend)
        self._h = h_last
        if on_device:
            self._step, self._t_on_host = step + 1, False
        else:
            self._t = t0 + 1
            self._step = None
            self._h_inference = torch.is_inference_mode_enabled()
        return spikes[0]

    def _check_state(self, h: Tensor, x: Tensor) -> None:
        if h.shape != x.shape:
            raise ValueError(
                f"single-step input of shape {list(x.shape)} does not match the stored state of shape "
                f"{list(h.shape)} (step t={self._t} of a sequence); call reset() (functional.reset_net) "
                f"before a new sequence or batch"
            )
        if h.device != x.device:
            raise ValueError(
                f"the stored state is on {h.device} but the input is on {x.device}; move the module with "
                f".to(device) (it moves the state too) or call reset()"
            )
        # dynamo cannot trace is_inference(): compiled calls read the flag the eager call left
        compiling = torch.compiler.is_compiling()
        if (self._h_inference if compiling else h.is_inference() and not torch.is_inference_mode_enabled()):
            raise RuntimeError(
                "the stored state was made under torch.inference_mode() and cannot be used for training; "
                "call reset() (functional.reset_net) before leaving inference mode"
            )
        if not compiling and _graph_task() not in (-1, self._reset_task):
            raise RuntimeError(
                f"single-step STAALIF called during a backward pass with the state of step t={self._t}: "
                f"torch.utils.checkpoint is recomputing a single step, which would rerun it from the state the "
                f"sequence ended with and give wrong gradients. Checkpoint a function that runs a whole sequence "
                f"(reset() first, then every step), or checkpoint the layer in multi-step mode"
            )


def _graph_task() -> int:
    """The autograd graph task running now: -1 outside a backward pass (torch.utils.checkpoint
    recomputes inside one)."""
    return torch._C._current_graph_task_id()


def _dims_message(step_mode: str, x: Tensor) -> str:
    shape = list(x.shape)
    if step_mode == "m":
        head = f"step_mode='m' expects input of shape [T, B, C, H, W] or [T, B, C], got a {x.dim()}-D tensor of shape {shape}"
        if x.dim() == 4:
            return (f"{head}. If it is one step [B, C, H, W], set step_mode='s' (functional.set_step_mode); if it is "
                    f"a sequence of 1-D maps [T, B, C, L] (Conv1d), pass x.unsqueeze(-1) ([T, B, C, L, 1]) and "
                    f"squeeze(-1) the spikes")
        if x.dim() == 2:
            return f"{head}. If it is one step [B, C], set step_mode='s' (functional.set_step_mode)"
        return f"{head}; flatten the extra dimensions into H and W"
    head = f"step_mode='s' expects input of shape [B, C, H, W] or [B, C], got a {x.dim()}-D tensor of shape {shape}"
    if x.dim() == 3:
        return (f"{head}. If it is a sequence [T, B, C], set step_mode='m' (functional.set_step_mode); if it is one "
                f"step of 1-D maps [B, C, L] (Conv1d), pass x.unsqueeze(-1) ([B, C, L, 1]) and squeeze(-1) the spikes")
    if x.dim() == 5:
        return f"{head}. If it is a sequence [T, B, C, H, W], set step_mode='m' (functional.set_step_mode)"
    return f"{head}; flatten the extra dimensions into H and W"


def _capturing(x: Tensor) -> bool:
    """True while a CUDA graph is being captured on the current stream of ``x``'s device."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _like(out: Tensor, x: Tensor) -> Tensor:
    """``out`` in ``x``'s memory format (channels_last inputs give channels_last spikes)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return out.contiguous(memory_format=torch.channels_last_3d)
    return out


# IDEs and inspect.signature read __init__'s arguments, not the __new__ hook above.
STAALIF.__signature__ = inspect.Signature(list(inspect.signature(STAALIF.__init__).parameters.values())[1:])
