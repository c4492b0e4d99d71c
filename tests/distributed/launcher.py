"""Launch a scenario of ``worker.py`` (or a ``python -m`` module) on N local processes.

The processes get torchrun's environment variables (loopback only) and one thread each.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario: str, world_size: int, out_dir: Path, *args: str, timeout: float = 120):
    """Run ``worker.py scenario out_dir *args`` on ``world_size`` ranks; return exit codes
    and combined output per rank. Results are whatever the workers save in ``out_dir``."""
    command = [sys.executable, str(WORKER), scenario, str(out_dir), *args]
    return launch_command(command, world_size, timeout=timeout, what=f"scenario {scenario!r}")


def launch_module(module: str, world_size: int, *args: str, timeout: float = 120):
    """Run ``python -m module *args`` on ``world_size`` ranks, like ``torchrun -m``;
    return exit codes and combined output per rank."""
    command = [sys.executable, "-m", module, *args]
    return launch_command(command, world_size, timeout=timeout, what=f"module {module!r}")


def launch_command(command: list[str], world_size: int, *, timeout: float, what: str):
    """Run ``command`` once per rank with torchrun's environment variables."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        procs.append(
            subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    results = []
    for p in procs:
        try:
            output, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{what} hung past {timeout} s") from None
        results.append((p.returncode, output))
    return results
