"""``smd-daemon serve --ray``: join (or start) Ray, start the workers, wait until they can draw.

Everything that can be wrong with the cluster is found here, before the
daemon serves anyone, and ends as one line with exit status 2: a bad
``--ray`` address, Ray missing or unreachable, too few GPUs for
``--workers``, or no worker that loaded the model (each worker's own error
is logged, and a worker that failed gets no sessions).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time

from smd_daemon.cluster.frontend import ClusterServer
from smd_daemon.cluster.private_ray import PrivateRay
from smd_daemon.cluster.ray_workers import RayCluster, parse_target
from smd_daemon.cluster.recovery import NodeRecovery
from smd_daemon.errors import UsageError
from smd_daemon.options import MODEL_OPTIONS, SPEED_OPTIONS, check_kind
from smd_daemon.server.limits import GIB

log = logging.getLogger("smd_daemon.cluster")

HELLO_WITHIN_S = 120.0  # a worker that has not said hello by then was not placed (or cannot start)
REACH_WITHIN_S = 15.0  # a worker Ray started that has not said hello by then cannot reach the front end
MAX_STARTS = 3  # processes of one worker that may die while loading before it counts as failed


def check_options(opts: dict) -> None:
    """What can be checked before anything starts (no Ray call yet)."""
    parse_target(opts["ray"])
    check_kind(opts.get("model_kind"))  # the speed switches are checked on the workers, which have the GPUs
    if opts["workers"] is not None and opts["workers"] < 1:
        raise UsageError("workers must be >= 1")
    device = opts.get("device") or ""
    if device.startswith("cuda:"):
        raise UsageError(
            f"--device {device} cannot be used with --ray: Ray gives each worker its own GPU "
            f"(use --device cuda, or leave it out)"
        )


def make_server(opts: dict, limits) -> ClusterServer:
    # Either says how to install Ray when it is missing.
    cluster = PrivateRay() if opts["ray"].strip() == "local" else RayCluster(opts["ray"])
    server = ClusterServer(opts["bind"], limits, opts["keys"], per_worker=limits.max_sessions)
    server.cluster = cluster
    return server


def start(server: ClusterServer, opts: dict) -> None:
    """Start the workers and wait for them; ``UsageError`` when none can draw."""
    cluster = server.cluster
    device = opts.get("device") or ""
    want_gpu = device == "" or device.startswith("cuda")
    threads = opts.get("threads") or 1
    if cluster.kind == "local":
        gpus_here = _local_gpus() if want_gpu else 0
        n = opts["workers"] or max(1, gpus_here)
        _connect(cluster, num_cpus=n if gpus_here else n * threads, gpus=gpus_here > 0)
    else:
        _connect(cluster, num_cpus=0, gpus=True)
    resources = cluster.resources()
    gpus = int(resources.get("GPU", 0)) if want_gpu else 0
    if device.startswith("cuda") and not gpus:
        raise UsageError("--device cuda: the Ray cluster has no GPU")
    if gpus:
        n = opts["workers"] or gpus
        if n > gpus:
            raise UsageError(f"--workers {n} needs {n} GPUs; the Ray cluster has {gpus}")
        each = {"num_gpus": 1, "num_cpus": 1}
    else:
        n = opts["workers"] or 1
        cpus = resources.get("CPU", 0)
        if n * threads > cpus:
            raise UsageError(
                f"--workers {n} needs {n * threads} CPUs ({threads} each, see --threads); the Ray cluster has {cpus:g}"
            )
        each = {"num_cpus": threads}
    worker_opts = {k: opts.get(k) for k in (*MODEL_OPTIONS, *SPEED_OPTIONS, "overlap_decode")}
    worker_opts["threads"] = opts.get("threads")
    if gpus:
        worker_opts["device"] = "cuda"
    address = server.open_worker_socket(cluster.worker_endpoint())
    max_memory = int(opts["max_memory"] * GIB) if opts.get("max_memory") else None
    log.info(
        "starting %d engine worker(s), each with %s; they connect to %s",
        n,
        ", ".join(f"{v} {k[4:].upper()}" for k, v in each.items()),
        address,
    )
    for i in range(n):
        wid = f"w{i}"
        server.dispatcher.add_worker(wid)
        cluster.start(
            wid,
            each,
            address,
            dataclasses.astuple(server.worker_keys()),
            worker_opts,
            server.limits.max_session_bytes,
            max_memory,
            (opts.get("log_level") or logging.getLevelName(logging.getLogger().level)).lower(),
        )
    _wait(server, address)
    ready = [w for w in server.dispatcher.workers.values() if w.state == "ready"]
    server.model_info = dict(ready[0].model)
    server.limits.max_sessions = server.per_worker * n
    if cluster.kind == "local":
        server.recovery = NodeRecovery(server, cluster)
        cluster.prepare_standby()  # now that the workers' model load no longer competes with it


def _connect(cluster: RayCluster, num_cpus: int, gpus: bool) -> None:
    """``ray.init`` replaces the SIGTERM handler: put the daemon's back, and
    treat a SIGTERM that Ray's handler caught as the daemon's own."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        cluster.connect(num_cpus, gpus)
    except SystemExit:
        if callable(handlers[signal.SIGTERM]):
            handlers[signal.SIGTERM](signal.SIGTERM, None)
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _wait(server: ClusterServer, address: str) -> None:
    d, cluster = server.dispatcher, server.cluster
    hello_by = time.monotonic() + HELLO_WITHIN_S
    while True:
        if d.sock.poll(200):
            d.on_readable()
        for wid, error in cluster.failures().items():
            d.worker_failed(wid, error)
        now = time.monotonic()
        d.tick(now)
        workers = list(d.workers.values())
        for w in workers:
            if w.state == "starting" and now - cluster.started.get(w.id, now) > REACH_WITHIN_S:
                d.worker_failed(
                    w.id,
                    f"it started on its node but cannot reach the front end at {address} "
                    f"(is that port open between the nodes?)",
                )
        for w in workers:
            if w.starts > MAX_STARTS and w.state != "ready":
                d.worker_failed(w.id, f"its process died {w.starts - 1} times while loading the model")
        if all(w.state in ("ready", "failed") for w in workers):
            break
        if now > hello_by and not any(w.state == "loading" for w in workers):
            for w in workers:
                if w.state not in ("ready", "failed"):
                    log.warning(
                        "worker %s has not started within %g s (%s): continuing without it; it joins "
                        "when it says hello",
                        w.id,
                        HELLO_WITHIN_S,
                        "Ray could not place it" if w.state == "starting" else w.state,
                    )
            break
    if not any(w.state == "ready" for w in workers):
        why: dict[str, list[str]] = {}
        for w in workers:
            why.setdefault(w.error or "did not start", []).append(w.id)
        raise UsageError(
            "no engine worker could start: " + "; ".join(f"{', '.join(ids)}: {error}" for error, ids in why.items())
        )
