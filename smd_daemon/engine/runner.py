"""The UNet call: eager, compiled (``torch.compile``) or replayed from a CUDA graph.

The engine's steps hand it device tensors only, so the steady-state call can
be captured once and replayed: one graph per input shape (batch, window,
prompts), captured the second time that shape is seen, so the warm-up frames
of a stream (whose batch grows frame by frame) never pay for a capture. A
compile or capture that fails falls back to eager with one warning.
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


class UNetRunner:
    """Calls the UNet with flat tensor inputs; sets the attention-region
    weights (``RegionContext``) for the duration of the call."""

    def __init__(self, unet, region_ctx=None, compile: bool = False, cuda_graphs: bool = False):
        self.unet = unet
        self.ctx = region_ctx
        # Default dynamic shapes: after a second batch size the compiled code
        # generalises instead of recompiling for every warm-up batch.
        self._compiled = torch.compile(unet) if compile else None
        self.cuda_graphs = cuda_graphs
        self._graphs: OrderedDict[tuple, _Replay] = OrderedDict()
        self._seen: set[tuple] = set()
        self.captures = 0  # counted for tests and benchmarks

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        emb: torch.Tensor,
        time_cond: torch.Tensor | None = None,
        region_weights: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        inputs = {"sample": sample, "timestep": timestep, "emb": emb}
        if time_cond is not None:
            inputs["time_cond"] = time_cond
        for size, w in (region_weights or {}).items():
            inputs[f"w{size}"] = w
        if self.cuda_graphs:
            try:
                out = self._replayed(inputs)
                if out is not None:
                    return out
            except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
                log.warning("CUDA graph capture failed (%s); the UNet runs without graphs from now on", _first_line(e))
                self.cuda_graphs = False
                self._graphs.clear()
        return self.forward(inputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = {int(k[1:]): v for k, v in inputs.items() if k[0] == "w"}
        kw = {"timestep_cond": inputs["time_cond"]} if "time_cond" in inputs else {}
        fn = self._compiled if self._compiled is not None else self.unet
        if self.ctx is not None:
            self.ctx.weights = weights or None
        try:
            return fn(
                inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["emb"], return_dict=False, **kw
            )[0]
        except Exception as e:  # noqa: BLE001 - a compile failure surfaces at the first call
            if fn is self.unet:
                raise
            log.warning("torch.compile of the UNet failed (%s); running it eagerly", _first_line(e))
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

    def __init__(self, runner: UNetRunner, inputs: dict[str, torch.Tensor]):
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
