"""Generator and discriminator networks; ``build_models`` is the one entry point for callers.

Every generator has ``z_dim``, ``label_dim``, ``resolution`` and
``sample(n, labels=None, truncation_psi=1.0, generator=None) -> (n, 3, R, R) in [-1, 1]``;
every discriminator maps ``(images (N, 3, R, R), labels (N, L) | None)`` to logits (N,).
"""

from __future__ import annotations

import inspect

from torch import nn

from moepipe.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init
from moepipe.models.stylegan import MappingNetwork, StyleDiscriminator, StyleGenerator

ARCHITECTURES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "stylegan": (StyleGenerator, StyleDiscriminator),
}


def _accepted(cls: type[nn.Module]) -> set[str]:
    # resolution and label_dim are build_models' own arguments, never per-side options.
    return set(inspect.signature(cls.__init__).parameters) - {"self", "resolution", "label_dim"}


def build_models(
    arch: str, resolution: int, label_dim: int, **kwargs: object
) -> tuple[nn.Module, nn.Module]:
    """Build (generator, discriminator) of architecture ``arch`` ('dcgan' or 'stylegan').

    Each keyword goes to whichever constructor(s) accept it (``width``, ``channel_base`` and
    ``channel_max`` go to both); prefix it with ``g_`` or ``d_`` to give it to one side only,
    e.g. ``d_channel_max=128``. An unknown keyword raises TypeError naming it.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    g_cls, d_cls = ARCHITECTURES[arch]
    g_names, d_names = _accepted(g_cls), _accepted(d_cls)
    g_kwargs: dict[str, object] = {}
    d_kwargs: dict[str, object] = {}
    unknown = []
    for key, value in kwargs.items():
        if key.startswith("g_") and key[2:] in g_names:
            g_kwargs[key[2:]] = value
        elif key.startswith("d_") and key[2:] in d_names:
            d_kwargs[key[2:]] = value
        elif key in g_names or key in d_names:
            if key in g_names:
                g_kwargs.setdefault(key, value)
            if key in d_names:
                d_kwargs.setdefault(key, value)
        else:
            unknown.append(key)
    if unknown:
        raise TypeError(f"{arch}: unknown model option(s) {sorted(unknown)}")
    generator = g_cls(resolution=resolution, label_dim=label_dim, **g_kwargs)
    discriminator = d_cls(resolution=resolution, label_dim=label_dim, **d_kwargs)
    return generator, discriminator


__all__ = [
    "ARCHITECTURES",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MappingNetwork",
    "StyleDiscriminator",
    "StyleGenerator",
    "build_models",
    "dcgan_init",
]
