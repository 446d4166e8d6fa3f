"""Where training metrics and sample grids go. The loop talks to this interface only.

FileSink writes what `dvc plots` reads (metrics.csv, throughput.csv, sample PNGs); the registry
step provides an MLflow implementation of the same two methods.

metrics.csv holds what the seed and the data decide, so two runs of the same params write the
same bytes (a DVC output of the train stage). Throughput (img_s, images per wall-clock second)
depends on the machine and its load: it goes to throughput.csv, which no stage declares.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Protocol

from PIL import Image

from moepipe.images import atomic_write, encode_png

# aux_d / aux_g: the AC-GAN attribute losses (D reading real images, G's fakes as asked).
COLUMNS = ["step", "kimg", "loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "augment_p",
           "real_sign", "r1", "aux_d", "aux_g"]
TIMING_COLUMNS = ["step", "img_s"]
FILES = {"metrics.csv": COLUMNS, "throughput.csv": TIMING_COLUMNS}


class MetricsSink(Protocol):
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_image(self, step: int, image: Image.Image) -> None: ...


class FileSink:
    """reports/metrics.csv and throughput.csv (one row per logged step each) and
    reports/samples/step-*.png + latest.png.

    On resume from step k, rows after k are dropped first, so the curves have no doubled steps.
    """

    def __init__(self, folder: Path, resumed_step: int = 0) -> None:
        self.folder = folder
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        self.csv = folder / "metrics.csv"
        for name, columns in FILES.items():
            path, rows = folder / name, []
            if path.exists() and resumed_step > 0:
                with path.open(newline="") as handle:
                    rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resumed_step]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write(path, buffer.getvalue().encode())
        if resumed_step == 0:
            for old in (folder / "samples").glob("step-*.png"):
                old.unlink()

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in metrics.items()}}
        for name, columns in FILES.items():
            with (self.folder / name).open("a", newline="") as handle:
                csv.DictWriter(handle, columns, extrasaction="ignore", lineterminator="\n").writerow(row)

    def log_image(self, step: int, image: Image.Image) -> None:
        data = encode_png(image)
        atomic_write(self.folder / "samples" / f"step-{step:08d}.png", data)
        atomic_write(self.folder / "samples" / "latest.png", data)
