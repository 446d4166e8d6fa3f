"""Exponential moving average of the generator's weights (Karras et al., ProGAN / StyleGAN2-ADA).

The averaged generator, not the trained one, is what gets sampled, evaluated and exported: the
average smooths out the oscillation of adversarial training and gives visibly better samples.

Beta schedule. ``beta`` is the per-step decay at full strength. With ``rampup`` set, the
averaging horizon is also limited to ``rampup`` times the images seen so far, as in
StyleGAN2-ADA's ``ema_rampup``: early in training the average would otherwise be dominated by
the random initial weights for thousands of steps. Concretely, with B the batch size,
    half_life = B * ln(0.5) / ln(beta)            images (the horizon beta implies)
    half_life = min(half_life, rampup * seen)     seen = (step - start_step) * B
    beta_t    = 0.5 ** (B / half_life)            (0 when half_life is 0: a plain copy)
so beta_t ≤ beta always and beta_t = beta once seen ≥ half_life / rampup.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


class EMA:
    """Holds ``.module``, an averaged copy of a model (eval mode, no gradients).

    Parameters are averaged; buffers (BatchNorm running statistics, StyleGAN's ``w_avg``,
    constant noise) are copied verbatim because they are already running statistics or fixed
    values, and averaging them again would only make them lag.
    """

    def __init__(
        self,
        model: nn.Module,
        beta: float = 0.999,
        rampup: float | None = 0.05,
        start_step: int = 0,
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"EMA beta must be in [0, 1) (got {beta})")
        if rampup is not None and rampup < 0:
            raise ValueError(f"EMA rampup must be ≥ 0 or None (got {rampup})")
        self.beta, self.rampup, self.start_step = beta, rampup or None, start_step
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        for param in self.module.parameters():
            param.grad = None  # deepcopy copies .grad; the average must never hold one
        self.last_beta: float | None = None

    def beta_at(self, step: int, batch_size: int) -> float:
        """Decay used by ``update`` at ``step`` (0-based, images before it = step * batch_size)."""
        if step < self.start_step or self.beta == 0.0:
            return 0.0
        if self.rampup is None:
            return self.beta
        half_life = batch_size * math.log(0.5) / math.log(self.beta)
        half_life = min(half_life, self.rampup * (step - self.start_step) * batch_size)
        if half_life <= 0:
            return 0.0
        return 0.5 ** (batch_size / half_life)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, batch_size: int) -> float:
        """ema = beta_t * ema + (1 - beta_t) * param for every parameter; copy every buffer.

        Call after the optimizer step of optimisation step ``step`` (0-based); returns beta_t.
        Before ``start_step`` the average is a plain copy of the model.
        """
        source = unwrap(model)
        beta = self.beta_at(step, batch_size)
        ema_params = list(self.module.parameters())
        params = list(source.parameters())
        if len(ema_params) != len(params):
            raise ValueError(f"model has {len(params)} parameters, its EMA {len(ema_params)}")
        # .to() is a no-op on the same device; it lets the average live on the CPU (see ``to``).
        floats = [
            (e, p.detach().to(e.device)) for e, p in zip(ema_params, params) if e.is_floating_point()
        ]
        if floats:
            ema_f, src_f = zip(*floats)
            if beta == 0.0:
                torch._foreach_copy_(list(ema_f), list(src_f))
            else:
                # lerp_(target, w): ema += w * (param - ema), i.e. beta*ema + (1-beta)*param.
                torch._foreach_lerp_(list(ema_f), list(src_f), 1.0 - beta)
        for e, p in zip(ema_params, params):
            if not e.is_floating_point():
                e.copy_(p)
        ema_buffers, buffers = list(self.module.buffers()), list(source.buffers())
        if len(ema_buffers) != len(buffers):
            raise ValueError(f"model has {len(buffers)} buffers, its EMA {len(ema_buffers)}")
        for e, b in zip(ema_buffers, buffers):
            e.copy_(b)
        self.last_beta = beta
        return beta

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and buffers plus the last decay used (hyper-parameters come from config)."""
        return {"module": self.module.state_dict(), "last_beta": self.last_beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.last_beta = state.get("last_beta")

    def to(self, *args: Any, **kwargs: Any) -> EMA:
        """Move the averaged module (e.g. keep it on the CPU to save accelerator memory)."""
        self.module.to(*args, **kwargs)
        return self


@torch.no_grad()
def standing_statistics(module: nn.Module, batches: Iterable[tuple[Any, ...]]) -> nn.Module:
    """A copy of `module` whose BatchNorm running statistics are measured on its own activations.

    BigGAN's "standing statistics" (Brock et al. 2019, appendix C.1). The averaged generator
    carries the *trained* generator's running mean and variance (``EMA.update`` copies buffers),
    which describe another network's activations: in eval mode every BatchNorm then shifts and
    scales by slightly wrong amounts. Here the copy runs in train mode on `batches` (each a tuple
    of arguments for ``module(*args)``) and keeps the plain average of their batch statistics
    (momentum None), then returns to eval mode. A module without BatchNorm is returned as is.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    measured = copy.deepcopy(module)
    norms = [m for m in measured.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
    measured.train()
    for args in batches:
        measured(*args)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return measured.eval()
