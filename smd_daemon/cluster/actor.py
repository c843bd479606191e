"""The Ray actor that hosts one engine worker (``ray_workers`` makes it remote).

Everything happens in ``__init__``, because that is what Ray runs again when
it restarts a worker whose process died: connect to the front end, load the
model, serve. A model that cannot be loaded is reported to the front end with
the loader's error, and the actor stays up without sessions (rather than
dying and being restarted into the same error forever).
"""

from __future__ import annotations

import logging
import os


class WorkerActor:
    def __init__(
        self,
        worker_id: str,
        front_address: str,
        keys: tuple,  # wire.Keys' four fields (bytes): what the worker needs to connect
        opts: dict,
        max_session_bytes: int,
        max_memory_bytes: int | None,
        log_level: str = "info",
    ):
        logging.basicConfig(
            level=log_level.upper(),
            format=f"%(asctime)s %(levelname)s [{worker_id}] %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import ray

        from smd_daemon.cluster.wire import Keys
        from smd_daemon.cluster.worker import EngineWorker

        self.worker = EngineWorker(
            worker_id,
            front_address,
            Keys(*keys),
            max_session_bytes,
            max_memory_bytes,
            node=ray.util.get_node_ip_address(),
            on_link_failure=lambda: os._exit(70),
        )
        self.worker.connect()
        try:
            if opts.get("threads"):
                import torch

                torch.set_num_threads(opts["threads"])
            from smd_daemon.options import load_engine

            engine, model = load_engine(opts)
        except Exception as e:  # ModelLoadError, out of memory, a missing file on this node...
            message = str(e).splitlines()[0] if str(e) else ""
            self.worker.failed(f"{type(e).__name__}: {message}"[:500])
            return
        self.worker.device = _device_label(model.get("device", ""), ray.get_gpu_ids())
        self.worker.serve(engine, model)

    def started(self) -> int:
        """Answers once ``__init__`` is done (Ray queues calls behind it)."""
        return os.getpid()


def _device_label(device: str, gpu_ids) -> str:
    if not str(device).startswith("cuda"):
        return str(device) or "cpu"
    import torch

    physical = f"cuda:{gpu_ids[0]}" if gpu_ids else str(device)
    return f"{physical} ({torch.cuda.get_device_name(0)})"
