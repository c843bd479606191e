"""Which vendored pyzmq folder this Krita's Python loads: ``deps/<platform>-<python>``.

The release zip carries pyzmq for several platforms and Pythons side by side (``deps/win_amd64-cp310``,
``deps/macosx_universal2-abi3``, ...); install.py puts the one for the Krita it installs into. The folder
that matches the running interpreter goes first on ``sys.path``, so that it wins over any pyzmq installed
elsewhere (a system ``python3-zmq`` of another version). Standard library only, Python 3.8+.
"""

from __future__ import annotations

import os
import platform
import sys

ABI3_FROM = (3, 12)  # pyzmq's abi3 wheels serve every CPython from 3.12 on


def platform_tag(sys_platform: str, machine: str, is_64bit: bool = True) -> str:
    """The platform part of a folder name: ``win_amd64``, ``macosx_universal2``, ``linux_x86_64``, ..."""
    machine = machine.lower()
    if sys_platform == "win32":
        if not is_64bit:
            return "win32"
        return "win_amd64" if machine in ("amd64", "x86_64") else f"win_{machine}"
    if sys_platform == "darwin":
        return "macosx_universal2"  # one universal2 build serves Intel and Apple silicon
    if sys_platform.startswith("linux"):
        return "linux_aarch64" if machine == "arm64" else f"linux_{machine}"
    return f"{sys_platform}_{machine}"


def python_tag(version: tuple) -> str:
    """``cp38`` ... ``cp311``; ``abi3`` for 3.12 and later."""
    major, minor = version[0], version[1]
    return "abi3" if (major, minor) >= ABI3_FROM else f"cp{major}{minor}"


def folder_name(version: tuple, sys_platform: str, machine: str, is_64bit: bool = True) -> str:
    return f"{platform_tag(sys_platform, machine, is_64bit)}-{python_tag(version)}"


def this_folder_name() -> str:
    """The folder name for the interpreter running this code."""
    return folder_name(sys.version_info, sys.platform, platform.machine(), sys.maxsize > 2**32)


def put_first(deps: str, name: str | None = None, path: list | None = None) -> str | None:
    """Put ``deps/<name>`` (default: this interpreter's) at the front of ``path`` (default: sys.path).
    Returns the folder, or None when the plugin carries none for this interpreter."""
    path = sys.path if path is None else path
    folder = os.path.join(deps, name or this_folder_name())
    if not os.path.isdir(folder):
        return None
    while folder in path:
        path.remove(folder)
    path.insert(0, folder)
    return folder


def carried(deps: str) -> list:
    """The folders the plugin carries, sorted."""
    try:
        return sorted(n for n in os.listdir(deps) if os.path.isdir(os.path.join(deps, n)))
    except OSError:
        return []


def missing(deps: str, error: Exception) -> str:
    """One line for the message docker: which Python and platform have no pyzmq, and the fix."""
    version = "%d.%d" % sys.version_info[:2]
    name = this_folder_name()
    system = platform.system() or sys.platform
    found = os.path.isdir(os.path.join(deps, name))
    what = "cannot load its pyzmq" if found else "carries no pyzmq"
    return (
        f"SMD Live {what} for Python {version} on {system} {platform.machine()} (deps/{name}; {error}). "
        f"Fix: from the SMD Live source folder run 'python3 install.py --krita-python {version}', "
        f"then restart Krita."
    )
