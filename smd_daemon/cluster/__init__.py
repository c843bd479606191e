"""``smd-daemon serve --ray``: one daemon address, its engine spread over the GPUs of a Ray cluster.

- ``frontend`` — the artists' side: the daemon's own server (same protocol,
  keys, sessions) whose engine loop is a dispatcher to the workers;
  ``worker_socket`` — the socket they connect to, which admits this run's
  workers alone;
- ``worker`` — an engine worker: the daemon's own engine loop and scheduler,
  fed by the front end;
- ``wire``, ``codec`` — what crosses between them (the server's typed
  messages as JSON and raw array frames, never pickle, over ZeroMQ with CURVE
  and keys made for the run);
- ``ray_workers``, ``actor`` — Ray: joining a cluster, one actor per GPU,
  restarts, stopping; ``private_ray``, ``ray_host`` — ``--ray local``: a
  private instance run by a process of its own, and a standby one;
  ``recovery`` — replacing a private instance whose own process died;
  ``launch`` — ``serve --ray``'s start-up checks.

Ray is imported only by ``ray_workers`` and ``actor``, in the daemon's process
for a cluster it joins and in ``ray_host`` for a private one
(``pip install -e ".[cluster]"``).
"""
