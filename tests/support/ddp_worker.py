"""One rank of a 2-process CPU (gloo) training run, and the one-step probe the DDP test replays.

    python tests/support/ddp_worker.py PREPARED OUT   (under torchrun, which sets RANK etc.)

Each rank writes into OUT:

- ``rank{r}.json``: the rank and world size the process group reports, the rank torchrun gave
  it, the backend, and the parameter digest after the short training run;
- ``probe-rank{r}.pt``: step 0 of the loop's trainer on the probe config (``probe_step``): the
  real batch, labels and z this rank drew, the D and G gradients its optimizers applied (after
  the all-reduce; parameters without a gradient, such as D's attribute head, left out) and
  the parameters after the step;

then trains 4 steps with ``train`` (checkpoints and generator.pt, written by rank 0 only).
The test replays the probe in one process with ``probe_step(..., feed=...)``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moepipe.config import TrainConfig
from moepipe.data import PackedSet
from moepipe.train.distributed import World, init_world
from moepipe.train.loop import _Trainer, train
from moepipe.train.runtime import pick_runtime

SEED = 0

# The probe step is a sum of per-image terms, so the mean over a batch split in two halves is the
# mean of the halves' means: no augmentation (it draws per rank), no mode seeking (it pairs rows of
# one rank's batch), no minibatch std, no AC-GAN term (its cross-entropy averages over the rows
# labelled in a group, a count that differs between halves), no R1; BatchNorm runs on its running
# statistics (see probe_step). fp32 on one thread.
PROBE = TrainConfig(width=8, z_dim=16, batch_size=8, steps=1, device="cpu", precision="fp32", threads=1,
                    augment="", ada=False, mode_seeking=0.0, aux_weight=0.0, minibatch_std=False, r1_gamma=0.0)

# The short run whose final weights, checkpoints and generator file the test checks.
RUN = TrainConfig(width=8, z_dim=16, batch_size=8, steps=4, device="cpu", precision="fp32", threads=1,
                  checkpoint_every=2, log_every=1, sample_every=100)


def _flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).clone() for t in tensors])


def probe_step(prepared: Path, world: World, feed: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Step 0 of the training loop on PROBE; what it drew, the gradients it applied, the weights after.

    BatchNorm is switched to its running statistics (eval mode), because batch statistics over
    each rank's half differ from those over the whole batch. With `feed` (real, labels, z from the
    ranks' records, concatenated) the step uses those instead of drawing its own. Returns real
    (N, 3, R, R), labels (N, L), z (N, z_dim), grad_d / grad_g (flat, as the optimizers saw them:
    after `average_gradients`), params (flat G then D parameters after the step).
    """
    trainer = _Trainer(PROBE, SEED, PackedSet(prepared, "train"), pick_runtime(PROBE), world)
    trainer.G.eval()
    trainer.D.eval()
    record: dict[str, torch.Tensor] = {}
    draw_batch, make_fake = trainer._batch, trainer._fake

    def batch(rng: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        real, labels = (feed["real"], feed["labels"]) if feed else draw_batch(rng)
        record.update(real=real.detach().clone(), labels=labels.detach().clone())
        return real, labels

    def fake(n: int, labels: torch.Tensor | None, z: torch.Tensor | None = None) -> torch.Tensor:
        z = feed["z"] if feed else z
        record["z"] = z.detach().clone()
        return make_fake(z.shape[0], labels, z)

    trainer._batch, trainer._fake = batch, fake
    for name, optimizer in (("grad_d", trainer.opt_d), ("grad_g", trainer.opt_g)):
        def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any, name: str = name) -> None:
            record[name] = _flat(p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None)
        optimizer.register_step_pre_hook(before_step)
    trainer.step(0)
    record["params"] = _flat([*trainer.G.parameters(), *trainer.D.parameters()])
    return record


def main() -> None:
    prepared, out = Path(sys.argv[1]), Path(sys.argv[2])
    world = init_world("cpu")
    rank = world.rank
    report = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "torchrun_rank": int(os.environ["RANK"]),
              "backend": str(dist.get_backend())}
    torch.save(probe_step(prepared, world), out / f"probe-rank{rank}.pt")
    result = train(RUN, SEED, prepared, out, echo=lambda line: None)  # joins the same group, leaves it at the end
    (out / f"rank{rank}.json").write_text(json.dumps({**report, "digest": result.digest}))


if __name__ == "__main__":
    main()
