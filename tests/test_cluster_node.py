"""A private Ray instance (``serve --ray local``) whose own processes die, one after another.

One real daemon, one artist streaming. The instance's helpers exit: nothing
stops. Then each process the workers need is killed in turn (the dashboard
agent, the runtime-env agent, the raylet, the GCS): the daemon starts the
instance again and the artist's frames resume (after one ``engine_error``
saying no worker is available). Last, a restart that cannot succeed (the
model folder is gone): the daemon exits non-zero with one line. The time
from each kill to the next frame is printed; docs/benchmarks.md has the
figures (``benchmarks/bench_cluster_recovery.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import time

from cluster_util import (
    HELPERS,
    NEEDED,
    ClusterDaemon,
    alive,
    frame_after_an_error,
    next_frame,
    node_processes,
    ray_missing,
    streaming_artist,
    wait_for,
)


@ray_missing
def test_dead_node_processes_restart_the_private_instance_and_streaming_resumes(tmp_path):
    from smd_daemon.engine.tiny import build_tiny_pipeline

    model = tmp_path / "tiny-sd"
    build_tiny_pipeline(0).save_pretrained(model)
    d = ClusterDaemon("--workers", "1", "--max-fps", "10", "--model", str(model), "--tiny-vae", "none")
    client = None
    try:
        client = streaming_artist(d)
        errors: list = []
        assert next_frame(client, 60, errors) is not None and errors == [], d.text()

        node = node_processes(d.proc.pid)
        assert set(node) >= {"host", *HELPERS, *NEEDED}, node
        for what in HELPERS:
            os.kill(node[what], signal.SIGKILL)
        for _ in range(20):  # two seconds of frames, none missing
            assert next_frame(client, 5, errors) is not None, d.text()
        assert errors == [] and d.text().count("the workers do not need it") == len(HELPERS), d.text()
        assert "starting it again" not in d.text()

        for n, what in enumerate(NEEDED, 1):  # a standby instance takes over, ready or still starting
            pid = node_processes(d.proc.pid)[what]
            os.kill(pid, signal.SIGKILL)
            seconds, errors = frame_after_an_error(client, 120)
            print(f"{what} killed: frames again after {seconds} s")
            assert seconds is not None, f"no frame after the {what} was killed:\n{d.text()}"
            assert [e.code for e in errors] == ["engine_error"] and "no engine worker" in errors[0].message
            wait_for(d, "the private Ray instance runs again", n, 10)  # its upkeep may follow the frame
            assert d.proc.poll() is None

        # A restart that cannot succeed: the daemon says why in one line and exits non-zero.
        shutil.rmtree(model)
        family = d.family()
        os.kill(node_processes(d.proc.pid)["raylet"], signal.SIGKILL)
        assert d.proc.wait(150) == 1, d.text()
        last = d.text().strip().splitlines()[-1]
        assert last.startswith("smd-daemon serve: error: the private Ray instance died and could not be started again")
        assert "no engine worker could start again (w0: ModelLoadError" in last, last
        time.sleep(0.5)
        assert alive(family) == [], "Ray processes were left behind"
        assert [n for n in os.listdir(d.tmp) if n.startswith("smd-")] == [], "Ray's or the socket's folder was left"
    finally:
        if client is not None:
            client.close()
        d.close()
