"""The avatar studio's API on a tiny trained generator file: pictures, their PNG text, and one-line 4xx
answers for every kind of bad input (FastAPI TestClient, no server)."""

from __future__ import annotations

import hashlib
import io
import tomllib
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from moepipe.config.model import TRUNCATION_RANGE
from moepipe.errors import UserError
from moepipe.generate.avatar import AvatarModel
from moepipe.models import build_models
from moepipe.models.export import GENERATOR_FORMAT
from moepipe.studio.app import MAX_N, create_app, validation_detail
from moepipe.studio.server import listen
from moepipe.studio.state import ModelHolder, links, ui_base
from tests.support.studio import train_tiny

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16


@pytest.fixture(scope="module")
def generator(prepared16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(prepared16, tmp_path_factory.mktemp("studio")) / "models/generator.pt"


@pytest.fixture(scope="module")
def model(generator: Path) -> AvatarModel:
    return AvatarModel.load(generator)


@pytest.fixture(scope="module")
def client(generator: Path):
    holder = ModelHolder(str(generator)).open()
    with TestClient(create_app(holder, poll=False), raise_server_exceptions=False) as client:
        yield client


def png(reply) -> Image.Image:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(reply.content))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def tile(strip: Image.Image, index: int, columns: int) -> np.ndarray:
    row, column = divmod(index, columns)
    return pixels(strip)[row * (SIZE + 2):row * (SIZE + 2) + SIZE, column * (SIZE + 2):column * (SIZE + 2) + SIZE]


def singles(model: AvatarModel) -> dict[str, list[str]]:
    return {name: group["tags"] for name, group in model.groups.items() if not group.get("multi")}


def multis(model: AvatarModel) -> dict[str, list[str]]:
    return {name: group["tags"] for name, group in model.groups.items() if group.get("multi")}


# -- bad input: 4xx, one line naming the field -----------------------------------------------------
def bad_requests(model: AvatarModel) -> list[tuple[str, int, str, str]]:
    """(url, status, field, a word of the message) per kind of bad input."""
    hair = singles(model)["hair_color"]
    style = singles(model)["hairstyle"]
    return [
        ("/api/avatar.png?seed=abc", 422, "seed", "integer"),
        ("/api/avatar.png?seed=1.5", 422, "seed", "integer"),
        ("/api/avatar.png?seed=-1", 422, "seed", "greater than or equal to 0"),
        ("/api/grid.png?seed=1e3", 422, "seed", "integer"),
        ("/api/grid.png?n=65", 422, "n", f"less than or equal to {MAX_N}"),
        ("/api/grid.png?n=0", 422, "n", "greater than or equal to 1"),
        ("/api/avatar.png?truncation=2.5", 422, "truncation", "less than or equal to 2"),
        ("/api/avatar.png?truncation=-0.1", 422, "truncation", "greater than or equal to 0"),
        ("/api/avatar.png?truncation=nan", 422, "truncation", "finite"),
        ("/api/avatar.png?truncation=soft", 422, "truncation", "number"),
        ("/api/avatar.png?attributes=sparkly_wings", 422, "attributes", "unknown attribute 'sparkly_wings'"),
        (f"/api/grid.png?attributes={hair[0]},{hair[1]}", 422, "attributes", "both hair_color; pick one"),
        (f"/api/interpolate.png?attributes={style[0]},{style[1]}", 422, "attributes", "both hairstyle"),
        ("/api/vary.png?group=wings", 422, "group", "unknown attribute group 'wings'"),
        ("/api/vary.png", 422, "group", "Field required"),
        (f"/api/vary.png?group=hairstyle&attributes={style[0]}", 422, "attributes", "every hairstyle"),
        ("/api/interpolate.gif?steps=1", 422, "steps", "greater than or equal to 2"),
        ("/api/interpolate.png?steps=65", 422, "steps", "less than or equal to 64"),
        ("/api/interpolate.gif?seed_b=x", 422, "seed_b", "integer"),
        ("/api/interpolate.gif?frame_ms=5", 422, "frame_ms", "greater than or equal to 20"),
        ("/api/avatar.png?atributes=smile", 422, "atributes", "unknown query parameter"),
        ("/api/avatar.png?alias=boss", 422, "alias", "champion"),
        ("/api/avatar.png?alias=champion", 404, "alias", "not a registered model"),
        ("/api/grid.png?alias=challenger", 404, "alias", "no champion or challenger"),
    ]


