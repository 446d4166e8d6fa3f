"""GAN objectives and gradient regularisers, selected by name (``train.loss`` in params.yaml).

Every loss takes raw discriminator logits, (N,) or (N, 1) of any float dtype, and returns a
float32 scalar (a mean over the batch). Logits are promoted to float32 first so that losses
computed under bf16 autocast keep full precision in the exp/log terms.

Names:
  minimax        Goodfellow et al. 2014 as written: G minimises log(1 - D(G(z))) (saturates).
  nonsaturating  same D; G maximises log D(G(z)) instead (the form everyone trains with).
  wgan-gp        Gulrajani et al. 2017 critic + gradient penalty, ProGAN's drift term.
  hinge          Lim & Ye 2017 / SAGAN / BigGAN.

Regularisers that need the discriminator itself (not just logits) are free functions the loop
calls: ``gradient_penalty`` (WGAN-GP) and ``r1_penalty`` / ``lazy_r1_penalty`` (Mescheder et al.
2018, applied lazily as in StyleGAN2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from moepipe.models.attributes import AttributeLayout

Discriminator = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

DEFAULT_GP_WEIGHT = 10.0  # lambda in Gulrajani et al.
DEFAULT_DRIFT = 0.001  # epsilon_drift in ProGAN


def _flat(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() > 1 and logits.shape[1:].numel() != 1:
        raise ValueError(f"expected logits of shape (N,) or (N, 1), got {tuple(logits.shape)}")
    return logits.reshape(-1).float()


class GANLoss:
    """A pair of objectives over logits; subclasses set ``name`` and ``needs_gradient_penalty``.

    ``needs_gradient_penalty`` tells the loop to add ``gradient_penalty(...)`` (weight
    ``gp_weight``) to every D step; only WGAN-GP sets it.
    """

    name: str = ""
    needs_gradient_penalty: bool = False
    gp_weight: float = 0.0

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """real_logits (N,), fake_logits (M,) -> scalar loss the discriminator minimises."""
        raise NotImplementedError

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """fake_logits (M,) -> scalar loss the generator minimises."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _LogisticD(GANLoss):
    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        # BCE(D(x), 1) + BCE(D(G(z)), 0) written as softplus: -log sigmoid(l) = softplus(-l)
        # and -log(1 - sigmoid(l)) = softplus(l), exact and overflow-free for any logit.
        return F.softplus(-_flat(real_logits)).mean() + F.softplus(_flat(fake_logits)).mean()


class MinimaxLoss(_LogisticD):
    """The saturating generator loss of the original GAN paper: min log(1 - D(G(z))).

    Its gradient w.r.t. the fake logit is -sigmoid(l), which vanishes exactly when D confidently
    rejects the fakes (early training) — kept for comparison experiments, not as a default.
    """

    name = "minimax"

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -F.softplus(_flat(fake_logits)).mean()


class NonSaturatingLoss(_LogisticD):
    """G minimises -log D(G(z)) = softplus(-l); gradient -sigmoid(-l) → -1 as D rejects fakes."""

    name = "nonsaturating"

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(-_flat(fake_logits)).mean()


class WassersteinGPLoss(GANLoss):
    """Critic: mean(fake) - mean(real) + drift * mean(real²); the loop adds the gradient penalty.

    The drift term (ProGAN) only keeps the critic's output from wandering off to large absolute
    values, which the Wasserstein objective alone does not penalise.
    """

    name = "wgan-gp"
    needs_gradient_penalty = True

    def __init__(self, gp_weight: float = DEFAULT_GP_WEIGHT, drift: float = DEFAULT_DRIFT) -> None:
        if gp_weight < 0 or drift < 0:
            raise ValueError(f"gp_weight and drift must be ≥ 0 (got {gp_weight}, {drift})")
        self.gp_weight = gp_weight
        self.drift = drift

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real, fake = _flat(real_logits), _flat(fake_logits)
        loss = fake.mean() - real.mean()
        if self.drift:
            loss = loss + self.drift * real.square().mean()
        return loss

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -_flat(fake_logits).mean()

    def __repr__(self) -> str:
        return f"WassersteinGPLoss(gp_weight={self.gp_weight}, drift={self.drift})"


class HingeLoss(GANLoss):
    """D: relu(1 - real) + relu(1 + fake); G: -fake. D stops pushing once past the margin."""

    name = "hinge"

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - _flat(real_logits)).mean() + F.relu(1.0 + _flat(fake_logits)).mean()

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -_flat(fake_logits).mean()


