"""Params of the data stages: labels, scrape, curate, preprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from moepipe.config.base import Strict

# --------------------------------------------------------------------------------------------
# Shared: the image side every stage from preprocess on works at
# --------------------------------------------------------------------------------------------

# Powers of two, because the networks double a 4x4 start (generators) or halve down to 4x4
# (discriminators, the attribute classifier) once per block. 16 to 256 px is the range the
# networks are built and tested for: below it an avatar's eyes and accessories are a pixel or
# two, above it the DCGAN's widest layer keeps doubling (about 109 M generator parameters at
# 512 px with the default width).
SUPPORTED_RESOLUTIONS = (16, 32, 64, 128, 256)


def check_resolution(value: int) -> int:
    """The one rule for ``preprocess.resolution`` and every network built for it; returns value.

    Raises ValueError with one line naming the value and the rule.
    """
    if isinstance(value, bool) or value not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"resolution must be a power of two from {SUPPORTED_RESOLUTIONS[0]} to "
                         f"{SUPPORTED_RESOLUTIONS[-1]} px (got {value!r})")
    return int(value)


# --------------------------------------------------------------------------------------------
# Shared: the label vocabulary
# --------------------------------------------------------------------------------------------

class LabelGroup(Strict):
    """One attribute group: its booru tags, and whether several may hold at once."""

    tags: list[str] = Field(min_length=1)
    multi: bool = False


def _default_groups() -> dict[str, LabelGroup]:
    return {
        "hair_color": LabelGroup(tags=[
            "black_hair", "brown_hair", "blonde_hair", "red_hair", "orange_hair", "blue_hair",
            "pink_hair", "purple_hair", "green_hair", "white_hair",
        ]),
        "hairstyle": LabelGroup(tags=["short_hair", "long_hair", "twintails", "ponytail", "bob_cut"]),
        "eye_color": LabelGroup(tags=[
            "blue_eyes", "red_eyes", "green_eyes", "brown_eyes", "purple_eyes", "yellow_eyes",
        ]),
        "expression": LabelGroup(tags=["smile", "expressionless", "laughing", "closed_eyes", "surprised"]),
        "gender": LabelGroup(tags=["1girl", "1boy"]),
        "accessories": LabelGroup(tags=["hair_ribbon", "glasses", "cat_ears", "hat"], multi=True),
        "extras": LabelGroup(tags=["blush"], multi=True),
    }


def _default_aliases() -> dict[str, str]:
    return {
        "blond_hair": "blonde_hair",
        "grey_hair": "white_hair",
        "silver_hair": "white_hair",
        "bob": "bob_cut",
        "twin_tails": "twintails",
        "ribbon": "hair_ribbon",
        "eyewear": "glasses",
        ":d": "laughing",
        "^_^": "closed_eyes",
        ":o": "surprised",
        "animal_ears": "cat_ears",
    }


class LabelsConfig(Strict):
    """Tag vocabulary turned into multi-hot attribute vectors (shared by curate and later stages)."""

    groups: dict[str, LabelGroup] = Field(default_factory=_default_groups)
    aliases: dict[str, str] = Field(default_factory=_default_aliases)

    @model_validator(mode="after")
    def _unique_tags(self) -> LabelsConfig:
        seen: dict[str, str] = {}
        for name, group in self.groups.items():
            for tag in group.tags:
                if tag in seen:
                    raise ValueError(f"tag {tag!r} appears in both {seen[tag]!r} and {name!r}")
                seen[tag] = name
        for alias, target in self.aliases.items():
            if target not in seen:
                raise ValueError(f"alias {alias!r} points to {target!r}, which is in no group")
        return self

    @property
    def vocabulary(self) -> list[str]:
        """All tags in vector order: groups in declaration order, tags in group order."""
        return [tag for group in self.groups.values() for tag in group.tags]


# --------------------------------------------------------------------------------------------
# Scrape
# --------------------------------------------------------------------------------------------

Rating = Literal["general", "sensitive", "questionable", "explicit"]


class SourceBase(Strict):
    name: str | None = Field(default=None, description="label recorded as `source`; defaults to kind")
    limit: int = Field(default=100, ge=0, description="most posts to take from this source")

    @property
    def label(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]


class DirtRates(Strict):
    """Fractions of the synthetic gallery that are deliberately bad, by kind."""

    duplicate: float = Field(default=0.05, ge=0, le=1)
    near_duplicate: float = Field(default=0.05, ge=0, le=1)
    tiny: float = Field(default=0.03, ge=0, le=1)
    monochrome: float = Field(default=0.03, ge=0, le=1)
    non_avatar: float = Field(default=0.03, ge=0, le=1)
    truncated: float = Field(default=0.02, ge=0, le=1)
    corrupt: float = Field(default=0.02, ge=0, le=1)

    @model_validator(mode="after")
    def _total(self) -> DirtRates:
        total = sum(self.model_dump().values())
        if total >= 0.9:
            raise ValueError(f"dirt rates add up to {total:.2f}; they must stay below 0.9")
        return self


class SyntheticSource(SourceBase):
    kind: Literal["synthetic"]
    seed: int = 0
    resolution: int = Field(default=128, ge=32, le=1024, description="side of a clean avatar, px")
    dirt: DirtRates = Field(default_factory=DirtRates)


class DanbooruSource(SourceBase):
    kind: Literal["danbooru"]
    url: str = "https://danbooru.donmai.us"
    tags: str = Field(default="", description="tag query, e.g. 'chibi solo'")
    page_size: int = Field(default=200, ge=1, le=200)
    login: str | None = None
    api_key_env: str | None = Field(default=None, description="environment variable with the API key")


class GelbooruSource(SourceBase):
    kind: Literal["gelbooru"]
    url: str = "https://gelbooru.com"
    tags: str = ""
    page_size: int = Field(default=100, ge=1, le=100)
    api_key_env: str | None = None
    user_id_env: str | None = None


class UrlsSource(SourceBase):
    kind: Literal["urls"]
    path: Path = Field(description="txt (one url a line), csv or jsonl with a `url` column")
    url_col: str = "url"
    tags_col: str = "tags"


class FolderSource(SourceBase):
    kind: Literal["folder"]
    path: Path
    recursive: bool = True


Source = Annotated[
    SyntheticSource | DanbooruSource | GelbooruSource | UrlsSource | FolderSource,
    Field(discriminator="kind"),
]


class ScrapeConfig(Strict):
    sources: list[Source] = Field(
        default_factory=lambda: [SyntheticSource(kind="synthetic", limit=600)], min_length=1
    )
    user_agent: str = "moepipe/0.1 (+https://github.com/moepipe/moepipe; avatar-dataset-builder)"
    ratings: list[Rating] = Field(default_factory=lambda: ["general", "sensitive"], min_length=1)
    rate_per_host: float = Field(default=2.0, ge=0, description="requests per second; 0 = no limit")
    concurrency: int = Field(default=4, ge=1, le=64)
    max_bytes: int = Field(default=20_000_000, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=1024)
    timeout_s: float = Field(default=20.0, gt=0, description="connect/read timeout and whole-body deadline")
    retries: int = Field(default=4, ge=0, le=20)
    backoff_s: float = Field(default=0.5, ge=0)
    retry_after_cap_s: float = Field(default=60.0, ge=0)
    max_redirects: int = Field(default=5, ge=0, le=20)
    respect_robots: bool = True
    exclude: Path | None = Field(
        default=None,
        description="opt-out list: one `post:<source>:<id>`, `url:<glob>`, `artist:<name>`, `md5:<hex>` or "
        "`sha256:<hex>` a line (moepipe/exclude.py); scrape and curate drop what it names",
    )
    allow_private: list[str] = Field(
        default_factory=list,
        description="addresses or networks (CIDR) allowed although loopback/private/link-local",
    )

    @field_validator("allow_private")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value


# --------------------------------------------------------------------------------------------
# Curate
# --------------------------------------------------------------------------------------------

class FacesConfig(Strict):
    mode: Literal["none", "animeface"] = Field(
        default="none", description="'none' for sources that are already portraits"
    )
    likelihood: float = Field(default=0.5, ge=0, le=1)
    min_face: int = Field(default=32, ge=8, description="smallest face side kept, px")
    margin: float = Field(default=0.6, ge=0, le=3, description="extra border around the face, x face size")
    detect_side: int = Field(
        default=512, ge=64, description="longest side the detector sees, px (larger images are downscaled)"
    )


class CurateConfig(Strict):
    """Content thresholds apply to the square crop scaled to 128 px; calibrated on flat-shaded anime art."""

    min_side: int = Field(default=64, ge=8, description="smaller images are rejected, px")
    max_aspect: float = Field(default=2.5, ge=1)
    mono_max_chroma: float = Field(
        default=8.0, ge=0,
        description="CIELAB chroma of the most colourful 10% of pixels at or below which a crop is "
        "monochrome",
    )
    min_colors: int = Field(
        default=8, ge=1,
        description="fewest colours (5 bits/channel, each ≥ 0.2% of pixels); flat fills have 1-5",
    )
    min_edge_energy: float = Field(
        default=12.0, ge=0, description="mean |Laplacian| (0-255 grey) below which a crop is blurred or flat"
    )
    min_line_art: float = Field(
        default=0.7, ge=0,
        description="thin dark outline pixels per crop width below which a crop is not_avatar "
        "(require_avatar)",
    )
    phash_distance: int = Field(default=6, ge=0, le=32, description="near-duplicate pHash Hamming radius")
    near_duplicate_max_diff: float = Field(
        default=12.0, ge=0, le=255,
        description="mean |RGB difference| of the best-aligned crops (±4 px at 128 px) at or below which a "
        "pHash match is confirmed as a near duplicate; 255 trusts pHash alone",
    )
    output_size: int = Field(default=128, ge=16, le=1024, description="side of stored crops, px")
    require_avatar: bool = Field(
        default=True, description="faces.mode none: reject crops without line art (scenery, text, photos)"
    )
    faces: FacesConfig = Field(default_factory=FacesConfig)
    contact_sheet_max: int = Field(default=64, ge=0)
    workers: int = Field(default=0, ge=0, description="processes for per-image checks; 0 = one per CPU")


# --------------------------------------------------------------------------------------------
# Preprocess
# --------------------------------------------------------------------------------------------

class PreprocessConfig(Strict):
    resolution: int = Field(default=64, description="side of packed images, px (see check_resolution); "
                            "at most curate.output_size")
    hflip_p: float = Field(default=0.0, ge=0, le=1, description="probability of a (seeded) random flip")
    mirror_train: bool = Field(default=False, description="also pack a mirrored copy of every training image")
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    interpolation: Literal["area", "linear", "cubic", "lanczos"] = "area"

    @field_validator("resolution")
    @classmethod
    def _supported(cls, value: int) -> int:
        return check_resolution(value)
