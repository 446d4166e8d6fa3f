"""Params of the model stages: train, evaluate, register."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from moepipe.config.base import Strict

# --------------------------------------------------------------------------------------------
# Train
# --------------------------------------------------------------------------------------------

# Profiles fill in whatever train.* keys params.yaml leaves out; explicit keys always win.
TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    # A few minutes on 2 CPU cores for the default 64 px synthetic gallery; bf16 autocast where
    # the CPU has bf16 hardware (precision auto), else fp32.
    "cpu": {"arch": "dcgan", "width": 32, "batch_size": 32, "steps": 3000, "device": "cpu",
            "precision": "auto", "checkpoint_every": 200, "sample_every": 400, "ada_speed_kimg": 20.0,
            "mode_seeking": 0.3,
            # Translation only: colour jitter changes the hair and eye colours the attribute head
            # must read, and cutout hides the eyes. With the AC-GAN weight 1 / 3 / 6 / 10 control
            # accuracy was 0.78 / 0.93 / 0.955 / 0.96 on the default data, balanced labels on
            # (README, ablation).
            "augment": "translation", "aux_weight": 10.0,
            # Two time-scale update rule (Heusel et al. 2017): D learns 4x faster than G. With
            # 3,000 steps instead of 2,400 it took fd from 12.9 to 11.3 (seed 0; 9.4 with seed 1) on the
            # default data, accessories 0.896 -> 0.931 (README, ablation).
            "lr_g": 1e-4, "lr_d": 4e-4,
            # Lazy R1 on real images (Mescheder et al. 2018), every 16 steps. With standing
            # statistics it took fd from 10.3 to 9.1 and recall from 0.74 to 0.81 (seed 0, README).
            "r1_gamma": 0.1},
    # One modern GPU: StyleGAN-lite with bf16 autocast and channels_last.
    "gpu": {"arch": "stylegan", "batch_size": 64, "steps": 40000, "device": "cuda",
            "precision": "bf16", "checkpoint_every": 1000, "sample_every": 2000, "r1_gamma": 0.5,
            "ema_beta": 0.999, "augment": "translation", "aux_weight": 10.0},
}


class TrainConfig(Strict):
    """GAN training; see TRAIN_PROFILES for the values a profile fills in."""

    profile: Literal["cpu", "gpu"] = "cpu"
    arch: Literal["dcgan", "stylegan"] = "dcgan"
    conditional: bool = Field(default=True, description="condition on labels when the data has any")
    width: int = Field(default=64, ge=4, le=1024, description="DCGAN base width (64 = the classic)")
    d_width: int = Field(default=0, ge=0, le=1024, description="DCGAN discriminator base width; 0 = width")
    minibatch_std: bool = Field(default=False, description="DCGAN discriminator sees the minibatch standard deviation")
    z_dim: int = Field(default=100, ge=1, le=2048)
    channel_base: int = Field(default=2048, ge=64, description="StyleGAN channel budget")
    channel_max: int = Field(default=256, ge=8)
    steps: int = Field(default=2400, ge=1, description="optimizer steps (kimg = steps x batch / 1000)")
    batch_size: int = Field(default=32, ge=2, le=4096, description="global batch, split across ranks")
    loss: Literal["nonsaturating", "minimax", "wgan-gp", "hinge"] = "nonsaturating"
    lr_g: float = Field(default=2e-4, gt=0, le=1)
    lr_d: float = Field(default=2e-4, gt=0, le=1)
    beta1: float = Field(default=0.5, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    d_steps: int = Field(default=1, ge=1, le=10, description="discriminator steps per generator step")
    gp_weight: float = Field(default=10.0, ge=0)
    r1_gamma: float = Field(default=0.0, ge=0, description="lazy R1 weight; 0 = off")
    mode_seeking: float = Field(default=0.0, ge=0, description="MSGAN weight: variety per label set; 0 = off")
    aux_weight: float = Field(
        default=1.0, ge=0, description="AC-GAN attribute loss weight (D on real, G on fake); 0 = off")
    # Off by default: on the default data, uniform draws instead of the real batch's labels cost
    # fd 12.9 -> 16.2 and recall 0.76 -> 0.62 at equal control (README, ablation).
    balanced_labels: bool = Field(default=False, description="fake batches ask for uniformly drawn attribute values")
    block: Literal["upconv", "transposed"] = Field(
        default="upconv", description="DCGAN generator body: upsample+conv with conditional BatchNorm, or the classic")
    embed_dim: int = Field(default=32, ge=1, le=512, description="DCGAN label code size per attribute group")
    r1_interval: int = Field(default=16, ge=1)
    augment: str = Field(default="color,translation,cutout", description="DiffAugment policy; '' = none")
    ada: bool = Field(default=True, description="adapt the augmentation probability (ADA)")
    ada_target: float = Field(default=0.6, ge=0, le=1)
    ada_speed_kimg: float = Field(default=100.0, gt=0)
    augment_p: float = Field(default=0.0, ge=0, le=1, description="initial (or fixed, without ada) p")
    ema_beta: float = Field(default=0.995, ge=0, lt=1)
    ema_rampup: float | None = Field(default=0.05, ge=0)
    # BigGAN's standing statistics for the exported EMA generator. On the default data (seed 0)
    # re-measuring the BatchNorm statistics of the trained default took fd from 11.3 to 10.3 at
    # no training cost (README, ablation).
    standing_stats: int = Field(default=16, ge=0, le=10000,
        description="batches re-measuring the exported generator's BatchNorm statistics; 0 = off")
    style_mix_prob: float = Field(default=0.9, ge=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    threads: int = Field(default=0, ge=0, description="CPU threads; 0 = all cores")
    deterministic: bool = Field(default=False, description="bitwise-repeatable runs (slower)")
    checkpoint_every: int = Field(default=200, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    log_every: int = Field(default=10, ge=1)
    sample_every: int = Field(default=400, ge=1)
    sample_columns: int = Field(default=8, ge=1, le=32)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = data.get("profile", "cpu")
        preset = TRAIN_PROFILES.get(profile, {}) if isinstance(profile, str) else {}
        return {**preset, **data}

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.loss == "wgan-gp" and self.gp_weight == 0:
            raise ValueError("loss wgan-gp needs gp_weight > 0")
        return self


# --------------------------------------------------------------------------------------------
# Evaluate
# --------------------------------------------------------------------------------------------

# Truncation psi that the scored samples, `moepipe generate` and the served model accept.
TRUNCATION_RANGE = (0.0, 2.0)


class ClassifierConfig(Strict):
    """The attribute classifier whose features score generators (trained on the prepared data)."""

    epochs: int = Field(default=30, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=2, le=4096)


class EvaluateConfig(Strict):
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    samples: int = Field(default=1000, ge=16, description="generated images for FD, KID, precision/recall")
    batch_size: int = Field(default=64, ge=1, le=4096)
    truncation: float = Field(default=1.0, ge=TRUNCATION_RANGE[0], le=TRUNCATION_RANGE[1],
                              description="psi for the scored samples")
    kid_subsets: int = Field(default=100, ge=1)
    kid_subset_size: int = Field(default=1000, ge=2, description="capped by the smaller set")
    pr_k: int = Field(default=3, ge=1, description="k of the k-NN manifolds of precision/recall")
    control_samples: int = Field(default=32, ge=1, description="avatars per attribute value")
    inception_weights: str | None = Field(
        default=None, description="local pt_inception-2015-12-05 weights file; enables standard FID")
    grid_columns: int = Field(default=8, ge=1, le=32)
    interpolation_steps: int = Field(default=8, ge=2, le=64)


# --------------------------------------------------------------------------------------------
# Register (MLflow)
# --------------------------------------------------------------------------------------------

class Gate(Strict):
    """An absolute bound a metric must meet before a version may become champion."""

    min: float | None = None
    max: float | None = None


class RegisterConfig(Strict):
    model_name: str = Field(default="moe-generator", min_length=1)
    experiment: str = Field(default="moepipe", min_length=1)
    tracking_uri: str = Field(
        default="sqlite:///mlflow.db", description="used when MLFLOW_TRACKING_URI is not set")
    artifact_location: str = Field(
        default="mlartifacts", description="artifact root of a new experiment in the embedded store")
    primary_metric: str = Field(default="fd", min_length=1, description="a key of metrics.json")
    direction: Literal["minimize", "maximize"] = "minimize"
    min_improvement: float = Field(
        default=0.0, ge=0, description="absolute amount the primary metric must beat the champion by")
    gates: dict[str, Gate] = Field(default_factory=dict, description="metric -> {min, max}")

    def resolved_tracking_uri(self) -> str:
        """$MLFLOW_TRACKING_URI when set, else tracking_uri: the one rule of every MLflow caller."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri
