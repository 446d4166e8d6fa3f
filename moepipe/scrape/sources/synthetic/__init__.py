"""The embedded default source: procedurally drawn chibi avatars with known attributes and dirt."""

from moepipe.scrape.sources.synthetic.gallery import iter_posts, plan_gallery, post_at
from moepipe.scrape.sources.synthetic.render import render_avatar, render_non_avatar
from moepipe.scrape.sources.synthetic.spec import (
    ACCESSORIES,
    EXPRESSIONS,
    EYE_COLORS,
    GENDERS,
    HAIR_COLORS,
    HAIRSTYLES,
    AvatarSpec,
    sample_spec,
)

__all__ = [
    "ACCESSORIES", "EXPRESSIONS", "EYE_COLORS", "GENDERS", "HAIR_COLORS", "HAIRSTYLES", "AvatarSpec",
    "iter_posts", "plan_gallery", "post_at", "render_avatar", "render_non_avatar", "sample_spec",
]
