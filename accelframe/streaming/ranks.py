"""Launching a stream on ranks without torchrun: this process is rank 0, its peers are copies of
the same command (what ``torchrun --nproc-per-node R`` does on one machine). Every rank runs the
same program, so each builds the same pipeline and joins the ring in ``pipe.stream(..., ranks=R)``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Sequence

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process is already a rank of a launch (torchrun's variables are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def spawn_peers(argv: Sequence[str], ranks: int, *, threads: int = 1) -> list[subprocess.Popen]:
    """Start ranks ``1 .. ranks - 1`` as ``python argv...`` and make this process rank 0 (its
    environment gains the launch variables). The peers' output goes to this process's stderr."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    common = {"WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": port, "OMP_NUM_THREADS": str(threads)}
    peers = []
    for r in range(1, ranks):
        env = {**os.environ, **common, "RANK": str(r), "LOCAL_RANK": str(r)}
        peers.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL,
                                      stderr=sys.stderr))
    os.environ.update({**common, "RANK": "0", "LOCAL_RANK": "0"})
    return peers


def reap(peers: Sequence[subprocess.Popen], timeout_s: float = 30.0) -> list[int | None]:
    """Wait for the peers (each at most ``timeout_s``; one still running then is killed); their
    exit statuses."""
    out = []
    for p in peers:
        try:
            out.append(p.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            out.append(None)
    for k in RANK_VARS:
        os.environ.pop(k, None)
    return out


__all__ = ["launched", "reap", "spawn_peers"]
