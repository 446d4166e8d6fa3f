"""Data-parallel training with torchrun: 2 CPU processes on the gloo backend, over loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
WORKER = Path(__file__).resolve().parents[1] / "support" / "ddp_worker.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_end_with_identical_parameters(prepared16: Path, tmp_path: Path) -> None:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MOEPIPE_QUIET": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(WORKER), str(prepared16), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [(tmp_path / f"digest-rank{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1] and len(digests[0]) == 16
    assert (tmp_path / "generator.pt").is_file()  # written by rank 0 only
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002.pt", "step-00000004.pt"]
