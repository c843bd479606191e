"""``smd-daemon serve``: load a model and serve Krita clients over ZeroMQ.

SIGTERM and SIGINT stop it in any state with exit status 0 within a few
seconds: before the model is loaded the load is abandoned; while serving,
every client is told ``bye``, the engine stops between two passes, and the
sockets close. Should some operation still not return in time (a driver
call that cannot be interrupted), the logs are flushed and the process
exits anyway, rather than being killed half way.
"""

from __future__ import annotations

import _thread
import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

from smd_daemon import protocol
from smd_daemon.config import load_config
from smd_daemon.errors import UsageError
from smd_daemon.options import MODEL_OPTIONS, SPEED_OPTIONS, add_options, engine_options, load_engine
from smd_daemon.server.limits import GIB, MIB, Limits, machine_memory
from smd_daemon.server.router import DEFAULT_BIND, Server

log = logging.getLogger("smd_daemon.server")

STOP_WITHIN_S = 4.0  # from the signal to the process's end, whatever is running

OPTIONS = {
    **MODEL_OPTIONS,
    "bind": (
        str,
        DEFAULT_BIND,
        "address to listen on: HOST[:PORT], tcp://HOST[:PORT], [IPv6]:PORT or ipc://PATH "
        "(port 7555 when none is given; * for every interface)",
    ),
    "keys": (str, None, "folder from 'smd-daemon keys': enables CURVE encryption and client keys"),
    "insecure": (bool, False, "allow a non-loopback bind without encryption (anyone on the network can use it)"),
    "max_sessions": (int, Limits.max_sessions, "most sessions served at once"),
    "max_sessions_per_origin": (
        int,
        None,
        "most sessions one client key holds at once (without --keys: one local user on ipc://, one host on TCP; "
        "docs/daemon.md); default: half of the sessions served",
    ),
    "max_clients_per_origin": (
        int,
        Limits.max_clients_per_origin,
        f"most connections one client key (local user, host) may have open, of {Limits.max_clients} in all",
    ),
    "max_fps": (float, Limits.max_fps, "most live frames per second per session"),
    "heartbeat_timeout": (float, Limits.heartbeat_timeout, "seconds without a message before a session is freed"),
    "max_message_mb": (float, Limits.max_message_bytes / MIB, "largest message part accepted, in MiB"),
    "max_memory": (
        float,
        None,
        "GiB all sessions together may keep (planes, plans, latents, frames); default: half of this machine's memory",
    ),
    "threads": (int, None, "CPU threads for torch (default: torch's choice)"),
    **SPEED_OPTIONS,
    "overlap_decode": (
        bool,
        False,
        "CUDA only: decode frames and copy them to the host on a side stream while the next step begins",
    ),
    "ray": (
        str,
        None,
        "run the engine on Ray workers: local (a private Ray instance on this machine), auto "
        "(the cluster this machine is part of), HOST:PORT (a Ray head) or ray://HOST:PORT "
        "(Ray Client); see docs/cluster.md",
    ),
    "workers": (int, None, "engine workers with --ray (default: one per GPU; 1 on a CPU-only cluster)"),
    "watch_stdin": (
        bool,
        False,
        "shut down when standard input closes: the program that started the daemon with a pipe there "
        "(Krita's docker) has ended, however it ended",
    ),
}


class _Stop(BaseException):
    """A signal arrived before serving began: abandon the model load."""


def configure(parser: argparse.ArgumentParser) -> None:
    add_options(parser, OPTIONS, defaults=False)
    parser.add_argument("--config", help="TOML file with the same settings (command-line flags win)")
    # Also accepted after the subcommand; SUPPRESS keeps the global default otherwise.
    parser.add_argument("--log-level", dest="serve_log_level", choices=["debug", "info", "warning", "error"])


def resolve_options(args) -> dict:
    """Flags, then the config file, then defaults."""
    config = load_config(args.config, {**OPTIONS, "log_level": (str, None, "")}) if args.config else {}
    out = {}
    for name, (_, default, _) in OPTIONS.items():
        value = getattr(args, name, None)
        out[name] = value if value is not None else config.get(name, default)
    out["log_level"] = getattr(args, "serve_log_level", None) or config.get("log_level")
    return out


def make_limits(opts: dict) -> Limits:
    limits = Limits(
        max_sessions=opts["max_sessions"],
        max_sessions_per_origin=opts["max_sessions_per_origin"] or 0,
        max_clients_per_origin=opts["max_clients_per_origin"],
        max_fps=opts["max_fps"],
        heartbeat_timeout=opts["heartbeat_timeout"],
        max_message_bytes=int(opts["max_message_mb"] * MIB),
    )
    if (
        limits.max_sessions < 1
        or opts["max_sessions_per_origin"] is not None
        and limits.max_sessions_per_origin < 1
        or not 1 <= limits.max_clients_per_origin <= limits.max_clients
        or not 0 < limits.max_fps <= 1000
        or not 0.5 <= limits.heartbeat_timeout <= 3600
        or not 2**16 <= limits.max_message_bytes <= 2**32
    ):
        raise UsageError(
            f"max-sessions and max-sessions-per-origin must be >= 1, "
            f"max-clients-per-origin between 1 and {limits.max_clients}, max-fps in (0, 1000], "
            f"heartbeat-timeout in [0.5, 3600] s, max-message-mb in [0.0625, 4096]"
        )
    if opts["max_memory"] is not None:
        total = machine_memory()
        if not 0.0625 <= opts["max_memory"] <= max(1.0, 4 * total / GIB):
            raise UsageError(f"max-memory must be between 0.0625 GiB and {max(1.0, 4 * total / GIB):.0f} GiB")
        limits.max_memory_bytes = int(opts["max_memory"] * GIB)
        limits.max_session_bytes = min(limits.max_session_bytes, limits.max_memory_bytes)
    return limits


