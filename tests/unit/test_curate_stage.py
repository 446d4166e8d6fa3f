"""The curate stage end to end on a small hand-made raw folder."""

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from moepipe.config import CurateConfig, FacesConfig, LabelsConfig, SyntheticSource
from moepipe.curate import curate
from moepipe.curate import faces as faces_module
from moepipe.curate.faces import FaceBox
from moepipe.curate.sheets import GAP, TILE, write_contact_sheets
from moepipe.errors import UserError
from moepipe.images import encode_png
from moepipe.manifest import read_jsonl
from moepipe.scrape.sources.synthetic.gallery import clean_post_image, make_monochrome, make_near_duplicate

RATINGS = ["general", "sensitive"]
CFG = CurateConfig(workers=1, contact_sheet_max=16)


def _png(image: Image.Image) -> bytes:
    return encode_png(image)


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _write_raw(root, posts):
    """A raw folder as scrape writes it: content-addressed files plus manifest.jsonl."""
    (root / "images").mkdir(parents=True)
    lines = []
    for post_id, data, tags, rating in posts:
        sha = hashlib.sha256(data).hexdigest()
        ext = ".jpg" if data[:3] == b"\xff\xd8\xff" else ".png"
        (root / "images" / f"{sha}{ext}").write_bytes(data)
        lines.append({"file": f"images/{sha}{ext}", "sha256": sha, "md5": hashlib.md5(data).hexdigest(),
                      "source": "test", "post_id": post_id, "url": None, "tags": tags, "rating": rating,
                      "width": 0, "height": 0, "format": ext[1:], "bytes": len(data)})
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def gallery():
    source = SyntheticSource(kind="synthetic", seed=3, limit=8)
    return [clean_post_image(source, index)[1] for index in range(8)]


@pytest.fixture()
def raw(tmp_path, gallery):
    rng = np.random.default_rng(0)
    tags = ["Blond Hair", "blue_eyes", "smile", "1girl", "red_hair", "chibi"]
    posts = [
        ("1", _png(gallery[0]), tags, "general"),
        ("2", _png(gallery[1]), ["pink_hair", "twin tails"], "sensitive"),
        ("3", _jpeg(gallery[2]), [], "general"),
        ("10", _png(gallery[0]), tags, "general"),                            # same bytes as 1
        ("9", make_near_duplicate(gallery[1], rng), ["pink_hair"], "general"),  # near 2
        ("4", _png(gallery[3].resize((48, 48))), [], "general"),
        ("5", _png(make_monochrome(gallery[4], rng)), [], "general"),
        ("6", _png(gallery[5])[:300], [], "general"),
        ("7", _png(gallery[6]), [], "explicit"),
        ("8", _png(Image.new("RGB", (128, 128), (200, 220, 240))), [], "general"),
        ("11", _png(gallery[7].resize((400, 128))), [], "general"),
    ]
    _write_raw(tmp_path / "raw", posts)
    return tmp_path / "raw"


def test_missing_raw_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"curate: no raw data at .*nothing \(run `moepipe scrape` first\)"):
        curate(CFG, LabelsConfig(), RATINGS, tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="run `moepipe scrape` first"):
        curate(CFG, LabelsConfig(), RATINGS, tmp_path / "empty", tmp_path / "out")


def test_every_post_is_kept_or_rejected_for_the_right_reason(raw, tmp_path):
    out = tmp_path / "curated"
    report = curate(CFG, LabelsConfig(), RATINGS, raw, out)
    kept = read_jsonl(out / "manifest.jsonl")
    rejects = {r["post_id"]: r for r in read_jsonl(out / "rejects.jsonl")}
    assert sorted(r["post_id"] for r in kept) == ["1", "2", "3"]
    assert {k: v["reason"] for k, v in rejects.items()} == {
        "10": "duplicate", "9": "near_duplicate", "4": "too_small", "5": "monochrome", "6": "corrupt",
        "7": "rating", "8": "low_information", "11": "bad_aspect"}
    assert rejects["10"]["duplicate_of"] == {"source": "test", "post_id": "1"}   # the earlier post wins
    assert rejects["9"]["duplicate_of"] == {"source": "test", "post_id": "2"}
    summary = json.loads((out / "report.json").read_text())
    assert summary["input"] == 11 and summary["kept"] == 3 and summary["rejected_total"] == 8
    assert summary["rejected"]["near_duplicate"] == 1 and summary["rejected"]["not_avatar"] == 0
    assert report.to_json()["kept"] == 3 and report.images_per_s > 0


