"""``smd-daemon`` command line: one subcommand per module.

Each command module exposes ``configure(parser)`` and ``run(args) -> int``.
Errors the user can fix end as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from smd_daemon import __version__
from smd_daemon.errors import UsageError

# name -> (module, one-line help)
COMMANDS = {
    "serve": ("smd_daemon.server.command", "load a model and serve Krita clients over ZeroMQ"),
    "render": ("smd_daemon.render", "render a layered scene (.ora or .json) to a PNG without Krita"),
    "keys": ("smd_daemon.keys", "create CURVE key pairs for a remote daemon and its artists"),
    "check": ("smd_daemon.check", "connect to a daemon as the plugin would, report it, optionally render a test"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported: ``render`` never pays for
    the server's imports and vice versa."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    parser = _Parser(prog="smd-daemon", description="StreamMultiDiffusion daemon for Krita")
    parser.add_argument("--version", action="version", version=f"smd-daemon {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers prints notes about optional packages (torchvision) at
    # import; they are noise to a user and break one-line error output.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from smd_daemon.engine.models import ModelLoadError
    from smd_daemon.engine.scene import SceneError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (UsageError, SceneError, ModelLoadError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"smd-daemon {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smd-daemon {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
