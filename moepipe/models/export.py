"""The generator file (``generator.pt``): the one place that writes, reads and describes it.

A generator file is a plain dict that ``torch.load(weights_only=True)`` reads: no pickled code,
so a file from anywhere can be opened safely. Training writes it (``save_generator``); drawing,
evaluation, the model card and the pyfunc read it through ``load_generator`` and
``generator_summary``, so inference never imports the training package.

Format ``moepipe-generator/2`` (current) keys: format, arch, resolution, label_dim,
model_kwargs, vocabulary, groups, label_prior, step, kimg, train_config (JSON text), state_dict.
Format 1 files hold the transposed-convolution DCGAN with input-only conditioning and no label
prior; they load as that network (``LEGACY_FORMATS``).

Every generator answers one call signature, whatever its architecture:
``G(z, labels, truncation_psi=..., noise_mode=...)``. Where its truncation acts is declared by
``G.truncation_space`` ("z": DCGAN scales z toward the prior's mode; "w": StyleGAN pulls w toward
its average), for callers that edit latents between the two.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from moepipe.errors import UserError
from moepipe.images import atomic_write
from moepipe.models import build_models

GENERATOR_FORMAT = "moepipe-generator/2"
LEGACY_FORMATS: dict[str, dict[str, dict[str, Any]]] = {"moepipe-generator/1": {"dcgan": {"block": "transposed"}}}
GENERATOR_FILE = "generator.pt"  # under the train stage's models/ folder
DIRECTIONS_FILE = "directions.npz"  # the edit directions of an unconditional generator, beside it


def save_generator(path: Path, generator: nn.Module, *, arch: str, model_kwargs: Mapping[str, Any],
                   vocabulary: list[str], groups: Mapping[str, Any], label_prior: Mapping[str, Any],
                   step: int, kimg: float, train_config: Mapping[str, Any]) -> None:
    """Write `generator` (its weights and how to rebuild it) to `path` atomically."""
    payload = {
        "format": GENERATOR_FORMAT, "arch": arch, "resolution": int(generator.resolution),
        "label_dim": int(generator.label_dim), "model_kwargs": dict(model_kwargs),
        "vocabulary": list(vocabulary), "groups": dict(groups), "label_prior": dict(label_prior),
        "step": int(step), "kimg": float(kimg), "train_config": json.dumps(dict(train_config)),
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue())


def read_generator(path: Path, device: str = "cpu") -> dict[str, Any]:
    """The raw dict of a generator file; a UserError if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such generator file")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, foreign or corrupt: the same user problem
        raise UserError(f"{path}: cannot read the generator ({error.__class__.__name__})") from None
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind != GENERATOR_FORMAT and kind not in LEGACY_FORMATS:
        raise UserError(f"{path}: not a moepipe generator file")
    return payload


def load_generator(path: Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a generator file's network (eval mode, on `device`) -> (generator, metadata).

    The metadata is the file's dict without the weights.
    """
    payload = read_generator(path, device)
    legacy = LEGACY_FORMATS.get(payload["format"], {}).get(payload["arch"], {})
    try:
        generator, _ = build_models(payload["arch"], payload["resolution"], payload["label_dim"],
                                    **{**legacy, **payload["model_kwargs"]})
        generator.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UserError(f"{path}: cannot rebuild the generator ({error.__class__.__name__}: "
                        f"{str(error).splitlines()[0][:160]})") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return generator.to(device).eval(), meta


def generator_summary(path: Path) -> dict[str, Any]:
    """What a generator file says about itself, without building the network.

    The parameter count comes from the weights' shapes; ``train_config`` is parsed ({} if absent).
    """
    payload = read_generator(path)
    state = payload.get("state_dict", {})
    return {
        "format": payload["format"],
        "arch": payload.get("arch"),
        "resolution": payload.get("resolution"),
        "label_dim": payload.get("label_dim", 0),
        "vocabulary": list(payload.get("vocabulary") or []),
        "groups": sorted((payload.get("groups") or {}).keys()),
        "model_kwargs": dict(payload.get("model_kwargs") or {}),
        "step": payload.get("step"),
        "kimg": payload.get("kimg"),
        "parameters": int(sum(t.numel() for t in state.values() if torch.is_tensor(t) and t.is_floating_point())),
        "train_config": _json_dict(payload.get("train_config")),
    }


def _json_dict(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
