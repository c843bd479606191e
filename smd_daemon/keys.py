"""``smd-daemon keys``: CURVE key pairs for a remote daemon and its artists.

    DIR/server.key            the daemon's public key: give it to every artist
    DIR/server.key_secret     the daemon's key pair: stays on the GPU machine
    DIR/clients/NAME.key_secret  one artist's key pair: give it to that artist only
    DIR/authorized/NAME.key   public keys the daemon accepts (delete one to revoke
                              an artist; restart the daemon to apply)

Files are in pyzmq's certificate format (``zmq.auth.load_certificate``);
secret files are readable by their owner only.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil

from smd_daemon.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def fingerprint(public_key: bytes) -> str:
    """A short name for a public key (its Z85 text, as in the key files): what the daemon logs."""
    return "SHA256:" + hashlib.sha256(public_key).hexdigest()[:16]


def _file_fingerprint(path: str) -> str:
    import zmq.auth

    return fingerprint(zmq.auth.load_certificate(path)[0])


def configure(parser) -> None:
    parser.add_argument("dir", help="folder for the keys (created if missing)")
    parser.add_argument(
        "--client",
        action="append",
        default=None,
        metavar="NAME",
        help="create a key pair for this artist (repeatable; default: one named 'artist')",
    )
    parser.add_argument("--force", action="store_true", help="replace existing client keys of the same name")


def _create(folder: str, name: str) -> tuple[str, str]:
    import zmq.auth

    old = os.umask(0o077)  # the secret file must never exist with wider permissions
    try:
        public, secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def run(args) -> int:
    names = args.client or ["artist"]
    for n in names:
        if not _NAME.match(n):
            raise UsageError(f"client name {n!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    root = args.dir
    clients = os.path.join(root, "clients")
    authorized = os.path.join(root, "authorized")
    for d in (root, clients, authorized):
        os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    os.chmod(clients, 0o700)
    for n in names:
        if os.path.exists(os.path.join(clients, n + ".key_secret")) and not args.force:
            raise UsageError(f"a key for client {n!r} already exists in {clients} (use --force to replace it)")

    server_secret = os.path.join(root, "server.key_secret")
    if os.path.exists(server_secret):
        print(f"keeping the existing server key {server_secret}")
    else:
        _create(root, "server")
        print(f"created the server key pair {server_secret}")
    for n in names:
        public, secret = _create(clients, n)
        shutil.copyfile(public, os.path.join(authorized, n + ".key"))
        print(
            f"created client key pair {secret} (allowed: {os.path.join(authorized, n + '.key')}, "
            f"fingerprint {_file_fingerprint(public)})"
        )

    server_public = os.path.join(root, "server.key")
    print()
    print("Start the daemon with:")
    print(f"  smd-daemon serve --bind tcp://0.0.0.0:7555 --keys {root}")
    print("Give each artist, over a channel you trust:")
    print(f"  1. the daemon's public key: {server_public} (not secret)")
    print(f"  2. their own key pair:      {os.path.join(clients, '<name>.key_secret')} (secret: for them only)")
    print("and enter both in the plugin's connection settings. To revoke an artist, delete")
    print(f"{os.path.join(authorized, '<name>.key')} and restart the daemon.")
    return 0
