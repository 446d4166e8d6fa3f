"""Per-image checks, calibrated on the synthetic gallery's flat-shaded avatars."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from moepipe.config import CurateConfig, SyntheticSource
from moepipe.curate import checks
from moepipe.curate.checks import Rejection, image_stats, line_art
from moepipe.images import encode_png
from moepipe.scrape.sources.synthetic.gallery import clean_post_image, make_monochrome
from moepipe.scrape.sources.synthetic.render import render_non_avatar

CFG = CurateConfig()


def _avatars(count: int, seed: int = 11) -> list[Image.Image]:
    """Clean gallery avatars as stored (PNG or, for some, JPEG), decoded."""
    source = SyntheticSource(kind="synthetic", seed=seed, limit=count)
    return [checks.decode(clean_post_image(source, index)[2]) for index in range(count)]


@pytest.fixture(scope="module")
def avatars() -> list[Image.Image]:
    return _avatars(24)


def _verdict(image: Image.Image, cfg: CurateConfig = CFG) -> str:
    """'kept' or the rejection reason of the content checks, on the centre square."""
    side = min(image.size)
    square = image.crop(((image.width - side) // 2, (image.height - side) // 2,
                         (image.width + side) // 2, (image.height + side) // 2))
    stats = image_stats(square)
    try:
        checks.check_content(stats, cfg)
        checks.check_layout(stats, cfg)
    except Rejection as rejection:
        return rejection.reason
    return "kept"


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_rating_must_be_allowed():
    checks.check_rating("general", ["general", "sensitive"])
    with pytest.raises(Rejection) as caught:
        checks.check_rating("explicit", ["general", "sensitive"])
    assert caught.value.reason == "rating"
    with pytest.raises(Rejection):
        checks.check_rating(None, ["general"])


def test_broken_files_are_corrupt_and_whole_files_decode(avatars):
    data = encode_png(avatars[0])
    assert checks.decode(data).size == (128, 128)
    for broken in (data[: len(data) // 2], data[:40] + bytes(200), b"not an image at all"):
        with pytest.raises(Rejection) as caught:
            checks.decode(broken)
        assert caught.value.reason == "corrupt"


@pytest.mark.parametrize("size, reason", [((40, 200), "too_small"), ((63, 64), "too_small"),
                                          ((300, 100), "bad_aspect"), ((64, 64), None), ((250, 100), None)])
def test_geometry(size, reason):
    if reason is None:
        checks.check_geometry(*size, CFG)
        return
    with pytest.raises(Rejection) as caught:
        checks.check_geometry(*size, CFG)
    assert caught.value.reason == reason


def test_clean_avatars_pass_also_recompressed_or_at_other_resolutions(avatars):
    variants = []
    for image in avatars:
        variants += [image, _jpeg(image, 60), image.resize((400, 400), Image.Resampling.LANCZOS),
                     image.resize((96, 96), Image.Resampling.LANCZOS)]
    verdicts = [_verdict(v) for v in variants]
    assert verdicts.count("kept") == len(variants), verdicts


def test_greyscale_sketches_and_line_art_are_monochrome_even_as_jpeg(avatars):
    rng = np.random.default_rng(0)
    monochrome = [make_monochrome(image, rng) for image in avatars[:12]]
    assert {_verdict(image) for image in monochrome} == {"monochrome"}
    assert {_verdict(_jpeg(image, 70)) for image in monochrome} == {"monochrome"}


def test_blur_flat_fills_and_noise_are_low_information(avatars):
    blurred = [image.filter(ImageFilter.GaussianBlur(2)) for image in avatars[:8]]
    assert {_verdict(image) for image in blurred} == {"low_information"}
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    gradient = Image.fromarray(np.tile(np.linspace(60, 250, 128, dtype=np.uint8)[:, None, None], (1, 128, 3))
                               * np.array([1, 0, 1], np.uint8))
    for image in (Image.new("RGB", (128, 128), (250, 200, 210)), noise, gradient):
        assert _verdict(image) == "low_information"


def test_scenery_shapes_and_text_pages_are_refused(avatars):
    verdicts = [_verdict(render_non_avatar(128, np.random.default_rng(seed))) for seed in range(24)]
    assert "kept" not in verdicts
    assert verdicts.count("not_avatar") >= 5  # text pages are detailed, only the line test stops them


def test_line_art_counts_thin_dark_lines_not_thick_bars():
    canvas = Image.new("L", (128, 128), 255)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((10, 20, 117, 27), fill=0)    # an 8 px bar: text block, not a line
    assert line_art(np.asarray(canvas, np.float32)) == 0.0
    draw.line((10, 64, 117, 64), fill=0, width=1)   # 108 px of 1 px outline
    draw.line((10, 90, 117, 90), fill=40, width=2)   # counts twice: the measure is line pixels
    assert line_art(np.asarray(canvas, np.float32)) == pytest.approx(3 * 108 / 128, rel=0.1)


def test_thresholds_follow_config(avatars):
    image = avatars[0]
    stats = image_stats(image)
    def verdict_with(**update):
        return _verdict(image, CFG.model_copy(update=update))

    assert verdict_with(mono_max_chroma=stats.colourfulness + 1) == "monochrome"
    assert verdict_with(min_colors=stats.colors + 1) == "low_information"
    assert verdict_with(min_edge_energy=stats.edge_energy + 1) == "low_information"
    assert verdict_with(min_line_art=stats.line_art + 1) == "not_avatar"
    assert verdict_with() == "kept"
