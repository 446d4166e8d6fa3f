"""Train stage: packed data → a conditional GAN generator (EMA weights), resumable exactly.

Every step's randomness (batch rows, z, augmentation, noise) is seeded from (seed, step, rank),
so a run resumed from a checkpoint at step k draws exactly what an uninterrupted run draws.
The loop knows nothing of MLflow: it reports through a `MetricsSink` (files by default).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moepipe.config import TrainConfig
from moepipe.data import PackedSet, to_tensor
from moepipe.errors import UserError
from moepipe.models import build_models
from moepipe.models.attributes import AttributeLayout
from moepipe.models.export import GENERATOR_FILE, save_generator
from moepipe.progress import progress_bar
from moepipe.train import checkpoint as ckpt
from moepipe.train.augment import AdaptiveAugment
from moepipe.train.distributed import World, average_gradients, broadcast_state, gather_cat, init_world, shutdown
from moepipe.train.ema import EMA, standing_statistics
from moepipe.train.losses import attribute_loss, get_loss, gradient_penalty, lazy_r1_penalty
from moepipe.train.runtime import Runtime, pick_runtime
from moepipe.train.samples import sample_grid, sample_labels
from moepipe.train.sink import FileSink, MetricsSink

# Settings that change what is computed; the rest (logging, step count ...) may change on resume.
_NOT_IN_FINGERPRINT = {"steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                       "threads", "sample_columns", "compile", "profile", "standing_stats"}


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    kimg: float
    seconds: float
    images_per_s: float
    last: dict[str, float] = field(default_factory=dict)
    digest: str = ""  # sha256 of G and D parameters: equal on every rank, equal after exact resume
    generator: Path | None = None  # the exported file

    @property
    def summary(self) -> str:
        """The one line `moepipe train` prints."""
        losses = f", D {self.last['loss_d']:.3f} G {self.last['loss_g']:.3f}" if self.last else ""
        return (f"train: {self.steps} steps ({self.kimg:.1f} kimg, resumed at {self.resumed_from}) "
                f"in {self.seconds:.0f} s, {self.images_per_s:.0f} img/s{losses} → {self.generator}")


def model_kwargs(cfg: TrainConfig, layout: AttributeLayout | None = None) -> dict[str, Any]:
    if cfg.arch == "dcgan":
        sizes = layout.group_sizes() if layout else None
        return {"width": cfg.width, "z_dim": cfg.z_dim, "block": cfg.block, "embed_dim": cfg.embed_dim,
                "minibatch_std": cfg.minibatch_std, **({"d_width": cfg.d_width} if cfg.d_width else {}),
                **({"label_groups": sizes} if sizes else {})}
    return {"z_dim": cfg.z_dim, "channel_base": cfg.channel_base, "channel_max": cfg.channel_max}


def code_digest() -> str:
    """sha256 of the model and training source: a checkpoint made by other code is not resumed."""
    package = Path(__file__).resolve().parents[1]
    hasher = hashlib.sha256()
    for path in sorted([*(package / "models").glob("*.py"), *(package / "train").glob("*.py"), package / "data.py"]):
        hasher.update(path.name.encode() + path.read_bytes())
    return hasher.hexdigest()


def fingerprint(cfg: TrainConfig, seed: int, data: PackedSet, world_size: int) -> str:
    """What a checkpoint must match to be resumed: params that change the math, the data, the code."""
    settings = {k: v for k, v in cfg.model_dump().items() if k not in _NOT_IN_FINGERPRINT}
    hasher = hashlib.sha256(json.dumps([settings, seed, world_size, code_digest()], sort_keys=True).encode())
    hasher.update(np.ascontiguousarray(data.images).tobytes())
    hasher.update(np.ascontiguousarray(data.labels).tobytes())
    return hasher.hexdigest()[:20]


def parameter_digest(*modules: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            hasher.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()[:7], "big")


def mode_seeking_penalty(fake: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN (Mao et al. 2019): 1 / (mean |G(z1) - G(z2)| / mean |z1 - z2|) over pairs (i, i + n/2).

    Small when two latents with the same labels give different images, so a generator that
    ignores z (mode collapse within a label set) pays for it.
    """
    half = fake.shape[0] // 2
    if half == 0:
        return fake.new_zeros(())
    images = (fake[:half].float() - fake[half:2 * half].float()).abs().mean()
    latents = (z[:half] - z[half:2 * half]).abs().mean()
    return 1.0 / (images / latents + eps)


def _grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    # One multi-tensor kernel instead of one norm per parameter (matters on GPUs, where each
    # is a launch); the per-tensor norms and the result are the same values.
    return float(torch.stack(torch._foreach_norm(grads)).norm()) if grads else 0.0


class _Trainer:
    def __init__(self, cfg: TrainConfig, seed: int, data: PackedSet, runtime: Runtime, world: World) -> None:
        self.cfg, self.seed, self.data, self.rt, self.world = cfg, seed, data, runtime, world
        label_dim = len(data.vocabulary) if cfg.conditional and data.meta.get("labelled") else 0
        self.label_dim = label_dim
        self.layout = AttributeLayout(data.meta.get("groups", {}), data.vocabulary) if label_dim else None
        # How often each attribute value occurs in the training data: the source of the fake
        # batches' multi tags and, after export, of every group a request leaves out.
        self.prior = self.layout.prior(np.asarray(data.labels)) if self.layout else {}
        self.attribute_weight = cfg.aux_weight if self.layout else 0.0
        self.resolution = int(data.meta["resolution"])
        torch.manual_seed(seed)  # same initial weights on every rank
        self.G, self.D = build_models(cfg.arch, self.resolution, label_dim, **model_kwargs(cfg, self.layout))
        memory = torch.channels_last if runtime.channels_last else torch.contiguous_format
        self.G.to(runtime.device, memory_format=memory)
        self.D.to(runtime.device, memory_format=memory)
        betas = (cfg.beta1, cfg.beta2)
        fused = runtime.device.type == "cuda"
        adam = {"betas": betas, "foreach": not fused, "fused": fused or None}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, **adam)
        self.loss = get_loss(cfg.loss, gp_weight=cfg.gp_weight)
        self.ema = EMA(self.G, beta=cfg.ema_beta, rampup=cfg.ema_rampup)
        self.ada = AdaptiveAugment(target=cfg.ada_target, speed_kimg=cfg.ada_speed_kimg,
                                   initial_p=cfg.augment_p, adaptive=cfg.ada)
        self.g_run = torch.compile(self.G) if cfg.compile else self.G
        self.d_run = torch.compile(self.D) if cfg.compile else self.D
        self.local_batch = cfg.batch_size // world.size

    # -- state ------------------------------------------------------------------------------
    def state(self, step: int, fp: str) -> dict[str, Any]:
        return {
            "format": "moepipe-checkpoint/1", "fingerprint": fp, "step": step,
            "generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict(), "ada": self.ada.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load(self, state: dict[str, Any]) -> int:
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.ada.load_state_dict(state["ada"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["step"])

    def exported_generator(self) -> torch.nn.Module:
        """The EMA generator with its own BatchNorm statistics (train.standing_stats batches of
        the training batch size: z from a fixed seed, label rows of the training set, as the
        fake batches are asked for). The EMA itself is left as it is, so a resumed run goes on
        exactly as an uninterrupted one."""
        cfg = self.cfg
        if not cfg.standing_stats:
            return self.ema.module
        rng = np.random.default_rng(_step_seed(self.seed, cfg.steps, -1))
        latents = torch.Generator().manual_seed(_step_seed(self.seed, cfg.steps, -1))

        def batches():
            for _ in range(cfg.standing_stats):
                z = torch.randn(cfg.batch_size, self.G.z_dim, generator=latents).to(self.rt.device)
                labels = None
                if self.label_dim:
                    rows = np.sort(rng.choice(len(self.data), cfg.batch_size))
                    labels = torch.from_numpy(np.asarray(self.data.labels[rows], dtype=np.float32)).to(self.rt.device)
                yield z, labels

        return standing_statistics(self.ema.module, batches())

    # -- one optimisation step ---------------------------------------------------------------
    def _batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = np.sort(rng.choice(len(self.data), self.local_batch, replace=len(self.data) < self.local_batch))
        images = to_tensor(np.asarray(self.data.images[rows]), self.rt.channels_last)
        images = images.to(self.rt.device, non_blocking=True)
        if not self.label_dim:
            return images, None
        labels = torch.from_numpy(np.asarray(self.data.labels[rows], dtype=np.float32)).to(self.rt.device)
        return images, labels

    def _fake_labels(self, labels: torch.Tensor | None, n: int, rng: np.random.Generator) -> torch.Tensor | None:
        """Labels the fake batch is asked for: the real batch's, or balanced draws
        (train.balanced_labels). With mode seeking, row i and row i + n//2 share labels."""
        if labels is None:
            return None
        if self.cfg.balanced_labels and self.layout:
            labels = torch.from_numpy(self.layout.balanced(n, self.prior, rng)).to(labels.device)
        if self.cfg.mode_seeking:
            labels = labels[torch.arange(n) % max(n // 2, 1)]
        return labels

    def _fake(self, n: int, labels: torch.Tensor | None, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            z = torch.randn(n, self.G.z_dim, device=self.rt.device)
        if self.cfg.arch == "stylegan":
            return self.g_run(z, labels, style_mix_prob=self.cfg.style_mix_prob)
        return self.g_run(z, labels)

    def step(self, step: int) -> dict[str, float]:
        cfg, rt = self.cfg, self.rt
        torch.manual_seed(_step_seed(self.seed, step, self.world.rank))
        rng = np.random.default_rng(_step_seed(self.seed, step, self.world.rank))
        policy = cfg.augment
        metrics: dict[str, float] = {}

        self.D.requires_grad_(True)
        # With one D step per G step, the G step reuses the D step's fakes (as the classic DCGAN
        # loop does): one generator forward per iteration instead of two, the same update rule.
        reuse = cfg.d_steps == 1
        for _ in range(cfg.d_steps):
            real, labels = self._batch(rng)
            n = real.shape[0]
            z = torch.randn(n, self.G.z_dim, device=rt.device)
            fake_labels = self._fake_labels(labels, n, rng)
            with rt.autocast():
                with torch.set_grad_enabled(reuse):
                    fake_for_g = self._fake(n, fake_labels, z)
                fake = fake_for_g.detach()
                real_logits, real_attributes = self.d_run(self.ada.augment(real, policy), labels,
                                                          with_attributes=True)
                fake_logits = self.d_run(self.ada.augment(fake, policy), fake_labels)
            loss_d = self.loss.d_loss(real_logits, fake_logits)
            if self.attribute_weight:
                # AC-GAN with D's classifier trained on real images only: it learns what a
                # twintail looks like from the data, never from the generator's attempts.
                aux_d = attribute_loss(real_attributes, labels, self.layout)
                metrics["aux_d"] = float(aux_d.detach())
                loss_d = loss_d + self.attribute_weight * aux_d
            if self.loss.needs_gradient_penalty:
                loss_d = loss_d + gradient_penalty(self.d_run, real, fake, labels, self.loss.gp_weight)
            self._check(loss_d, "discriminator", step)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            average_gradients(self.D, self.world)
            metrics["grad_norm_d"] = _grad_norm(self.D)
            self.opt_d.step()

        if cfg.r1_gamma > 0 and step % cfg.r1_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            with rt.autocast():
                logits = self.d_run(self.ada.augment(real_r1, policy), labels)
            penalty = lazy_r1_penalty(logits, real_r1, cfg.r1_gamma, cfg.r1_interval)
            self._check(penalty, "R1 penalty", step)
            self.opt_d.zero_grad(set_to_none=True)
            penalty.backward()
            average_gradients(self.D, self.world)
            self.opt_d.step()
            metrics["r1"] = float(penalty.detach()) / cfg.r1_interval

        self.D.requires_grad_(False)
        with rt.autocast():
            fake = fake_for_g if reuse else self._fake(n, fake_labels, z)
            fake_logits, fake_attributes = self.d_run(self.ada.augment(fake, policy), fake_labels,
                                                      with_attributes=True)
            loss_g = self.loss.g_loss(fake_logits)
        if self.attribute_weight:
            aux_g = attribute_loss(fake_attributes, fake_labels, self.layout)
            metrics["aux_g"] = float(aux_g.detach())
            loss_g = loss_g + self.attribute_weight * aux_g
        if cfg.mode_seeking:
            loss_g = loss_g + cfg.mode_seeking * mode_seeking_penalty(fake, z)
        self._check(loss_g, "generator", step)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        average_gradients(self.G, self.world)
        metrics["grad_norm_g"] = _grad_norm(self.G)
        self.opt_g.step()
        broadcast_state(self.G, self.world, buffers_only=True)
        broadcast_state(self.D, self.world, buffers_only=True)

        self.ema.update(self.G, step, cfg.batch_size)
        self.ada.update(gather_cat(real_logits.detach().float().reshape(-1), self.world))
        metrics.update(loss_d=float(loss_d.detach()), loss_g=float(loss_g.detach()), augment_p=self.ada.p,
                       real_sign=self.ada.rt if self.ada.rt is not None else math.nan)
        return metrics

    def _check(self, loss: torch.Tensor, what: str, step: int) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise TrainingDiverged(
                f"train: the {what} loss became {float(loss)} at step {step}; stopped, the last good "
                f"checkpoint is kept (lower train.lr_d/lr_g, or try train.loss=hinge)"
            )


def export_generator(trainer: _Trainer, path: Path, step: int, cfg: TrainConfig) -> None:
    """The EMA generator, its BatchNorm statistics re-measured, as a generator file (moepipe/models/export.py)."""
    save_generator(path, trainer.exported_generator(), arch=cfg.arch, model_kwargs=model_kwargs(cfg, trainer.layout),
                   vocabulary=trainer.data.vocabulary if trainer.label_dim else [],
                   groups=trainer.data.meta.get("groups", {}), label_prior=trainer.prior, step=step,
                   kimg=step * cfg.batch_size / 1000, train_config=cfg.model_dump())


def train(cfg: TrainConfig, seed: int, prepared: Path, out: Path, *, reports: Path | None = None,
          sink: MetricsSink | None = None, echo: Callable[[str], None] | None = None) -> TrainResult:
    """Train a GAN on `prepared`, writing `out`/generator.pt and `out`/checkpoints/; resumes."""
    echo = echo or (lambda line: print(line, file=sys.stderr))
    data = PackedSet(prepared, "train")
    if len(data) == 0:
        raise UserError(f"train: {prepared} has no training images")
    runtime = pick_runtime(cfg)
    world = init_world(runtime.device.type)
    try:
        return _train(cfg, seed, data, runtime, world, out, reports, sink, echo)
    finally:
        shutdown(world)


def _train(cfg, seed, data, runtime, world, out, reports, sink, echo) -> TrainResult:
    if cfg.batch_size % world.size:
        raise UserError(f"train.batch_size {cfg.batch_size} does not split over {world.size} processes")
    trainer = _Trainer(cfg, seed, data, runtime, world)
    fp = fingerprint(cfg, seed, data, world.size)
    folder = out / "checkpoints"
    state, problems, foreign = ckpt.load_latest(folder, fp)
    for problem in problems:
        echo(f"train: warning: {problem}; falling back to an older checkpoint")
    start = trainer.load(state) if state else 0
    if state:
        echo(f"train: resuming from step {start} ({folder})")
    elif foreign and world.is_main:
        echo(f"train: starting afresh; removing {len(foreign)} checkpoint(s) of other params or data")
        for path in foreign:
            path.unlink(missing_ok=True)
    sink = sink or (FileSink(reports, start) if reports and world.is_main else None)
    grid_labels = sample_labels(data, trainer.label_dim, rows=6)

    def save(step: int) -> None:
        if world.is_main:
            ckpt.save_checkpoint(folder, step, trainer.state(step, fp), cfg.keep_checkpoints)

    began, window_start, window_images = time.perf_counter(), time.perf_counter(), 0
    metrics: dict[str, float] = {}
    with progress_bar() as progress:
        task = progress.add_task("train", total=cfg.steps, completed=min(start, cfg.steps), status="")
        for step in range(start, cfg.steps):
            metrics = trainer.step(step)
            window_images += cfg.batch_size
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - window_start
                metrics["img_s"] = window_images / max(elapsed, 1e-9)
                window_start, window_images = time.perf_counter(), 0
                if sink:
                    sink.log_metrics(done, {"kimg": done * cfg.batch_size / 1000, **metrics})
                progress.update(task, status=f"D {metrics['loss_d']:.3f} G {metrics['loss_g']:.3f} "
                                f"p {metrics['augment_p']:.2f} {metrics['img_s']:.0f} img/s")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
            if sink and (done % cfg.sample_every == 0 or done == cfg.steps):
                sink.log_image(done, sample_grid(trainer.ema.module, grid_labels, cfg.sample_columns, runtime.device,
                                                 data.vocabulary))
            progress.update(task, completed=done)
    if world.is_main:
        export_generator(trainer, out / GENERATOR_FILE, cfg.steps, cfg)
    seconds = time.perf_counter() - began
    trained = max(cfg.steps - start, 0)
    return TrainResult(steps=cfg.steps, resumed_from=start, kimg=cfg.steps * cfg.batch_size / 1000,
                       seconds=seconds, images_per_s=trained * cfg.batch_size / max(seconds, 1e-9),
                       last=metrics, digest=parameter_digest(trainer.G, trainer.D), generator=out / GENERATOR_FILE)