LOSSES: dict[str, type[GANLoss]] = {
    cls.name: cls for cls in (NonSaturatingLoss, MinimaxLoss, WassersteinGPLoss, HingeLoss)
}


def get_loss(
    name: str, *, gp_weight: float = DEFAULT_GP_WEIGHT, drift: float = DEFAULT_DRIFT
) -> GANLoss:
    """The loss called ``name`` (one of ``LOSSES``); ``gp_weight``/``drift`` apply to wgan-gp only."""
    if name not in LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}; expected one of {sorted(LOSSES)}")
    if name == WassersteinGPLoss.name:
        return WassersteinGPLoss(gp_weight=gp_weight, drift=drift)
    return LOSSES[name]()


def _input_gradients(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    # Summing the logits gives per-sample input gradients in one backward pass because each
    # logit depends only on its own image (minibatch-std layers break this slightly; StyleGAN
    # accepts the same approximation). create_graph so the penalty itself can be minimised.
    (grads,) = torch.autograd.grad(
        outputs=_flat(logits).sum(), inputs=inputs, create_graph=True, only_inputs=True
    )
    return grads.float().flatten(1)  # (N, C*H*W)


def gradient_penalty(
    discriminator: Discriminator,
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor | None = None,
    weight: float = DEFAULT_GP_WEIGHT,
) -> torch.Tensor:
    """WGAN-GP term: weight * E[(||∇ D(x̂)||₂ - 1)²] at x̂ uniformly between real and fake.

    real, fake: (N, 3, H, W) images (fake may still be attached to G's graph; it is detached
    here because the penalty trains D only). labels: (N, L) or None, passed to D as is.
    One interpolation coefficient per sample, drawn from the global RNG. Returns a float32
    scalar whose graph reaches D's parameters.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    # Under bf16 autocast the fakes come out of G in bf16 while real batches stay float32.
    mixed = torch.lerp(fake.detach().to(real.dtype), real.detach(), alpha.to(real.dtype))
    mixed.requires_grad_(True)
    grads = _input_gradients(discriminator(mixed, labels), mixed)
    return weight * (grads.norm(2, dim=1) - 1.0).square().mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """R1: gamma/2 * E[||∇ₓ D(x)||²] at real images; a float32 scalar.

    real_images (N, 3, H, W) must have had ``requires_grad_(True)`` set before D (and any
    augmentation) ran on them, and real_logits (N,) must come from that forward pass.
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty needs real_images.requires_grad_(True) before D's forward pass")
    grads = _input_gradients(real_logits, real_images)
    return 0.5 * gamma * grads.square().sum(dim=1).mean()


def lazy_r1_penalty(
    real_logits: torch.Tensor, real_images: torch.Tensor, gamma: float, interval: int
) -> torch.Tensor:
    """R1 scaled for lazy regularisation: interval * gamma/2 * E[||∇ₓ D(x)||²].

    Call on steps where ``step % interval == 0`` only; multiplying by the interval keeps the
    penalty's average strength equal to applying it every step (StyleGAN2, Appendix B).
    """
    if interval < 1:
        raise ValueError(f"r1 interval must be ≥ 1 (got {interval})")
    return r1_penalty(real_logits, real_images, gamma) * interval


def attribute_loss(logits: torch.Tensor, labels: torch.Tensor, layout: AttributeLayout) -> torch.Tensor:
    """AC-GAN auxiliary loss: mean over attribute groups of how badly ``logits`` read ``labels``.

    logits, labels: (N, L) over the vocabulary (labels multi-hot). A single-choice group is a
    softmax over its tags (cross-entropy, rows labelled with exactly one of them only); a multi
    group is an independent sigmoid per tag (binary cross-entropy). Returns a float32 scalar.
    """
    logits, labels = logits.float(), labels.float()
    losses = []
    for group in layout.groups:
        columns = torch.as_tensor(group.columns, device=logits.device)
        part, target = logits.index_select(1, columns), labels.index_select(1, columns)
        if group.multi:
            losses.append(F.binary_cross_entropy_with_logits(part, target))
            continue
        labelled = target.sum(dim=1) == 1
        if labelled.any():
            losses.append(F.cross_entropy(part[labelled], target[labelled].argmax(dim=1)))
    return torch.stack(losses).mean() if losses else logits.new_zeros(())
