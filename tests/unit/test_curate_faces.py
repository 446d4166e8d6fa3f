"""Face selection, square crops with margin, edge padding, and the animeface wiring."""

import numpy as np
import pytest
from PIL import Image

from moepipe.config import FacesConfig
from moepipe.curate import faces
from moepipe.curate.faces import FaceBox, crop_square, detect_face, face_square, normalised_crop, portrait_square


def _fake_detector(monkeypatch, found):
    seen = []

    def detector(image):
        seen.append(image.size)
        return list(found)

    monkeypatch.setattr(faces, "run_detector", detector)
    return seen


def test_best_face_must_pass_likelihood_and_size(monkeypatch):
    image = Image.new("RGB", (400, 300))
    _fake_detector(monkeypatch, [
        FaceBox(10, 10, 100, 100, 0.40),   # unlikely
        FaceBox(10, 10, 20, 20, 0.99),     # too small
        FaceBox(200, 50, 60, 60, 0.70),
        FaceBox(100, 50, 80, 80, 0.90),    # the one
    ])
    cfg = FacesConfig(mode="animeface", likelihood=0.5, min_face=32)
    assert detect_face(image, cfg) == FaceBox(100, 50, 80, 80, 0.90)
    _fake_detector(monkeypatch, [FaceBox(10, 10, 100, 100, 0.40)])
    assert detect_face(image, cfg) is None


def test_large_images_are_detected_downscaled_and_boxes_scaled_back(monkeypatch):
    seen = _fake_detector(monkeypatch, [FaceBox(100, 50, 40, 40, 0.9)])
    face = detect_face(Image.new("RGB", (2048, 1024)), FacesConfig(mode="animeface", detect_side=512))
    assert seen == [(512, 256)]
    assert face == FaceBox(400, 200, 160, 160, 0.9)   # 40 px at 1/4 scale is 160 px, ≥ min_face


def test_face_square_has_margin_and_slides_inside_the_image():
    face = FaceBox(100, 100, 50, 50, 0.9)
    assert face_square(face, 0.5, 400, 400) == (75, 75, 100)   # centred: 25 px margin each side
    assert face_square(FaceBox(0, 0, 50, 50, 0.9), 0.5, 400, 400) == (0, 0, 100)   # slid right/down
    assert face_square(FaceBox(350, 350, 50, 50, 0.9), 0.5, 400, 400) == (300, 300, 100)
    # Bigger than the image's height: centred over the height, padded there.
    assert face_square(FaceBox(100, 10, 60, 60, 0.9), 1.0, 400, 120) == (40, -30, 180)


def test_crop_square_pads_with_the_edge_colour():
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[0, :] = (255, 0, 0)      # top row red
    pixels[-1, :] = (0, 0, 255)     # bottom row blue
    square = np.asarray(crop_square(Image.fromarray(pixels), 0, -10, 60))
    assert square.shape == (60, 60, 3)
    assert (square[:10] == (255, 0, 0)).all() and (square[-10:] == (0, 0, 255)).all()
    assert (square[11:49] == pixels[1:39]).all()


def test_normalised_crop_centres_portraits_and_frames_faces():
    assert portrait_square(300, 200) == (50, 0, 200)
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    image.paste((255, 0, 0), (200, 20, 260, 80))  # the "face"
    centre = np.asarray(normalised_crop(image, None, 0.5, 64))
    framed = np.asarray(normalised_crop(image, FaceBox(200, 20, 60, 60, 0.9), 0.25, 64))
    assert centre.shape == framed.shape == (64, 64, 3)
    red = (framed[..., 0] > 200) & (framed[..., 1] < 50)
    assert 0.40 < red.mean() < 0.50        # 60² face in a 90² square: 44%
    assert red[32, 32] and not red[2, 2]   # face in the middle, margin around it


def test_animeface_finds_the_face_of_synthetic_chibi_avatars():
    pytest.importorskip("animeface")
    from moepipe.config import SyntheticSource
    from moepipe.scrape.sources.synthetic.gallery import clean_post_image

    assert faces.run_detector(Image.new("RGB", (128, 128), (255, 255, 255))) == []
    source = SyntheticSource(kind="synthetic", seed=0, limit=12)
    cfg = FacesConfig(mode="animeface")
    found = [detect_face(clean_post_image(source, index)[1], cfg) for index in range(12)]
    assert sum(face is not None for face in found) >= 9   # ~93% on this gallery, see the curate report
    for face in filter(None, found):
        # The head (radius ~37 px) is drawn centred at (64, 60); eyes to chin sit below its centre.
        assert 40 <= face.width <= 90 and face.likelihood >= cfg.likelihood
        assert abs(face.x + face.width / 2 - 64) < 12 and 60 <= face.y + face.height / 2 <= 88
