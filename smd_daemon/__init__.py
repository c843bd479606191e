"""StreamMultiDiffusion daemon: engine, ZeroMQ server and CLI.

Importing this package is cheap: torch and diffusers are only imported by
``smd_daemon.engine`` and the commands that need it.
"""

__version__ = "0.1.0"
