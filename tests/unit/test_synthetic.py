"""The procedural chibi gallery: renderer, attribute control, dirt injection and ground truth."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import replace

import imagehash
import numpy as np
import pytest
from PIL import Image

from moepipe.config import DirtRates, LabelsConfig, SyntheticSource
from moepipe.images import ImageError, decode_rgb, read_header, sha256_hex, sniff_kind
from moepipe.scrape.sources.synthetic import (
    ACCESSORIES,
    EXPRESSIONS,
    EYE_COLORS,
    GENDERS,
    HAIR_COLORS,
    HAIRSTYLES,
    AvatarSpec,
    iter_posts,
    post_at,
    render_avatar,
    render_non_avatar,
    sample_spec,
)
from moepipe.scrape.sources.synthetic.gallery import DIRT_KINDS, dirt_counts
from moepipe.scrape.sources.synthetic.preview import preview_specs

BASE = AvatarSpec("brown_hair", "short_hair", "blue_eyes", "smile", "1girl")
GROUPS = LabelsConfig().groups
VOCABULARY = set(LabelsConfig().vocabulary)


def pixels(spec: AvatarSpec, seed: int = 0, size: int = 128) -> np.ndarray:
    return np.asarray(render_avatar(spec, size, np.random.default_rng(seed)), dtype=np.int16)


def changed_fraction(a: np.ndarray, b: np.ndarray, threshold: int = 40) -> float:
    return float((np.abs(a - b).max(axis=-1) > threshold).mean())


def nearest(color: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = ((np.array([palette[n] for n in names], dtype=float) - color) ** 2).sum(axis=1)
    return names[int(np.argmin(distances))]


@pytest.fixture(scope="module")
def gallery() -> list:
    cfg = SyntheticSource(kind="synthetic", limit=200, seed=3)
    return list(iter_posts(cfg, "synthetic"))


def by_dirt(posts: list, kind: str | None) -> list:
    return [p for p in posts if p.extra["truth"]["dirt"] == kind]


# --------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------

def test_palettes_cover_exactly_the_default_vocabulary() -> None:
    assert set(HAIR_COLORS) == set(GROUPS["hair_color"].tags)
    assert set(HAIRSTYLES) == set(GROUPS["hairstyle"].tags)
    assert set(EYE_COLORS) == set(GROUPS["eye_color"].tags)
    assert set(EXPRESSIONS) == set(GROUPS["expression"].tags)
    assert set(GENDERS) == set(GROUPS["gender"].tags)
    assert set(ACCESSORIES) == set(GROUPS["accessories"].tags)
    assert GROUPS["extras"].tags == ["blush"]


def test_render_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    spec = replace(BASE, accessories=("glasses", "hat"), blush=True)
    first = render_avatar(spec, 96, np.random.default_rng(11))
    assert first.mode == "RGB" and first.size == (96, 96)
    assert np.array_equal(np.asarray(first), pixels(spec, 11, 96))
    assert not np.array_equal(pixels(spec, 11, 96), pixels(spec, 12, 96))


def test_sample_spec_is_deterministic_and_varied() -> None:
    specs = [sample_spec(np.random.default_rng(i)) for i in range(300)]
    assert specs == [sample_spec(np.random.default_rng(i)) for i in range(300)]
    for attribute, values in (("hair_color", HAIR_COLORS), ("hairstyle", HAIRSTYLES), ("eye_color", EYE_COLORS),
                              ("expression", EXPRESSIONS), ("gender", GENDERS)):
        assert {getattr(s, attribute) for s in specs} == set(values), attribute
    assert {a for s in specs for a in s.accessories} == set(ACCESSORIES)
    assert any(s.blush for s in specs) and not all(s.blush for s in specs)


def test_tags_match_the_spec() -> None:
    spec = AvatarSpec("pink_hair", "twintails", "green_eyes", "laughing", "1girl", ("hat", "cat_ears"), blush=True)
    expected = ["pink_hair", "twintails", "green_eyes", "laughing", "1girl", "cat_ears", "hat", "blush"]
    assert spec.attributes() == expected
    tags = spec.tags()
    assert set(spec.attributes()) <= set(tags) and {"solo", "chibi"} <= set(tags)
    assert len(tags) == len(set(tags))
    for i in range(50):
        sampled = sample_spec(np.random.default_rng(i))
        assert set(sampled.attributes()) <= VOCABULARY
        assert set(sampled.tags()) & VOCABULARY == set(sampled.attributes())


def test_spec_rejects_names_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="hair_color"):
        AvatarSpec("grey_hair", "short_hair", "blue_eyes", "smile", "1girl")
    with pytest.raises(ValueError, match="accessories"):
        AvatarSpec("black_hair", "short_hair", "blue_eyes", "smile", "1girl", ("scarf",))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_hair_colour_is_the_colour_that_changes(seed: int) -> None:
    style = HAIRSTYLES[seed]
    references = {r: pixels(replace(BASE, hair_color=r, hairstyle=style), seed) for r in ("green_hair", "red_hair")}
    for hair in HAIR_COLORS:
        image = pixels(replace(BASE, hair_color=hair, hairstyle=style), seed)
        reference = references["red_hair" if hair == "green_hair" else "green_hair"]
        changed = np.abs(image - reference).max(axis=-1) > 40
        assert changed.mean() > 0.1, hair  # hair is a large part of a chibi
        assert nearest(np.median(image[changed], axis=0), HAIR_COLORS) == hair


@pytest.mark.parametrize("seed", [0, 5, 7])
def test_eye_colour_is_the_colour_that_changes(seed: int) -> None:
    reference = pixels(replace(BASE, eye_color="brown_eyes"), seed)
    for eyes in EYE_COLORS:
        if eyes == "brown_eyes":
            continue
        image = pixels(replace(BASE, eye_color=eyes), seed)
        changed = np.abs(image - reference).max(axis=-1) > 40
        assert changed.mean() > 0.003, eyes
        assert nearest(image[changed].mean(axis=0), EYE_COLORS) == eyes


@pytest.mark.parametrize("attribute,values", [
    ("hairstyle", HAIRSTYLES), ("expression", EXPRESSIONS), ("gender", GENDERS),
])
def test_every_value_of_an_attribute_looks_different(attribute: str, values: tuple[str, ...]) -> None:
    for seed in (0, 1):
        images = [pixels(replace(BASE, **{attribute: value}), seed) for value in values]
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                assert changed_fraction(images[i], images[j]) > 0.003, (values[i], values[j])


def test_hairstyles_differ_in_silhouette() -> None:
    # Long hair and twintails reach below the chin beside the shoulders; short hair does not.
    def side_hair(style: str) -> float:
        image = pixels(replace(BASE, hair_color="black_hair", hairstyle=style), 4)
        sides = np.concatenate([image[90:115, 4:26], image[90:115, 102:124]]).reshape(-1, 3)
        return float((sides.sum(axis=1) < 300).mean())  # dark hair pixels

    assert side_hair("long_hair") > side_hair("short_hair") + 0.05
    assert side_hair("twintails") > side_hair("short_hair") + 0.05


@pytest.mark.parametrize("accessory", ACCESSORIES)
def test_each_accessory_adds_pixels(accessory: str) -> None:
    for seed in (0, 1, 2):
        plain = pixels(BASE, seed)
        worn = pixels(replace(BASE, accessories=(accessory,)), seed)
        assert changed_fraction(plain, worn) > 0.008


def test_blush_reddens_the_cheeks() -> None:
    plain, blushing = pixels(BASE, 0), pixels(replace(BASE, blush=True), 0)
    changed = np.abs(plain - blushing).max(axis=-1) > 15
    assert changed.mean() > 0.003
    redness = lambda a: (a[changed][:, 0] - a[changed][:, 1:].mean(axis=1)).mean()  # noqa: E731 - a one-line formula, named for the assertions below
    assert redness(blushing) > redness(plain) + 10


def test_non_avatar_is_colourful_and_deterministic() -> None:
    first = render_non_avatar(64, np.random.default_rng(5))
    assert first.size == (64, 64) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(render_non_avatar(64, np.random.default_rng(5))))
    assert np.asarray(first).std() > 10


def test_preview_covers_every_attribute_value() -> None:
    specs = preview_specs()
    assert len(specs) == 48
    shown = {tag for s in specs for tag in s.attributes()}
    assert shown == VOCABULARY


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------

def test_gallery_is_deterministic_in_its_seed() -> None:
    cfg = SyntheticSource(kind="synthetic", limit=12, seed=3)
    again = [(p.post_id, p.data, p.tags, p.extra) for p in iter_posts(cfg, "synthetic")]
    assert again == [(p.post_id, p.data, p.tags, p.extra) for p in iter_posts(cfg, "synthetic")]
    other = [p.data for p in iter_posts(cfg.model_copy(update={"seed": 4}), "synthetic")]
    assert sum(a[1] != b for a, b in zip(again, other)) >= 10


def test_each_post_is_independent_of_iteration_order(gallery: list) -> None:
    cfg = SyntheticSource(kind="synthetic", limit=200, seed=3)
    for index in (199, 0, 57, 120):
        alone = post_at(cfg, "synthetic", index)
        assert (alone.data, alone.tags, alone.extra) == (gallery[index].data, gallery[index].tags, gallery[index].extra)


def test_posts_carry_ids_source_rating_and_truth(gallery: list) -> None:
    assert [p.post_id for p in gallery] == [str(i) for i in range(200)]
    for post in gallery:
        assert post.source == "synthetic" and post.rating == "general" and post.url is None and post.data
        truth = post.extra["truth"]
        assert set(truth) == {"dirt", "of", "attributes"}
        assert truth["dirt"] in (None, *DIRT_KINDS)
        assert set(truth["attributes"]) <= VOCABULARY
        assert set(truth["attributes"]) <= set(post.tags)


def test_dirt_counts_match_the_rates(gallery: list) -> None:
    rates = DirtRates()
    counts = Counter(p.extra["truth"]["dirt"] for p in gallery)
    for kind in DIRT_KINDS:
        assert counts[kind] == round(getattr(rates, kind) * 200), kind
    assert counts[None] == 200 - sum(counts[k] for k in DIRT_KINDS)
    custom = SyntheticSource(kind="synthetic", limit=40, dirt=DirtRates(duplicate=0.25, corrupt=0.0))
    assert dirt_counts(custom)["duplicate"] == 10 and dirt_counts(custom)["corrupt"] == 0


def test_tiny_gallery_keeps_a_clean_first_post() -> None:
    # Rounding both rates up would ask for two copies in a gallery of two.
    cfg = SyntheticSource(kind="synthetic", limit=2, dirt=DirtRates(duplicate=0.3, near_duplicate=0.3))
    posts = list(iter_posts(cfg, "s"))
    assert len(posts) == 2 and posts[0].extra["truth"]["dirt"] is None
    assert posts[1].extra["truth"]["of"] == "0"


def test_clean_posts_are_full_size_avatars_in_png_and_jpeg(gallery: list) -> None:
    clean = by_dirt(gallery, None)
    kinds = Counter(sniff_kind(p.data[:16]) for p in clean)
    assert kinds["png"] > kinds["jpeg"] > 0
    for post in clean[:40]:
        assert decode_rgb(post.data).size == (128, 128)
        assert post.tags[:5] == post.extra["truth"]["attributes"][:5]


def _original(posts: list, post) -> object:
    original = posts[int(post.extra["truth"]["of"])]
    assert int(original.post_id) < int(post.post_id)
    assert original.extra["truth"]["dirt"] is None
    return original


def test_duplicates_repeat_an_earlier_clean_post_byte_for_byte(gallery: list) -> None:
    duplicates = by_dirt(gallery, "duplicate")
    assert duplicates
    for post in duplicates:
        original = _original(gallery, post)
        assert post.data == original.data and post.post_id != original.post_id
        assert post.extra["truth"]["attributes"] == original.extra["truth"]["attributes"]


def test_near_duplicates_are_close_in_phash_but_not_in_bytes(gallery: list) -> None:
    near = by_dirt(gallery, "near_duplicate")
    assert near
    for post in near:
        original = _original(gallery, post)
        assert sha256_hex(post.data) != sha256_hex(original.data)
        copy_image, original_image = decode_rgb(post.data), decode_rgb(original.data)
        assert imagehash.phash(copy_image) - imagehash.phash(original_image) <= 6
        # Never larger than the original: curation keeps the largest of a group.
        assert copy_image.width <= original_image.width


@pytest.mark.parametrize("kind", ["truncated", "corrupt"])
def test_broken_files_keep_their_magic_bytes_but_do_not_decode(gallery: list, kind: str) -> None:
    posts = by_dirt(gallery, kind)
    assert posts
    for post in posts:
        assert sniff_kind(post.data[:16]) in ("png", "jpeg")
        if kind == "truncated":
            assert read_header(post.data, 10**8).width == 128  # the header survives the cut
        with pytest.raises(ImageError):
            decode_rgb(post.data)
        with pytest.raises((OSError, SyntaxError, ValueError)):  # PIL's ways of refusing a broken file
            Image.open(io.BytesIO(post.data)).load()


def test_tiny_posts_are_small_valid_avatars(gallery: list) -> None:
    for post in by_dirt(gallery, "tiny"):
        image = decode_rgb(post.data)
        assert 24 <= image.width < 64 and image.width == image.height
        assert np.asarray(image).std() > 10


def test_monochrome_posts_have_no_chroma(gallery: list) -> None:
    posts = by_dirt(gallery, "monochrome")
    assert posts
    for post in posts:
        rgb = np.asarray(decode_rgb(post.data), dtype=np.int16)
        assert np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max() <= 1
        assert rgb.std() > 10  # a picture, not a blank page
        assert "monochrome" in post.tags
        assert not set(post.extra["truth"]["attributes"]) & (set(HAIR_COLORS) | set(EYE_COLORS))


def test_non_avatars_decode_and_have_no_attributes(gallery: list) -> None:
    posts = by_dirt(gallery, "non_avatar")
    assert posts
    for post in posts:
        assert decode_rgb(post.data).size == (128, 128)
        assert post.extra["truth"]["attributes"] == []
