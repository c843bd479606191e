"""``smd-daemon serve --ray``: one daemon address, its engine spread over the GPUs of a Ray cluster.

- ``frontend`` — the artists' side: the daemon's own server (same protocol,
  keys, sessions) whose engine loop is a dispatcher to the workers;
- ``worker`` — an engine worker: the daemon's own engine loop and scheduler,
  fed by the front end;
- ``wire`` — what crosses between them (the server's typed messages over
  ZeroMQ, CURVE-encrypted with keys made for the run);
- ``ray_workers``, ``actor`` — Ray: joining or starting it, one actor per GPU,
  restarts, stopping; ``launch`` — ``serve --ray``'s start-up checks.

Ray is imported only by ``ray_workers`` and ``actor`` (``pip install -e ".[cluster]"``).
"""