def test_kept_records_describe_the_stored_crop_and_keep_the_raw_fields(raw, tmp_path):
    out = tmp_path / "curated"
    curate(CFG.model_copy(update={"output_size": 64}), LabelsConfig(), RATINGS, raw, out)
    kept = read_jsonl(out / "manifest.jsonl")
    assert [r["raw_sha256"] for r in kept] == sorted(r["raw_sha256"] for r in kept)
    first = next(r for r in kept if r["post_id"] == "1")
    data = (out / first["file"]).read_bytes()
    assert first["file"] == f"images/{hashlib.sha256(data).hexdigest()}.png"
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    with Image.open(out / first["file"]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    assert (first["width"], first["height"], first["format"]) == (64, 64, "png")
    assert first["raw_file"].startswith("images/") and first["raw_sha256"] != first["sha256"]
    assert first["tags"][0] == "Blond Hair" and first["face"] is None
    labels = LabelsConfig()
    assert first["attributes"] == ["blonde_hair", "red_hair", "blue_eyes", "smile", "1girl"]
    assert [labels.vocabulary[i] for i, bit in enumerate(first["labels"]) if bit] == first["attributes"]
    summary = json.loads((out / "report.json").read_text())
    assert summary["conflicts"]["hair_color"] == 1                 # blonde and red on one post
    assert summary["label_coverage"]["hair_color"] == pytest.approx(2 / 3, abs=1e-3)
    assert summary["label_coverage"]["hairstyle"] == pytest.approx(1 / 3, abs=1e-3)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(r["file"][7:] for r in kept)


def _files(out):
    """Every output file's bytes, but report.json (it holds timings)."""
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "report.json"}


def test_rerun_is_byte_identical_removes_stale_files_and_pool_matches_inline(raw, tmp_path):
    out = tmp_path / "curated"
    curate(CFG, LabelsConfig(), RATINGS, raw, out)
    first = _files(out)
    (out / "images" / "stale.png").write_bytes(b"old")
    (out / "contact_rejected.png").unlink()
    curate(CFG.model_copy(update={"workers": 2}), LabelsConfig(), RATINGS, raw, out)
    second = _files(out)
    assert first == second
    assert not (out / ".dedup").exists()


def test_contact_sheets_show_kept_and_captioned_rejects(raw, tmp_path):
    out = tmp_path / "curated"
    curate(CFG, LabelsConfig(), RATINGS, raw, out)
    with Image.open(out / "contact_kept.png") as kept, Image.open(out / "contact_rejected.png") as rejected:
        assert kept.width > 3 * 96 and rejected.height > kept.height   # captions add a strip
        assert rejected.width >= 8 * 96   # 8 rejects in one row of 8
    curate(CFG.model_copy(update={"contact_sheet_max": 0}), LabelsConfig(), RATINGS, raw, out)
    for name in ("contact_kept.png", "contact_rejected.png"):  # dvc.yaml declares both as plots
        with Image.open(out / name) as sheet:
            assert sheet.size == (TILE + 2 * GAP, TILE + 2 * GAP)  # one tile: "sheets off"


def test_face_mode_crops_around_the_detected_face(raw, tmp_path, monkeypatch, gallery):
    def detector(image):
        # A face only in the first two avatars, found by their exact pixels.
        for index in (0, 1):
            if np.array_equal(np.asarray(image), np.asarray(gallery[index])):
                return [FaceBox(30, 20, 80, 80, 0.95)]
        return []

    monkeypatch.setattr(faces_module, "run_detector", detector)
    cfg = CFG.model_copy(update={"faces": FacesConfig(mode="animeface", margin=0.2, min_face=32)})
    out = tmp_path / "curated"
    curate(cfg, LabelsConfig(), RATINGS, raw, out)
    kept = {r["post_id"]: r for r in read_jsonl(out / "manifest.jsonl")}
    rejects = {r["post_id"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    assert sorted(kept) == ["1", "2"] and rejects["3"] == "not_avatar"
    assert kept["1"]["face"] == {"x": 30, "y": 20, "width": 80, "height": 80, "likelihood": 0.95}
    # 80 px face + 20% margin each side = the 112 px square at (14, 4), scaled to 128 px.
    expected = gallery[0].crop((14, 4, 126, 116)).resize((128, 128), Image.Resampling.LANCZOS)
    with Image.open(out / kept["1"]["file"]) as stored:
        assert np.abs(np.asarray(stored, np.int16) - np.asarray(expected, np.int16)).mean() < 1.0
    assert json.loads((out / "report.json").read_text())["faces"] == {"mode": "animeface", "found": 2}


def test_a_run_without_rejects_still_writes_its_rejected_sheet(tmp_path):
    out = tmp_path / "curated"
    (out / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 150, 150)).save(out / "images" / "a.png")
    write_contact_sheets(8, tmp_path / "raw", out, [{"file": "images/a.png"}], rejected=[])
    with Image.open(out / "contact_kept.png") as kept, Image.open(out / "contact_rejected.png") as rejected:
        assert kept.size == rejected.size == (TILE + 2 * GAP, TILE + 2 * GAP)
        assert rejected.getpixel((GAP + 2, GAP + 2)) == (96, 96, 96)  # the grey "none" tile
