"""Data-parallel training with torchrun: 2 CPU processes on the gloo backend, over loopback.

Equal weights on both ranks alone would not show that they talked (two unconnected runs with the
same seed also agree), so one launch (tests/support/ddp_worker.py) records, per rank, the
process group's view and step 0 of the loop's trainer on a probe config whose loss is a mean of
per-image terms (no augmentation, mode seeking, minibatch std or AC-GAN term; BatchNorm on its
running statistics), and the tests prove:

- the group has 2 members, ranks 0 and 1, on gloo;
- each rank drew half of the global batch (4 of 8 rows) and the halves differ: the ranks train on
  different shards (each draws its rows and z from a seed of (seed, step, rank));
- the D and G gradients each rank's optimizer applied are the ones one process computes with the
  same code on the union of both halves (a mean, not a sum: Adam would hide a factor of 2 in the
  weights, not in the gradients), equal on both ranks, and the weights after the step match that
  single-process step;
- they are not the gradients of rank 0's half alone: rank 1's data reached rank 0;
- a 4-step `train` run with the cpu profile's settings (augmentation, mode seeking, AC-GAN term,
  BatchNorm on batch statistics; tiny widths) ends with identical parameters on both ranks and
  writes its checkpoints and generator file.

The one-step comparison fails if the ranks never talk (rank 0's gradient is its own half's),
if the all-reduce sums instead of averaging (relative difference 1.0), or if both processes
draw the same rows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moepipe.train.distributed import World
from tests.support.ddp_worker import PROBE, probe_step

pytestmark = pytest.mark.integration
WORKER = Path(__file__).resolve().parents[1] / "support" / "ddp_worker.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_out(prepared16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one `torchrun --nproc_per_node 2` launch of the worker."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MOEPIPE_QUIET": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(WORKER), str(prepared16), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_two_ranks_average_gradients_over_different_shards(ddp_out: Path, prepared16: Path) -> None:
    reports = [json.loads((ddp_out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["torchrun_rank"], r["backend"]) for r in reports] == [
        (0, 2, 0, "gloo"), (1, 2, 1, "gloo")]

    ranks = [torch.load(ddp_out / f"probe-rank{r}.pt") for r in (0, 1)]
    local = PROBE.batch_size // 2
    assert [r["real"].shape[0] for r in ranks] == [local, local] and [r["z"].shape[0] for r in ranks] == [local, local]
    assert not torch.equal(ranks[0]["real"], ranks[1]["real"])  # different rows of the training set
    assert not torch.equal(ranks[0]["z"], ranks[1]["z"])

    # The gradients come out of one all-reduce: the same on both ranks, and so are the weights.
    for key in ("grad_d", "grad_g", "params"):
        assert torch.allclose(ranks[0][key], ranks[1][key], rtol=0, atol=1e-7), key

    threads = torch.get_num_threads()
    try:
        union = probe_step(prepared16, World(), feed={k: torch.cat([r[k] for r in ranks]) for k in ("real", "labels", "z")})
        rank0_alone = probe_step(prepared16, World(), feed={k: ranks[0][k] for k in ("real", "labels", "z")})
    finally:
        torch.set_num_threads(threads)  # probe_step runs on one thread, as the ranks did

    for key in ("grad_d", "grad_g"):
        # float32 sums in another order (all-reduce of two half-batch means vs one mean)
        assert relative_difference(ranks[0][key], union[key]) < 1e-5, key
        assert relative_difference(rank0_alone[key], union[key]) > 0.05, key
    # One Adam step moves each weight by about lr: equal to the union step, far from rank 0's own.
    assert float((ranks[0]["params"] - union["params"]).abs().max()) < PROBE.lr_d / 100
    assert float((ranks[0]["params"] - rank0_alone["params"]).abs().max()) > PROBE.lr_d


def test_two_processes_end_with_identical_parameters(ddp_out: Path) -> None:
    digests = [json.loads((ddp_out / f"rank{r}.json").read_text())["digest"] for r in (0, 1)]
    assert digests[0] == digests[1] and len(digests[0]) == 16
    assert (ddp_out / "generator.pt").is_file()  # written by rank 0 only
    assert sorted(p.name for p in (ddp_out / "checkpoints").iterdir()) == ["step-00000002.pt", "step-00000004.pt"]