def check_bind(opts: dict) -> None:
    """Turns opts["bind"] into an endpoint (as people write addresses) and checks who could reach it."""
    try:
        bind = opts["bind"] = protocol.normalize_address(opts["bind"])
    except ValueError as e:
        raise UsageError(f"--bind: {e}") from None
    if not protocol.is_local_address(bind):
        if opts["keys"] is None and not opts["insecure"]:
            raise UsageError(
                f"{bind} is reachable from the network: give --keys DIR (made by 'smd-daemon keys DIR') "
                f"to require encryption and client keys, or --insecure to serve anyone unencrypted"
            )
        if opts["keys"] is None:
            log.warning(
                "serving %s WITHOUT encryption or authentication (--insecure): anyone who can reach it "
                "can use this GPU and see the frames",
                bind,
            )
    if opts["keys"] is not None and not os.path.isdir(opts["keys"]):
        raise UsageError(f"keys folder {opts['keys']} does not exist: create it with 'smd-daemon keys {opts['keys']}'")


def run(args) -> int:  # noqa: C901 - one linear story, start to stop
    opts = resolve_options(args)
    if opts.get("log_level"):
        logging.getLogger().setLevel(opts["log_level"].upper())
    limits = make_limits(opts)
    if opts["threads"] is not None and opts["threads"] < 1:
        raise UsageError("threads must be >= 1")
    check_bind(opts)
    cluster_server = None
    if opts["ray"]:
        from smd_daemon.cluster import launch

        launch.check_options(opts)
        server = cluster_server = launch.make_server(opts, limits)
    elif opts["workers"] is not None:
        raise UsageError("--workers needs --ray")
    else:
        engine_options(opts, overlap_decode=opts["overlap_decode"])  # refused before the socket or the model
        server = Server(None, {}, opts["bind"], limits, opts["keys"])
    stop_at: list[float] = []
    serving = threading.Event()

    def stop(signum, _frame):
        if stop_at:
            return  # already stopping
        stop_at.append(time.monotonic())
        log.info("%s received: shutting down", signal.Signals(signum).name)
        server.stopping.set()
        if not serving.is_set():
            raise _Stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if opts["watch_stdin"]:
        watch_stdin()
    try:
        server.open_socket()
        if cluster_server is not None:
            launch.start(cluster_server, opts)
        else:
            if opts["threads"]:
                import torch

                torch.set_num_threads(opts["threads"])
            log.info("loading model %s ...", opts["model"])
            t0 = time.perf_counter()
            server.engine, server.model_info = load_engine(opts)
            info = server.model_info
            log.info(
                "model %s loaded in %.1f s on %s (%s)",
                info.get("name"),
                time.perf_counter() - t0,
                info.get("device"),
                info.get("dtype"),
            )
        server.start()
        serving.set()
        if not server.stopping.is_set():
            log.info(
                "serving on %s (protocol %d, up to %d sessions, %.1f GiB for sessions)",
                opts["bind"],
                protocol.PROTOCOL_VERSION,
                limits.max_sessions,
                limits.max_memory_bytes / GIB,
            )
            server.serve_forever()
    except _Stop:
        log.info("stopped before serving")
    finally:
        serving.set()  # a signal now only asks again
        stopped = server.shutdown(engine_timeout=_time_left(stop_at, 2.5))
    _exit_in_time(stop_at, stopped, server.fatal)
    log.info("stopped")
    _exit(server.fatal)


def watch_stdin(fd: int = 0) -> threading.Thread:
    """Stop as SIGTERM does once ``fd`` reaches end of file. The parent holds the pipe's other end,
    and the system closes it whenever the parent ends, a crash or SIGKILL included, on every
    platform. Should the clean stop not end the process in time, it ends anyway."""

    def watch():
        try:
            while os.read(fd, 65536):
                pass
            why = "standard input closed"
        except OSError as e:
            why = f"standard input unreadable ({e.strerror})"
        log.info("%s (the program that started the daemon asks it to stop, or has ended): shutting down", why)
        _thread.interrupt_main(signal.SIGTERM)
        time.sleep(STOP_WITHIN_S + 2.0)
        log.warning("still running %.0f s after standard input closed: exiting now", STOP_WITHIN_S + 2.0)
        _exit()

    thread = threading.Thread(target=watch, name="stdin-watch", daemon=True)
    thread.start()
    return thread


def _time_left(stop_at: list, share: float) -> float:
    if not stop_at:
        return 30.0
    return max(0.1, stop_at[0] + share - time.monotonic())


def _exit_in_time(stop_at: list, engine_stopped: bool, fatal: str = "") -> None:
    """Exit now if some thread would keep the process alive past the deadline."""
    deadline = (stop_at[0] if stop_at else time.monotonic()) + STOP_WITHIN_S
    while True:
        busy = [
            t
            for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and (not t.daemon or t.name == "engine-loop")
        ]
        if not busy and engine_stopped:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
        engine_stopped = engine_stopped or not any(t.name == "engine-loop" for t in busy)
    log.warning(
        "stopping without waiting for %s: still busy after %.0f s", ", ".join(t.name for t in busy), STOP_WITHIN_S
    )
    log.info("stopped")
    _exit(fatal)


def _exit(fatal: str = "") -> NoReturn:
    """End the process, sockets closed and logs flushed. Not through the
    interpreter's own teardown: freeing the model and torch's thread pools
    there takes seconds (and has aborted when a thread was still running).
    ``fatal``: why serving failed, the last line, and a non-zero status for
    whoever supervises the daemon (and restarts it)."""
    logging.shutdown()
    sys.stdout.flush()
    if fatal:
        print(f"smd-daemon serve: error: {fatal}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1 if fatal else 0)
