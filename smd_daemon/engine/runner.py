"""The denoiser call: eager, compiled (``torch.compile``) or replayed from a CUDA graph.

The engine's steps hand it a flat dict of device tensors (the sample, its
timestep, the conditioning, attention-region weights), so the steady-state
call can be captured once and replayed: one graph per input shape (batch,
window, prompts), captured the second time that shape is seen, so a shape
that occurs once (a pass cut short, an edit's first step) never pays for a
capture. A compile or capture that fails falls back to eager with one
warning. The model family maps the flat inputs to its denoiser's arguments.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

log = logging.getLogger(__name__)

MAX_GRAPHS = 4  # captured shapes kept; each holds its own activation memory


def check_speed_options(
    device: torch.device, compile: bool = False, cuda_graphs: bool = False, overlap_decode: bool = False
) -> None:
    """Refuse, in one sentence (ValueError), a speed switch this device cannot do."""
    asked = [
        name
        for name, on in (
            ("torch.compile", compile),
            ("CUDA graphs", cuda_graphs),
            ("decoding on a side stream", overlap_decode),
        )
        if on
    ]
    if asked and torch.device(device).type != "cuda":
        raise ValueError(
            f"{' and '.join(asked)} need{'s' if len(asked) == 1 else ''} a CUDA device; this model runs on {device}"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


WEIGHTS = "w:"  # input key prefix of attention-region weights: "w:<positions>"


def weight_key(positions: int) -> str:
    return f"{WEIGHTS}{positions}"


class DenoiserRunner:
    """Calls the family's denoiser with flat tensor inputs; sets the
    attention-region weights (``RegionContext``) for the duration of the call."""

    def __init__(self, family, region_ctx=None, compile: bool = False, cuda_graphs: bool = False):
        self.family = family
        self.denoiser = family.denoiser
        self.ctx = region_ctx
        # Default dynamic shapes: after a second batch size the compiled code
        # generalises instead of recompiling for every new batch.
        self._compiled = torch.compile(self.denoiser) if compile else None
        self.cuda_graphs = cuda_graphs
        self._graphs: OrderedDict[tuple, _Replay] = OrderedDict()
        self._seen: set[tuple] = set()
        self.calls = 0  # counted for tests and benchmarks
        self.captures = 0

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``inputs``: ``sample``, ``timestep``, the conditioning's and the
        guidance's (see ``Family.denoise``), and region weights (``weight_key``)."""
        self.calls += 1
        if self.cuda_graphs:
            try:
                out = self._replayed(inputs)
                if out is not None:
                    return out
            except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
                log.warning(
                    "CUDA graph capture failed (%s); the denoiser runs without graphs from now on", _first_line(e)
                )
                self.cuda_graphs = False
                self._graphs.clear()
        return self.forward(inputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = {int(k[len(WEIGHTS) :]): v for k, v in inputs.items() if k.startswith(WEIGHTS)}
        fn = self._compiled if self._compiled is not None else self.denoiser
        if self.ctx is not None:
            self.ctx.weights = weights or None
        try:
            return self.family.denoise(fn, inputs)
        except Exception as e:  # noqa: BLE001 - a compile failure surfaces at the first call
            if fn is self.denoiser:
                raise
            log.warning("torch.compile of the denoiser failed (%s); running it eagerly", _first_line(e))
            self._compiled = None
        finally:
            if self.ctx is not None:
                self.ctx.weights = None
        return self.forward(inputs)

    def _replayed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        key = tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in inputs.items())
        replay = self._graphs.get(key)
        if replay is None:
            if key not in self._seen:  # first sight of a shape: warm-up, run eagerly
                self._seen.add(key)
                return None
            replay = _Replay(self, inputs)
            self.captures += 1
            self._graphs[key] = replay
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        return replay(inputs)


class _Replay:
    """Static input buffers and a captured graph that reads them. On a CUDA
    device the graph is captured; elsewhere (tests) the same buffers are run
    eagerly, so the data flow around the graph is the one that gets tested."""

    def __init__(self, runner: DenoiserRunner, inputs: dict[str, torch.Tensor]):
        self.runner = runner
        self.static = {k: v.clone() for k, v in inputs.items()}
        self.graph = None
        device = inputs["sample"].device
        if device.type == "cuda":
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # library autotuning (and compilation) happen before capture
                    runner.forward(self.static)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: planning threads may use the device while this thread captures
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.out = runner.forward(self.static)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        for k, v in inputs.items():
            self.static[k].copy_(v)
        if self.graph is None:
            self.out = self.runner.forward(self.static)
        else:
            self.graph.replay()
        # The next replay overwrites the output buffer: hand out a copy.
        return self.out.clone()
