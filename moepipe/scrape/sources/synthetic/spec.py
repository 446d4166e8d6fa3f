"""What a synthetic avatar shows: its attributes as booru tags, their palettes, and sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

# Base colour of each hair tag; shadow, line and shine colours are derived from it. Hues are
# spread so that a classifier (or a person) can name each one from a 64 px thumbnail.
HAIR_COLORS: dict[str, RGB] = {
    "black_hair": (52, 48, 66),
    "brown_hair": (128, 80, 48),
    "blonde_hair": (250, 218, 112),
    "red_hair": (212, 44, 50),
    "orange_hair": (250, 142, 46),
    "blue_hair": (66, 118, 226),
    "pink_hair": (252, 154, 196),
    "purple_hair": (148, 88, 204),
    "green_hair": (74, 178, 98),
    "white_hair": (238, 238, 246),
}

EYE_COLORS: dict[str, RGB] = {
    "blue_eyes": (48, 112, 236),
    "red_eyes": (214, 36, 52),
    "green_eyes": (36, 164, 84),
    "brown_eyes": (136, 82, 40),
    "purple_eyes": (146, 70, 208),
    "yellow_eyes": (238, 188, 32),
}

HAIRSTYLES = ("short_hair", "long_hair", "twintails", "ponytail", "bob_cut")
EXPRESSIONS = ("smile", "expressionless", "laughing", "closed_eyes", "surprised")
GENDERS = ("1girl", "1boy")
ACCESSORIES = ("hair_ribbon", "glasses", "cat_ears", "hat")

# Tags every clean avatar carries whatever its attributes, as a booru would tag such a picture.
COMMON_TAGS = ("solo", "chibi", "looking_at_viewer", "portrait", "simple_background", "pastel_background")
OUTFIT_TAGS = {"1girl": ("school_uniform", "serafuku", "sailor_collar"), "1boy": ("shirt", "necktie", "jacket")}

# Hairstyle tendencies by gender; boys rarely get twintails, so the weights keep the pair legal
# but make the labels correlate the way they do on real boorus.
_STYLE_WEIGHTS = {
    "1girl": (0.18, 0.26, 0.20, 0.18, 0.18),
    "1boy": (0.62, 0.08, 0.0, 0.14, 0.16),
}
_ACCESSORY_RATES = {
    "1girl": {"hair_ribbon": 0.25, "glasses": 0.14, "cat_ears": 0.16, "hat": 0.12},
    "1boy": {"hair_ribbon": 0.04, "glasses": 0.2, "cat_ears": 0.1, "hat": 0.14},
}
_BLUSH_RATE = {"1girl": 0.45, "1boy": 0.2}


@dataclass(frozen=True)
class AvatarSpec:
    """The attributes of one avatar, each named by a tag of the default label vocabulary."""

    hair_color: str
    hairstyle: str
    eye_color: str
    expression: str
    gender: str
    accessories: tuple[str, ...] = ()
    blush: bool = False

    def __post_init__(self) -> None:
        checks = (
            ("hair_color", self.hair_color, tuple(HAIR_COLORS)),
            ("hairstyle", self.hairstyle, HAIRSTYLES),
            ("eye_color", self.eye_color, tuple(EYE_COLORS)),
            ("expression", self.expression, EXPRESSIONS),
            ("gender", self.gender, GENDERS),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        unknown = [tag for tag in self.accessories if tag not in ACCESSORIES]
        if unknown:
            raise ValueError(f"unknown accessories {unknown}; known: {', '.join(ACCESSORIES)}")
        # Canonical order, so equal sets make equal (and equally hashed) specs.
        object.__setattr__(self, "accessories", tuple(t for t in ACCESSORIES if t in self.accessories))

    def has(self, accessory: str) -> bool:
        return accessory in self.accessories

    def attributes(self) -> list[str]:
        """The vocabulary tags this avatar shows, in vocabulary group order."""
        extras = ["blush"] if self.blush else []
        return [self.hair_color, self.hairstyle, self.eye_color, self.expression, self.gender,
                *self.accessories, *extras]

    def tags(self) -> list[str]:
        """Booru-style tags of the picture: the attributes plus tags every avatar shares."""
        return [*self.attributes(), *COMMON_TAGS, *OUTFIT_TAGS[self.gender]]


def _choice(rng: np.random.Generator, options: tuple[str, ...], weights: tuple[float, ...] | None = None) -> str:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def sample_spec(rng: np.random.Generator) -> AvatarSpec:
    """Draw random attributes; consumes a fixed number of draws so later draws stay aligned."""
    gender = _choice(rng, GENDERS, (0.6, 0.4))
    hairstyle = _choice(rng, HAIRSTYLES, _STYLE_WEIGHTS[gender])
    hair_color = _choice(rng, tuple(HAIR_COLORS))
    eye_color = _choice(rng, tuple(EYE_COLORS))
    expression = _choice(rng, EXPRESSIONS)
    rolls = rng.random(len(ACCESSORIES) + 1)
    rates = _ACCESSORY_RATES[gender]
    accessories = tuple(tag for tag, roll in zip(ACCESSORIES, rolls) if roll < rates[tag])
    blush = bool(rolls[-1] < _BLUSH_RATE[gender])
    return AvatarSpec(hair_color, hairstyle, eye_color, expression, gender, accessories, blush)
