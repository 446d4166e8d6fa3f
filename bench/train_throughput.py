"""Training throughput: moepipe's DCGAN step vs the pytorch/examples DCGAN loop, images/s.

    python bench/train_throughput.py [--steps 24] [--warmup 3] [--threads N] [--workers]

Both train the same 64 px, width-64, nz-100, batch-64 unconditional DCGAN on the same 512
synthetic avatars. "classic" is the example as written: PNG decode + PIL/numpy transforms per
step through a DataLoader, float32 NCHW, unfused Adam, Sigmoid + BCELoss, D step then G step.
"moepipe" is `_Trainer.step` on packed uint8 arrays with augmentation off (same math) in fp32
and with precision "auto" (bf16 autocast where the CPU computes bf16 in hardware, as the cpu
profile trains), plus a line with its DiffAugment policy at p=1 (the most ADA can turn on; it
starts at p=0, free).

The machine is shared and noisy, so variants take turns step by step (one epoch of 8 steps
each per round) and each is credited the sum of its own steps; ratios come from this one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moepipe.config import TrainConfig
from moepipe.data import PackedSet
from moepipe.models.dcgan import DCGANDiscriminator, DCGANGenerator
from moepipe.scrape.sources.synthetic import render_avatar, sample_spec
from moepipe.train.distributed import World
from moepipe.train.loop import _Trainer
from moepipe.train.runtime import pick_runtime

SIZE, WIDTH, NZ, BATCH, N_IMAGES = 64, 64, 100, 64, 512


# -- shared data -----------------------------------------------------------------------------
def make_images(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        image = render_avatar(sample_spec(rng), SIZE, rng)
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.LANCZOS)
        images.append(np.asarray(image.convert("RGB")))
    return np.stack(images)


def write_pngs(images: np.ndarray, folder: Path) -> None:
    (folder / "avatar").mkdir(parents=True)  # ImageFolder layout: one class sub-folder
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / "avatar" / f"{i:05d}.png")


def write_prepared(images: np.ndarray, folder: Path) -> None:
    """What moepipe/preprocess/stage.py writes, minus the index and stats training does not read."""
    folder.mkdir(parents=True)
    np.save(folder / "train_images.npy", images)
    np.save(folder / "train_labels.npy", np.zeros((len(images), 0), np.uint8))
    np.save(folder / "val_images.npy", images[:0])
    np.save(folder / "val_labels.npy", np.zeros((0, 0), np.uint8))
    meta = {"resolution": SIZE, "vocabulary": [], "groups": {}, "counts": {"train": len(images), "val": 0},
            "labelled": False, "format": "npy uint8 NHWC"}
    (folder / "meta.json").write_text(json.dumps(meta))


# -- classic: the pytorch/examples dcgan loop, without torchvision --------------------------------
class PngFolder(Dataset):
    """dset.ImageFolder + Resize(64), CenterCrop(64), ToTensor(), Normalize(0.5, 0.5) by hand."""

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.glob("*/*.png"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[index]) as handle:
            image = handle.convert("RGB")
        w, h = image.size  # Resize(int): shorter side to SIZE, bilinear as torchvision does
        if min(w, h) != SIZE:
            image = image.resize((SIZE * w // min(w, h), SIZE * h // min(w, h)), Image.BILINEAR)
        left, top = (image.size[0] - SIZE) // 2, (image.size[1] - SIZE) // 2
        image = image.crop((left, top, left + SIZE, top + SIZE))
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (tensor - 0.5) / 0.5, 0


def classic_runner(root: Path, workers: int) -> Callable[[int], None]:
    torch.manual_seed(0)
    # moepipe's DCGAN is the example's nn.Sequential layer for layer; the example's D ends in Sigmoid.
    net_g = DCGANGenerator(resolution=SIZE, width=WIDTH, z_dim=NZ, label_dim=0, block="transposed").main
    net_d = nn.Sequential(*DCGANDiscriminator(resolution=SIZE, width=WIDTH, label_dim=0).main, nn.Sigmoid())
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = DataLoader(PngFolder(root), batch_size=BATCH, shuffle=True, num_workers=workers)

    def step(real: torch.Tensor) -> None:
        b = real.size(0)
        net_d.zero_grad()
        label = torch.full((b,), 1.0)
        err_d_real = criterion(net_d(real).view(-1), label)
        err_d_real.backward()
        fake = net_g(torch.randn(b, NZ, 1, 1))
        label.fill_(0.0)
        err_d_fake = criterion(net_d(fake.detach()).view(-1), label)
        err_d_fake.backward()
        opt_d.step()
        net_g.zero_grad()
        label.fill_(1.0)
        err_g = criterion(net_d(fake).view(-1), label)
        err_g.backward()
        opt_g.step()
        (err_d_real + err_d_fake).item(), err_g.item()  # the example prints these every step

    def batches() -> Iterator[torch.Tensor]:
        while True:  # the example's `for epoch ...: for i, data in enumerate(dataloader)`
            for real, _ in loader:
                yield real

    stream = batches()

    def run(steps: int) -> None:
        if workers:
            # One whole epoch per call on a fresh iterator, as the example does: worker start-up,
            # prefetch and shutdown then fall inside this variant's timed window, not another's.
            for _, (real, _) in zip(range(steps), loader):
                step(real)
        else:
            for _ in range(steps):
                step(next(stream))

    return run


# -- moepipe ----------------------------------------------------------------------------------
def moepipe_runner(prepared: Path, augment: bool, precision: str) -> Callable[[int], None]:
    extra = {"augment": "color,translation,cutout", "augment_p": 1.0} if augment else {"augment": ""}
    # The classic transposed-conv body, so both loops train the same network.
    cfg = TrainConfig(arch="dcgan", block="transposed", width=WIDTH, z_dim=NZ, batch_size=BATCH, conditional=False,
                      ada=False, loss="nonsaturating", channels_last=True, device="cpu", precision=precision, **extra)
    trainer = _Trainer(cfg, 0, PackedSet(prepared, "train"), pick_runtime(cfg), World())
    counter = iter(range(10**9))

    def run(steps: int) -> None:
        for _ in range(steps):
            trainer.step(next(counter))

    return run


# -- measurement ------------------------------------------------------------------------------
def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peaks(n: int = 2048, reps: int = 8) -> dict[str, float]:
    """Best-of-reps GFLOP/s of one n x n x n fp32 product, two ways.

    torch.mm goes to MKL, which on AMD CPUs does not take its AVX-512 path, so it understates
    what the cores can do; the same product as a 1x1 channels_last convolution goes to oneDNN,
    the library that runs the DCGAN's convolutions, and is the fairer ceiling for them. The bf16
    line is the ceiling for bf16 autocast (twice fp32's where the CPU has bf16 hardware).
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = a.t().reshape(1, n, n // 64, 64).contiguous(memory_format=torch.channels_last)
    w = b.t().reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    x16, w16 = x.bfloat16(), w.bfloat16()
    peaks = {}
    for name, fn in (("MKL torch.mm", lambda: torch.mm(a, b)), ("oneDNN 1x1 conv", lambda: F.conv2d(x, w)),
                     ("oneDNN 1x1 conv bf16", lambda: F.conv2d(x16, w16))):
        fn()
        peaks[name] = 2 * n**3 / min(_timed(fn) for _ in range(reps)) / 1e9
    return peaks


def step_flops(run: Callable[[int], None]) -> int:
    """FLOPs of one real step (convs and matmuls, forward and backward) as torch dispatches them."""
    with FlopCounterMode(display=False) as counter:
        run(1)
    return counter.get_total_flops()


def cpu_model() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    family = next((line.split(":")[1].strip() for line in info.splitlines() if line.startswith("cpu family")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    simd = "avx512f" if " avx512f" in flags else "avx2" if " avx2" in flags else "no avx2"
    return f"{names[0] if names else 'unknown'} (family {family}, {simd}), {len(names)} logical CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24,
                        help="timed steps per variant, rounded up to whole epochs of 8 steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    # Off by default: on a 2-core machine the decode workers compete with the two compute threads
    # and this variant came out slower than num_workers=0 (0.87-0.92x on a quiet machine).
    parser.add_argument("--workers", action="store_true", help="also run classic with num_workers=2")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    epoch = N_IMAGES // BATCH
    rounds = -(-args.steps // epoch)

    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(N_IMAGES)
        write_pngs(images, Path(tmp) / "pngs")
        write_prepared(images, Path(tmp) / "prepared")
        variants = {"classic (workers=0)": classic_runner(Path(tmp) / "pngs", 0)}
        if args.workers:
            variants["classic (workers=2)"] = classic_runner(Path(tmp) / "pngs", 2)
        auto = "bf16" if pick_runtime(TrainConfig(device="cpu")).bf16 else "fp32"
        variants["moepipe fp32 (no augment)"] = moepipe_runner(Path(tmp) / "prepared", False, "fp32")
        if auto == "bf16":
            variants["moepipe bf16 (no augment)"] = moepipe_runner(Path(tmp) / "prepared", False, "bf16")
        variants[f"moepipe {auto} (+DiffAug p=1)"] = moepipe_runner(Path(tmp) / "prepared", True, auto)

        peaks = matmul_peaks()
        flops = {}
        for name, run in variants.items():
            if "workers=2" in name:  # same math as workers=0; its decoding would escape the counter
                run(args.warmup)
                flops[name] = flops["classic (workers=0)"]
            else:
                run(args.warmup - 1)
                flops[name] = step_flops(run)  # the last warm-up step, counted
        # Round r: one epoch (8 steps) of every variant. Variants without worker processes take
        # turns step by step, the order flipping each step (ABBA...), so a burst of load from
        # other processes hits them alike; the workers variant then runs its epoch as a block.
        seconds = {name: [0.0] * rounds for name in variants}
        stepped = [name for name in variants if "workers=2" not in name]
        for r in range(rounds):
            for i in range(epoch):
                for name in stepped if i % 2 == 0 else stepped[::-1]:
                    seconds[name][r] += _timed(lambda name=name: variants[name](1))
            for name in variants.keys() - stepped:
                seconds[name][r] += _timed(lambda name=name: variants[name](epoch))
        for name, value in matmul_peaks().items():  # best of start and end: less noise
            peaks[name] = max(peaks[name], value)

    steps = rounds * epoch
    print(f"cpu: {cpu_model()}   torch {torch.__version__}   torch threads {torch.get_num_threads()}")
    print("2048^3 product peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"{steps} timed steps per variant ({rounds} interleaved epochs of {epoch}) after {args.warmup} warm-up")
    order = list(variants)
    print(f"{'variant':27s} {'img/s':>7s} {'ms/step':>8s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} "
          f"{'%peak':>6s} {'vs classic':>10s}   (%peak: of the oneDNN 1x1 conv of the variant's precision)")
    base = seconds[order[0]]
    for name in order:
        per_step = sum(seconds[name]) / steps
        gflops = flops[name] / per_step / 1e9
        per_round = sorted(b / t for b, t in zip(base, seconds[name]))  # the noise, in plain sight
        peak = peaks["oneDNN 1x1 conv bf16" if "bf16" in name else "oneDNN 1x1 conv"]
        print(f"{name:27s} {BATCH / per_step:7.1f} {per_step * 1e3:8.0f} {flops[name] / 1e9:10.1f} {gflops:8.1f} "
              f"{100 * gflops / peak:5.0f}% {sum(base) / sum(seconds[name]):9.2f}x"
              f"   (per epoch {per_round[0]:.2f}-{per_round[-1]:.2f}x)")


if __name__ == "__main__":
    main()
