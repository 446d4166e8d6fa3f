"""Entry point for one rank of a 2-process CPU (gloo) training run; writes its parameter digest.

    python tests/support/ddp_worker.py PREPARED OUT   (under torchrun, which sets RANK etc.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moepipe.config import TrainConfig
from moepipe.train.loop import train


def main() -> None:
    prepared, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = TrainConfig(width=8, z_dim=16, batch_size=8, steps=4, device="cpu", precision="fp32", threads=1,
                      checkpoint_every=2, log_every=1, sample_every=100)
    result = train(cfg, 0, prepared, out, echo=lambda line: None)
    rank = os.environ["RANK"]
    (out / f"digest-rank{rank}.txt").write_text(result.digest)


if __name__ == "__main__":
    main()
