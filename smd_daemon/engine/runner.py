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
# Control inputs. A T2I-Adapter's residuals, already summed over the
# controls and scaled, one per denoiser resolution: "adapter:<k>". A
# ControlNet's control image per sample, "controlnet:<kind>:<j>", and its
# scale per sample, "scale:controlnet:<kind>:<j>"; the runner turns these
# into the ControlNets' summed residuals, "residual:<k>" and "residual:mid".
ADAPTER = "adapter:"
CONTROLNET = "controlnet:"
SCALE = "scale:"
RESIDUAL = "residual:"
MID_RESIDUAL = "residual:mid"


def weight_key(positions: int) -> str:
    return f"{WEIGHTS}{positions}"


def adapter_key(k: int) -> str:
    return f"{ADAPTER}{k}"


def controlnet_key(kind: str, j: int) -> str:
    return f"{CONTROLNET}{kind}:{j}"


def scale_key(key: str) -> str:
    return SCALE + key


def _numbered(inputs: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    keys = [k for k in inputs if k.startswith(prefix) and k[len(prefix) :].isdigit()]
    return [inputs[k] for k in sorted(keys, key=lambda k: int(k[len(prefix) :]))]


def control_arguments(inputs: dict[str, torch.Tensor]) -> dict:
    """The UNet keyword arguments of the control inputs (any family whose
    denoiser is diffusers' ``UNet2DConditionModel``): T2I-Adapter residuals,
    added inside the down blocks, and ControlNet residuals, added to the
    skip connections and the middle block's output."""
    kw: dict = {}
    adapter = _numbered(inputs, ADAPTER)
    if adapter:  # a fresh list each call: the UNet pops from it
        kw["down_intrablock_additional_residuals"] = adapter
    if MID_RESIDUAL in inputs:
        kw["down_block_additional_residuals"] = tuple(_numbered(inputs, RESIDUAL))
        kw["mid_block_additional_residual"] = inputs[MID_RESIDUAL]
    return kw


class DenoiserRunner:
    """Calls the family's denoiser with flat tensor inputs; sets the
    attention-region weights (``RegionContext``) for the duration of the call."""

    def __init__(self, family, region_ctx=None, compile: bool = False, cuda_graphs: bool = False, controlnets=None):
        self.family = family
        self.denoiser = family.denoiser
        self.ctx = region_ctx
        self.controlnets: dict[str, torch.nn.Module] = dict(controlnets or {})  # kind -> ControlNet
        # Default dynamic shapes: after a second batch size the compiled code
        # generalises instead of recompiling for every new batch.
        self._compiled = torch.compile(self.denoiser) if compile else None
        self.cuda_graphs = cuda_graphs
        self._graphs: OrderedDict[tuple, _Replay] = OrderedDict()
        self._seen: set[tuple] = set()
        self.calls = 0  # counted for tests and benchmarks
        self.captures = 0
        self.controlnet_calls = 0  # ControlNet forwards (one per control per call that has one)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``inputs``: ``sample``, ``timestep``, the conditioning's and the
        guidance's (see ``Family.denoise``), and region weights (``weight_key``)."""
        self.calls += 1
        self.controlnet_calls += sum(1 for k in inputs if k.startswith(CONTROLNET))
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
            return self.family.denoise(fn, self._with_controlnets(inputs))
        except Exception as e:  # noqa: BLE001 - a compile failure surfaces at the first call
            if fn is self.denoiser:
                raise
            log.warning("torch.compile of the denoiser failed (%s); running it eagerly", _first_line(e))
            self._compiled = None
        finally:
            if self.ctx is not None:
                self.ctx.weights = None
        return self.forward(inputs)

    def _with_controlnets(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` with each ControlNet's residuals for the same samples,
        scaled per sample and summed (``RESIDUAL`` keys) in place of the
        control images: one ControlNet forward per control, in the batch."""
        nets = [k for k in inputs if k.startswith(CONTROLNET)]
        if not nets:
            return inputs
        out = {k: v for k, v in inputs.items() if not k.startswith((CONTROLNET, SCALE))}
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for key in nets:
            kind = key[len(CONTROLNET) :].rsplit(":", 1)[0]
            d, m = self.family.controlnet(self.controlnets[kind], inputs, inputs[key])
            s = inputs[scale_key(key)].view(-1, 1, 1, 1)
            d = [r * s for r in d]
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m * s if mid is None else mid + m * s
        assert down is not None and mid is not None
        out |= {f"{RESIDUAL}{k}": r for k, r in enumerate(down)}
        out[MID_RESIDUAL] = mid
        return out

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