def test_every_bad_input_is_a_4xx_with_one_line_naming_the_field(client: TestClient, model: AvatarModel) -> None:
    for url, status, field, word in bad_requests(model):
        reply = client.get(url)
        assert reply.status_code == status, (url, reply.text)
        assert reply.headers["content-type"] == "application/json", url
        body = reply.json()
        assert list(body) == ["detail"], url
        detail = body["detail"]
        assert detail.startswith(f"{field}: "), (url, detail)
        assert word in detail, (url, detail)
        assert "\n" not in detail, url
    assert png(client.get("/api/avatar.png?seed=1")).size == (SIZE, SIZE)  # and the server still answers


def test_several_validation_errors_are_still_one_line() -> None:
    errors = [{"loc": ("query", "n"), "msg": "Input should be less than or equal to 64", "input": "65",
               "type": "less_than_equal"},
              {"loc": ("query", "seed"), "msg": "Input should be a valid integer,\nunable to parse", "input": "x",
               "type": "int_parsing"}]
    assert validation_detail(errors) == "n: Input should be less than or equal to 64 (got '65') (+1 more)"
    assert validation_detail(errors[1:]) == "seed: Input should be a valid integer, unable to parse (got 'x')"


def test_an_unexpected_failure_is_a_500_line_and_the_server_goes_on(generator: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    holder = ModelHolder(str(generator)).open()
    drawer = holder.served().drawer

    def broken(*args, **kwargs):
        raise RuntimeError("the generator\nfell over")

    with TestClient(create_app(holder, poll=False), raise_server_exceptions=False) as client:
        monkeypatch.setattr(drawer, "avatar", broken)
        reply = client.get("/api/avatar.png?seed=3")
        assert reply.status_code == 500
        assert reply.json() == {"detail": "internal error: RuntimeError: the generator fell over"}
        monkeypatch.undo()
        assert png(client.get("/api/avatar.png?seed=3")).size == (SIZE, SIZE)


# -- good requests -------------------------------------------------------------------------------
def test_an_avatar_png_carries_its_request_and_the_same_request_gives_the_same_bytes(
        client: TestClient, model: AvatarModel, generator: Path) -> None:
    hair = singles(model)["hair_color"][1]
    smile = "smile" if "smile" in model.attributes else singles(model)["expression"][0]
    url = f"/api/avatar.png?seed=11&attributes={hair},%20{smile}&truncation=0.7"
    reply = client.get(url)
    image = png(reply)
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    text = image.text
    assert (text["seed"], text["attributes"], text["truncation"]) == ("11", f"{hair},{smile}", "0.7")
    assert text["model"] == str(generator) and text["Software"] == "moepipe"
    drawn = text["drawn_attributes"].split(",")
    assert hair in drawn and smile in drawn
    assert reply.headers["x-moepipe-drawn-attributes"] == text["drawn_attributes"]
    assert client.get(url).content == reply.content
    other = client.get(f"/api/avatar.png?seed=12&attributes={hair},{smile}&truncation=0.7")
    assert pixels(png(other)).tobytes() != pixels(image).tobytes()
    # Byte for byte what the one drawing path draws for that request, whatever the studio kept.
    fresh = AvatarModel.load(generator).draw([11], [hair, smile], 0.7)[0]
    assert np.array_equal(pixels(image), fresh)


def test_groups_left_at_any_are_filled_from_the_prior_by_the_seed(client: TestClient, model: AvatarModel) -> None:
    hair = singles(model)["hair_color"][0]
    seen_styles = set()
    for seed in range(6):
        text = png(client.get(f"/api/avatar.png?seed={seed}&attributes={hair}")).text
        drawn = text["drawn_attributes"].split(",")
        assert text["attributes"] == hair
        for name, tags in singles(model).items():  # every single-choice group has exactly one value
            assert len([t for t in drawn if t in tags]) == 1, (name, drawn)
        assert [t for t in drawn if t in singles(model)["hair_color"]] == [hair]
        seen_styles.update(t for t in drawn if t in singles(model)["hairstyle"])
        assert drawn == model.complete_attributes([hair], seed)
    assert len(seen_styles) > 1  # filled per seed, not one fixed default
    accessory = multis(model)["accessories"][0]
    drawn = png(client.get(f"/api/avatar.png?seed=2&attributes={accessory}")).text["drawn_attributes"].split(",")
    assert [t for t in drawn if t in multis(model)["accessories"]] == [accessory]  # a named multi group is exact


def test_a_grid_tiles_the_following_seeds_as_their_own_avatars(client: TestClient) -> None:
    grid = png(client.get("/api/grid.png?seed=40&n=5&columns=3&truncation=0.9"))
    assert grid.size == (3 * SIZE + 2 * 2, 2 * SIZE + 2)
    assert grid.text["seed"] == "40..44"
    assert grid.text["drawn_attributes"].splitlines()[0].startswith("40: ")
    for i in range(5):
        alone = pixels(png(client.get(f"/api/avatar.png?seed={40 + i}&truncation=0.9")))
        assert np.array_equal(tile(grid, i, 3), alone), i


def test_the_vary_strip_has_one_tile_per_value_each_that_value_asked(client: TestClient, model: AvatarModel) -> None:
    styles = singles(model)["hairstyle"]
    strip = png(client.get("/api/vary.png?seed=9&group=hairstyle&truncation=0.8"))
    assert strip.size == (len(styles) * (SIZE + 2) - 2, SIZE)
    assert strip.text["values"].split(",") == styles and strip.text["vary"] == "hairstyle"
    for j, style in enumerate(styles):  # the seed keeps every other group's draw
        alone = pixels(png(client.get(f"/api/avatar.png?seed=9&attributes={style}&truncation=0.8")))
        assert np.array_equal(tile(strip, j, len(styles)), alone), style
    accessories = multis(model)["accessories"]
    strip = png(client.get("/api/vary.png?seed=9&group=accessories"))
    assert strip.text["values"].split(",") == ["none", *accessories]
    assert strip.size == ((len(accessories) + 1) * (SIZE + 2) - 2, SIZE)


def test_interpolation_strip_and_gif_have_one_frame_per_step(client: TestClient) -> None:
    strip = png(client.get("/api/interpolate.png?seed=3&seed_b=30&steps=5"))
    assert strip.size == (5 * (SIZE + 2) - 2, SIZE)
    assert (strip.text["seed"], strip.text["seed_b"], strip.text["steps"]) == ("3", "30", "5")
    ends = pixels(png(client.get("/api/avatar.png?seed=3")))
    assert np.array_equal(tile(strip, 0, 5), ends)  # the path starts at the seed's own avatar
    reply = client.get("/api/interpolate.gif?seed=3&seed_b=30&steps=5&frame_ms=80&download=true")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/gif"
    assert reply.headers["content-disposition"] == 'attachment; filename="avatar-3-to-30.gif"'
    gif = Image.open(io.BytesIO(reply.content))
    assert gif.n_frames == 5 and gif.size == (SIZE, SIZE) and gif.info["loop"] == 0
    durations = []
    for frame in range(gif.n_frames):
        gif.seek(frame)
        durations.append(gif.info["duration"])
    assert durations == [80] * 5
    assert b"seed 3" in gif.info["comment"]
    # A path that does not move (truncation 0) plays as fewer frames, the same length in all.
    still = Image.open(io.BytesIO(client.get("/api/interpolate.gif?seed=3&seed_b=30&steps=5&truncation=0&frame_ms=80")
                                  .content))
    assert still.n_frames < 5
    total = 0
    for frame in range(still.n_frames):
        still.seek(frame)
        total += still.info["duration"]
    assert total == 400


def test_attributes_list_the_models_own_groups_and_limits(client: TestClient, model: AvatarModel) -> None:
    body = client.get("/api/attributes").json()
    assert [g["name"] for g in body["groups"]] == list(model.groups)
    for group in body["groups"]:
        assert group["tags"] == model.groups[group["name"]]["tags"]
        assert group["multi"] == bool(model.groups[group["name"]].get("multi"))
        assert group["values"] == (["none"] if group["multi"] else []) + group["tags"]
    assert body["resolution"] == SIZE and body["conditional"] is True
    assert (body["truncation"]["min"], body["truncation"]["max"]) == TRUNCATION_RANGE
    assert body["limits"]["n"] == MAX_N


def test_a_file_model_says_it_is_not_registered(client: TestClient, generator: Path) -> None:
    body = client.get("/api/model").json()
    assert body["registered"] is False and body["version"] is None and body["compare"] is None
    answering = body["answering"]
    assert answering["source"] == "file" and answering["model"] == str(generator)
    assert answering["generator_sha256"] == hashlib.sha256(generator.read_bytes()).hexdigest()
    assert "no champion/challenger" in answering["note"]
    assert answering["resolution"] == SIZE and answering["step"] == 2


def test_the_page_and_its_files_are_served_and_packaged(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("studio.js", "studio.css"):
        assert f'/static/{name}' in page.text
        assert client.get(f"/static/{name}").status_code == 200
    for text in (page.text, *(client.get(f"/static/{name}").text for name in ("studio.js", "studio.css"))):
        assert "http://" not in text and "https://" not in text  # nothing from elsewhere: works offline
    schema = client.get("/openapi.json").json()
    assert {"/api/avatar.png", "/api/grid.png", "/api/vary.png", "/api/interpolate.png", "/api/interpolate.gif",
            "/api/attributes", "/api/model"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    # Every file of static/ is package data, so an installed (non-editable) moepipe serves the page too.
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["moepipe.studio"]
    static = ROOT / "moepipe" / "studio"
    packaged = {path for pattern in globs for path in static.glob(pattern)}
    assert packaged == set((static / "static").iterdir())


# -- the registry parts that need no store, and the command line ---------------------------------
def test_mlflow_ui_links_only_for_a_tracking_server() -> None:
    assert ui_base("sqlite:///mlflow.db") is None and ui_base(None) is None
    assert ui_base("http://alice:secret@mlflow.local:5000/") == "http://mlflow.local:5000"
    found = links("https://mlflow.example/base", "moe-generator", 3, "7", "abc123")
    assert found == {
        "model_version": "https://mlflow.example/base/#/models/moe-generator/versions/3",
        "run": "https://mlflow.example/base/#/experiments/7/runs/abc123",
        "model_card": "https://mlflow.example/base/get-artifact?path=model_card.md&run_uuid=abc123"}
    assert links(None, "moe-generator", 3, "7", "abc123") == {}


def test_cli_mistakes_are_one_line(tmp_path: Path, generator: Path) -> None:
    from moepipe.cli import app

    missing = CliRunner().invoke(app, ["studio", "--model", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 1 and missing.stderr.startswith("moepipe: error: ")
    assert len(missing.stderr.strip().splitlines()) == 1 and "nope.pt" in missing.stderr
    slow = CliRunner().invoke(app, ["studio", "--model", str(generator), "--poll-seconds", "0"])
    assert slow.exit_code == 1
    assert slow.stderr.strip() == "moepipe: error: --poll-seconds must be > 0 (got 0)"
    taken = listen("127.0.0.1", 0)
    try:
        busy = CliRunner().invoke(app, ["studio", "--model", str(generator), "--port", str(taken.getsockname()[1])])
        assert busy.exit_code == 1 and len(busy.stderr.strip().splitlines()) == 1
        assert "cannot listen on 127.0.0.1:" in busy.stderr and "pick another --port" in busy.stderr
    finally:
        taken.close()
    with pytest.raises(UserError, match="--port must be in 0..65535"):
        listen("127.0.0.1", 70000)


def test_tags_outside_ascii_reach_the_headers_percent_encoded(tmp_path: Path) -> None:
    vocabulary = ["銀髪", "blue_hair"]
    torch.manual_seed(0)
    network, _ = build_models("dcgan", SIZE, len(vocabulary), width=8, z_dim=16)
    path = tmp_path / "ぎんぱつ.pt"
    torch.save({"format": GENERATOR_FORMAT, "arch": "dcgan", "resolution": SIZE, "label_dim": len(vocabulary),
                "model_kwargs": {"width": 8, "z_dim": 16}, "vocabulary": vocabulary,
                "groups": {"hair_color": {"tags": vocabulary, "multi": False}}, "label_prior": {"hair_color": [0.5, 0.5]},
                "step": 0, "kimg": 0.0, "train_config": "{}", "state_dict": network.state_dict()}, path)
    with TestClient(create_app(ModelHolder(str(path)).open(), poll=False)) as client:
        reply = client.get("/api/avatar.png", params={"seed": 1, "attributes": "銀髪", "download": "true"})
        image = png(reply)
        assert unquote(reply.headers["x-moepipe-drawn-attributes"]) == "銀髪"
        assert unquote(reply.headers["x-moepipe-model"]) == str(path)
        assert reply.headers["content-disposition"] == 'attachment; filename="avatar-seed1.png"'
        assert image.text["attributes"] == "銀髪"
