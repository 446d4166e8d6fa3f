"""Training data over the packed arrays of the preprocess stage: no image decoding per step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moepipe.errors import UserError

if TYPE_CHECKING:
    import torch


class PackedSet:
    """One split of a prepared folder, memory-mapped.

    `images` is (N, H, W, 3) uint8, `labels` is (N, L) uint8 multi-hot; `meta` is meta.json.
    """

    def __init__(self, prepared: Path, split: str = "train") -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (got {split!r})")
        meta_path = prepared / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"no prepared data at {prepared} (run `moepipe preprocess` first)")
        self.meta = json.loads(meta_path.read_text())
        self.images = np.load(prepared / f"{split}_images.npy", mmap_mode="r")
        self.labels = np.load(prepared / f"{split}_labels.npy", mmap_mode="r")
        if len(self.images) != len(self.labels):
            raise UserError(f"{prepared}: {split} images and labels differ in length; re-run preprocess")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def vocabulary(self) -> list[str]:
        return list(self.meta["vocabulary"])

    def batches(self, batch_size: int, rng: np.random.Generator, drop_last: bool = True
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One shuffled epoch of (images (B, H, W, 3) uint8, labels (B, L) uint8) batches."""
        order = rng.permutation(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            rows = np.sort(order[start:start + batch_size])  # sorted rows read the mmap in order
            yield np.asarray(self.images[rows]), np.asarray(self.labels[rows])


def to_tensor(images: np.ndarray, channels_last: bool = False):
    """uint8 (B, H, W, 3) → float32 torch tensor (B, 3, H, W) in [-1, 1]; `to_uint8` inverts it."""
    import torch

    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # a read-only memmap: torch.from_numpy wants writable memory
        array = array.copy()
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    tensor = tensor.div_(127.5).sub_(1.0)
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor.contiguous() if not channels_last else tensor


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output, a torch tensor (B, 3, H, W) in [-1, 1] (clamped) → uint8 (B, H, W, 3) numpy."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
