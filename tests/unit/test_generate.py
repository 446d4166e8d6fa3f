"""Drawing avatars: seeds, truncation, interpolation, attributes, edit directions, PNGs, the CLI."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from moepipe.cli import app
from moepipe.errors import UserError
from moepipe.evaluate.directions import fit_boundaries, learn_directions
from moepipe.generate.avatar import AvatarModel, Directions
from moepipe.generate.pictures import avatar_text, png_bytes
from moepipe.models import build_models
from moepipe.models.export import GENERATOR_FORMAT

GROUPS = {
    "hair_color": {"tags": ["blue_hair", "red_hair"], "multi": False},
    "expression": {"tags": ["smile", "closed_eyes"], "multi": False},
    "accessories": {"tags": ["hat", "glasses"], "multi": True},
}
VOCABULARY = [t for g in GROUPS.values() for t in g["tags"]]
PRIOR = {"hair_color": [0.7, 0.3], "expression": [0.5, 0.5], "accessories": [0.3, 0.6]}
Z_DIM, SIZE = 16, 16
HAIR, EXPRESSION, ACCESSORIES = slice(0, 2), slice(2, 4), slice(4, 6)  # label columns of the groups


def save_generator(path: Path, conditional: bool, legacy: bool = False) -> Path:
    """An untrained 16 px DCGAN as generator.pt; weights widened so that seeds differ visibly.

    `legacy`: a format 1 file (transposed-conv body, no "block" kwarg, no label prior).
    """
    torch.manual_seed(0)
    label_dim = len(VOCABULARY) if conditional else 0
    body = {"block": "transposed"} if legacy else {}
    generator, _ = build_models("dcgan", SIZE, label_dim, width=8, z_dim=Z_DIM, **body)
    for p in generator.parameters():
        if p.dim() > 1:
            nn.init.normal_(p, 0.0, 0.2)
    payload = {"format": "moepipe-generator/1" if legacy else GENERATOR_FORMAT, "arch": "dcgan",
               "resolution": SIZE, "label_dim": label_dim, "model_kwargs": {"width": 8, "z_dim": Z_DIM},
               "vocabulary": VOCABULARY if conditional else [], "groups": GROUPS, "step": 0, "kimg": 0.0,
               "train_config": "{}", "state_dict": generator.state_dict()}
    torch.save(payload if legacy else {**payload, "label_prior": PRIOR}, path)
    return path


def hand_directions() -> Directions:
    """Two orthogonal unit normals in z space: 'smile' along z0, 'hat' along z1."""
    normals = np.zeros((2, Z_DIM), np.float32)
    normals[0, 0] = normals[1, 1] = 1.0
    return Directions(["smile", "hat"], normals, np.array([0.5, -1.0], np.float32), {"smile": 0.9, "hat": 0.8})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generators")
    (root / "uncond").mkdir()
    conditional = save_generator(root / "conditional.pt", True)
    unconditional = save_generator(root / "uncond" / "generator.pt", False)
    hand_directions().save(root / "uncond" / "directions.npz")  # found beside the generator
    return {"conditional": conditional, "unconditional": unconditional}


@pytest.fixture(scope="module")
def conditional(files) -> AvatarModel:
    return AvatarModel.load(files["conditional"])


@pytest.fixture(scope="module")
def unconditional(files) -> AvatarModel:
    return AvatarModel.load(files["unconditional"], files["unconditional"].with_name("directions.npz"))


# -- seeds, truncation, interpolation, attributes ---------------------------------------------
def test_a_seed_gives_the_same_avatar_whatever_its_batch(conditional: AvatarModel) -> None:
    alone = conditional.draw([7], "blue_hair")[0]
    in_batch = conditional.draw([5, 6, 7, 8], "blue_hair")
    z = conditional.latents([1, 2, 3, 7])
    small_batches = conditional.render(z, conditional.requests([1, 2, 3, 7], ["blue_hair"]), 1.0, batch_size=3)
    assert np.array_equal(in_batch[2], alone) and np.array_equal(small_batches[3], alone)
    assert not np.array_equal(in_batch[0], in_batch[1])  # seeds do differ


class ShapeSensitive(nn.Module):
    """A generator whose output shifts with the batch size: BLAS and oneDNN pick kernels, and so
    roundings, by batch shape (~1e-6, enough to flip a uint8 now and then); here visibly so."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.z_dim, self.truncation_space = inner, inner.z_dim, inner.truncation_space

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        return self.inner(z, labels, **kwargs) + 0.02 * (z.shape[0] - 1)


def test_every_avatar_of_a_batch_is_pixel_for_pixel_its_lone_self(conditional: AvatarModel) -> None:
    seeds = list(range(100, 148))
    for avatars in (conditional, AvatarModel(ShapeSensitive(conditional.generator), conditional.meta)):
        alone = np.stack([avatars.draw([s], "smile", 0.8)[0] for s in seeds])
        assert np.array_equal(avatars.draw(seeds, "smile", 0.8), alone)
        z, requests = avatars.latents(seeds), avatars.requests(seeds, ["smile"])
        assert np.array_equal(avatars.render(z, requests, 0.8, batch_size=7), alone)


def test_truncation_zero_gives_one_avatar_per_attribute_set(conditional: AvatarModel) -> None:
    flat = conditional.draw([1, 2, 3], "red_hair,smile,hat", truncation=0.0)  # every group named: no fill
    assert np.array_equal(flat[0], flat[1]) and np.array_equal(flat[0], flat[2])
    full = conditional.draw([1, 2], "red_hair,smile", truncation=1.0)
    assert not np.array_equal(full[0], full[1])


def test_stylegan_avatars_also_follow_their_seed_alone_and_truncate_to_w_avg() -> None:
    torch.manual_seed(0)
    generator, _ = build_models("stylegan", SIZE, 0, z_dim=Z_DIM, channel_base=256, channel_max=32)
    with torch.no_grad():
        generator.mapping.w_avg.normal_()  # untrained: give the average latent a face of its own
    avatars = AvatarModel(generator, {"resolution": SIZE, "label_dim": 0})
    batch, alone = avatars.draw([5, 6, 7]), avatars.render(avatars.latents([1, 7]), None, 1.0, batch_size=1)
    assert np.array_equal(batch[2], alone[1]) and not np.array_equal(batch[0], batch[1])
    flat = avatars.draw([1, 2], truncation=0.0)
    assert np.array_equal(flat[0], flat[1])


def test_interpolation_ends_are_the_seeds_own_avatars(conditional: AvatarModel) -> None:
    strip = conditional.interpolate(3, 9, 5, "hat")
    fill = conditional.complete_attributes(["hat"], 3)  # seed 3's, all along the strip
    ends = conditional.render(conditional.latents([3, 9]), [fill, fill])
    assert np.array_equal(ends[0], conditional.draw([3], "hat")[0])
    assert strip.shape == (5, SIZE, SIZE, 3)
    assert np.array_equal(strip[0], ends[0]) and np.array_equal(strip[-1], ends[1])
    assert not np.array_equal(strip[2], ends[0]) and not np.array_equal(strip[2], ends[1])


def test_conditional_attributes_change_the_avatar(conditional: AvatarModel) -> None:
    blue, red = (conditional.draw([4], tags)[0] for tags in ("blue_hair", "red_hair"))
    bare = conditional.render(conditional.latents([4]), [["blue_hair"]])[0]  # no fill: other groups empty
    assert not np.array_equal(blue, red) and not np.array_equal(blue, bare)


def test_png_text_metadata_round_trips() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    text = {"model": "models:/moe-generator@champion", "seed": "7", "attributes": "blue_hair,smile",
            "truncation": "0.7"}
    with Image.open(io.BytesIO(png_bytes(pixels, text))) as image:
        assert image.text == text
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)


def test_avatar_text_is_one_set_of_keys() -> None:
    provenance = {"model_name": "moe-generator", "model_version": "3", "run_id": "r1", "stage": "ignored"}
    assert avatar_text("models:/moe-generator@champion", 7, ["smile"], ["smile", "red_hair"], 0.7, provenance) == {
        "Software": "moepipe",
        "Description": "moe-generator v3: seed 7, attributes smile (drawn: smile, red_hair), truncation 0.7",
        "model": "models:/moe-generator@champion", "model_name": "moe-generator", "model_version": "3",
        "run_id": "r1", "seed": "7", "attributes": "smile", "drawn_attributes": "smile,red_hair", "truncation": "0.7"}
    grid = avatar_text("generator.pt", "0..1", [], "0: a\n1: b", 1.0, comment="two")
    assert grid == {"Software": "moepipe", "Description": "generator.pt: seed 0..1, attributes none, truncation 1",
                    "model": "generator.pt", "seed": "0..1", "attributes": "", "drawn_attributes": "0: a\n1: b",
                    "truncation": "1", "comment": "two"}


@pytest.mark.parametrize("text, message", [
    ("blue_hair, purple_wings", "unknown attribute 'purple_wings'; known: blue_hair"),
    ("blue_hair,red_hair", "attributes 'blue_hair' and 'red_hair' are both hair_color; pick one"),
])
def test_bad_attributes_are_user_errors(conditional: AvatarModel, text: str, message: str) -> None:
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(")):
        conditional.parse_attributes(text)


def test_attribute_parsing_normalises_and_allows_several_multi_tags(conditional: AvatarModel) -> None:
    assert conditional.parse_attributes(" Blue Hair, hat,glasses,hat ") == ["blue_hair", "hat", "glasses"]


def test_unconditional_model_without_directions_takes_no_attributes(files) -> None:
    bare = AvatarModel.load(files["unconditional"])
    assert bare.attributes == [] and bare.parse_attributes("") == []
    with pytest.raises(UserError, match="takes no attributes"):
        bare.parse_attributes("smile")


# -- edits on an unconditional model ----------------------------------------------------------
class Recorder(nn.Module):
    """Wraps a generator and keeps the z and labels it was called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.z_dim, self.seen, self.labels = inner, inner.z_dim, [], []
        self.truncation_space = inner.truncation_space

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        self.seen.append(z.clone())
        self.labels.append(labels.clone() if labels is not None else None)
        return self.inner(z, labels, **kwargs)

    def take(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(z, labels) of every row drawn since the last take, in order, without render's padding."""
        z, labels, self.seen, self.labels = torch.cat(self.seen), self.labels, [], []
        return unpadded(z, torch.cat(labels) if labels and labels[0] is not None else None)


def unpadded(z: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop the all-zero rows that render pads its fixed-size forward passes with."""
    padding = (z == 0).all(dim=1)
    if labels is not None:
        padding &= (labels == 0).all(dim=1)
    return z[~padding], (labels[~padding] if labels is not None else None)


def test_edits_move_z_to_the_target_distance(unconditional: AvatarModel) -> None:
    recorder = Recorder(unconditional.generator)
    avatars = AvatarModel(recorder, unconditional.meta, hand_directions())
    z = avatars.latents(range(6))
    z[5, 0] = 20.0  # already far on the smile side: stays where it is
    psi = 0.5
    avatars.render(z, [["smile", "hat"]] * 5 + [["smile"]], truncation=psi)
    moved, start = recorder.take()[0], z * psi
    smile, hat = moved[:, 0] + 0.5, moved[:, 1] - 1.0  # signed distances n.z + b
    for row in range(5):
        assert smile[row] == pytest.approx(max(3.0, float(start[row, 0] + 0.5)), abs=1e-5)
        assert hat[row] == pytest.approx(max(3.0, float(start[row, 1] - 1.0)), abs=1e-5)
    assert torch.equal(moved[5], start[5])
    assert torch.equal(moved[:, 2:], start[:, 2:])  # only along the normals
    plain = avatars.render(z[:2], None, psi)
    assert torch.equal(recorder.take()[0], start[:2]) and plain.shape == (2, SIZE, SIZE, 3)


class ColourGenerator(nn.Module):
    """A known 'generator': flat images whose channel c is tanh(u_c . z / 2)."""

    def __init__(self, u: torch.Tensor) -> None:
        super().__init__()
        self.z_dim, self.u = u.shape[1], nn.Parameter(u, requires_grad=False)

    truncation_space = "z"

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        return torch.tanh(0.5 * z @ self.u.T)[:, :, None, None].expand(-1, -1, 8, 8)


class ColourReader(nn.Module):
    """A known 'classifier': red = channel 0 > 0, green = always, blue = never, happy = ch0 > ch1."""

    groups = {"colour": {"tags": ["red", "green", "blue"], "multi": True},
              "mood": {"tags": ["happy", "sad"], "multi": False}}
    vocabulary = ["red", "green", "blue", "happy", "sad"]
    resolution = 8

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        m = images.mean(dim=(2, 3))
        colour = torch.stack([m[:, 0], torch.ones_like(m[:, 0]), m[:, 2] - 2.0], dim=1)
        return {"colour": torch.sigmoid(50 * colour), "mood": torch.softmax(50 * m[:, :2], dim=1)}


def test_learned_directions_recover_known_boundaries() -> None:
    u = torch.nn.functional.normalize(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    avatars = AvatarModel(ColourGenerator(u), {"resolution": 8, "label_dim": 0})
    found = learn_directions(avatars, ColourReader(), samples=600, seed=0)
    assert found.tags == ["red", "happy", "sad"]  # green always on, blue never: no direction
    truth = {"red": u[0], "happy": u[0] - u[1], "sad": u[1] - u[0]}
    for i, tag in enumerate(found.tags):
        cosine = float(torch.nn.functional.cosine_similarity(torch.from_numpy(found.normals[i]), truth[tag], dim=0))
        assert cosine > 0.9, (tag, cosine)
        assert abs(found.offsets[i]) < 0.3 and found.accuracy[tag] > 0.9
    assert np.allclose(np.linalg.norm(found.normals, axis=1), 1.0, atol=1e-5)
    avatars.directions = found  # and an edit then gives the classifier what was asked for
    asked = avatars.draw(range(40), "happy")
    assert (asked[:, 0, 0, 0] > asked[:, 0, 0, 1]).mean() >= 0.95


def test_boundary_fit_is_deterministic_and_holds_out_rows() -> None:
    z = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    labels = (z[:, :1] + 0.3 * z[:, 1:2] > 0.2)
    a, b = fit_boundaries(z, labels, seed=3), fit_boundaries(z, labels, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    normal, offset, accuracy = a
    assert normal.shape == (1, 4) and offset.shape == (1,) and 0.9 < accuracy[0] <= 1.0


# -- the directions stage and the CLI ---------------------------------------------------------
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_directions_stage_writes_a_file_for_either_kind_of_generator(files, tmp_path: Path) -> None:
    from moepipe.evaluate.features import AttributeClassifier, save_classifier

    torch.manual_seed(0)
    reader = AttributeClassifier(SIZE, GROUPS, VOCABULARY, width=8, feature_dim=16)
    with torch.no_grad():  # untrained, so sharpen its heads until some tags come and go
        for head in reader.heads.values():
            head.weight.mul_(10.0)
            head.bias.zero_()
    save_classifier(tmp_path / "classifier.pt", reader, {})
    (tmp_path / "params.yaml").write_text("seed: 2\n")
    common = ["--params", tmp_path / "params.yaml", "--classifier", tmp_path / "classifier.pt"]
    result = invoke("directions", *common, "--model", files["unconditional"], "--out", tmp_path / "u.npz",
                    "--samples", 200)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("directions: ") and "from 200 samples" in result.stdout
    learned = Directions.load(tmp_path / "u.npz")
    assert learned.tags and set(learned.tags) <= set(VOCABULARY) and set(learned.accuracy) == set(learned.tags)
    assert f"directions: {len(learned.tags)} tag(s) from 200 samples" in result.stdout
    assert np.allclose(np.linalg.norm(learned.normals, axis=1), 1.0, atol=1e-5)
    result = invoke("directions", *common, "--model", files["conditional"], "--out", tmp_path / "c.npz")
    assert result.exit_code == 0 and "conditional" in result.stdout
    assert Directions.load(tmp_path / "c.npz").tags == []


def test_directions_refuse_a_classifier_of_another_resolution(files, tmp_path: Path) -> None:
    """Avatars are never resized for the classifier: its labels of a resized image would drift."""
    from moepipe.evaluate.features import AttributeClassifier, save_classifier

    save_classifier(tmp_path / "classifier32.pt", AttributeClassifier(2 * SIZE, GROUPS, VOCABULARY, width=4,
                                                                       feature_dim=8), {})
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    result = invoke("directions", "--params", tmp_path / "params.yaml", "--classifier", tmp_path / "classifier32.pt",
                    "--model", files["unconditional"], "--out", tmp_path / "u.npz", "--samples", 20)
    assert (result.exit_code, result.stderr) == (1, (
        f"moepipe: error: {files['unconditional']} draws {SIZE} px avatars but {tmp_path / 'classifier32.pt'} "
        f"reads {2 * SIZE} px images; re-run `moepipe classifier` on the data the generator was trained on\n"))
    assert not (tmp_path / "u.npz").exists()
    u = torch.nn.functional.normalize(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    avatars = AvatarModel(ColourGenerator(u), {"resolution": 8, "label_dim": 0})
    reader = ColourReader()
    reader.resolution = 16  # another side than the avatars': refused, not resized to fit
    with pytest.raises(UserError, match="the generator draws 8 px avatars but the classifier reads 16 px images"):
        learn_directions(avatars, reader, samples=20)


def test_generate_writes_a_grid_with_metadata(files, conditional: AvatarModel, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    result = invoke("generate", "--model", files["conditional"], "--attributes", "blue_hair,smile", "--n", 5,
                    "--seed", 7, "--truncation", 0.7, "--columns", 3, "--out", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (3 * (SIZE + 2) - 2, 2 * (SIZE + 2) - 2)
        assert {k: image.text[k] for k in ("model", "seed", "attributes", "truncation")} == {
            "model": str(files["conditional"]), "seed": "7..11", "attributes": "blue_hair,smile", "truncation": "0.7"}
        second = np.asarray(image.convert("RGB"))[:SIZE, SIZE + 2:2 * SIZE + 2]
    assert np.array_equal(second, conditional.draw([8], "blue_hair,smile", 0.7)[0])


def test_generate_singles_only(files, unconditional: AvatarModel, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("generate", "--model", files["unconditional"], "--attributes", "smile", "--n", 4,
                    "--seed", 3, "--singles", "one_each")
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "one_each").glob("*.png"))
    assert len(written) == 4 and not (tmp_path / "avatars.png").exists()
    with Image.open(written[1]) as image:  # directions.npz beside generator.pt made 'smile' known
        assert image.text["seed"] == "4" and image.text["attributes"] == "smile"
        assert np.array_equal(np.asarray(image.convert("RGB")), unconditional.draw([4], "smile")[0])


def test_generate_interpolation_strip(files, conditional: AvatarModel, tmp_path: Path) -> None:
    out = tmp_path / "strip.png"
    result = invoke("generate", "--model", files["conditional"], "--seed", 2, "--interpolate", 9, "--steps", 4,
                    "--out", out, "--singles", tmp_path / "frames")
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (4 * (SIZE + 2) - 2, SIZE) and image.text["seed_b"] == "9"
        first = np.asarray(image.convert("RGB"))[:, :SIZE]
    assert np.array_equal(first, conditional.draw([2])[0])
    assert len(list((tmp_path / "frames").glob("*.png"))) == 4


@pytest.mark.parametrize("args, message", [
    (["--attributes", "blue_hair,wings"], "unknown attribute 'wings'"),
    (["--n", "0"], "--n must be at least 1 (got 0)"),
    (["--n", "-3"], "--n must be at least 1 (got -3)"),
    (["--truncation", "-1"], "--truncation must be in [0, 2] (got -1)"),
    (["--steps", "1", "--interpolate", "3"], "--steps must be at least 2 (got 1)"),
    (["--directions", "nowhere.npz"], "nowhere.npz: no such directions file"),
])
def test_generate_bad_input_is_one_line(files, tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("generate", "--model", files["conditional"], "--out", tmp_path / "x.png", *args)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("moepipe: error: ") and message in lines[0], lines
    assert not (tmp_path / "x.png").exists()


def test_generate_missing_or_broken_model_is_one_line(tmp_path: Path) -> None:
    result = invoke("generate", "--model", tmp_path / "nope.pt", "--out", tmp_path / "x.png")
    assert (result.exit_code, result.stderr) == (1, f"moepipe: error: {tmp_path / 'nope.pt'}: no such generator file\n")
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    result = invoke("generate", "--model", tmp_path / "broken.pt")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"moepipe: error: {tmp_path / 'broken.pt'}: cannot read the generator")
    assert len(result.stderr.splitlines()) == 1


def test_generate_unknown_registered_model_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = invoke("generate", "--model", "models:/no-such-model@champion", "--out", tmp_path / "x.png")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("moepipe: error: models:/no-such-model@champion: "), lines


def test_generate_from_a_logged_pyfunc_model(files, conditional: AvatarModel, tmp_path: Path) -> None:
    import mlflow.pyfunc

    from moepipe.registry.pyfunc import model_code, signature

    folder = tmp_path / "logged"
    mlflow.pyfunc.save_model(str(folder), python_model=str(model_code()), signature=signature(),
                             artifacts={"generator": str(files["conditional"])}, pip_requirements=["torch"])
    out = tmp_path / "x.png"
    result = invoke("generate", "--model", folder.as_uri(), "--attributes", "red_hair", "--n", 2, "--seed", 3,
                    "--out", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.text["model"] == folder.as_uri()
        first = np.asarray(image.convert("RGB"))[:, :SIZE]
    assert np.array_equal(first, conditional.draw([3], "red_hair")[0])
    result = invoke("generate", "--model", folder, "--n", 1, "--out", tmp_path / "y.png")  # the folder itself
    assert result.exit_code == 0, result.output
    rows = pd.DataFrame({"seed": [3, 8], "attributes": ["red_hair", ""]})
    served = mlflow.pyfunc.load_model(str(folder)).predict(rows)
    pictures = [Image.open(io.BytesIO(base64.b64decode(cell))) for cell in served["image"]]
    assert (pictures[0].text["attributes"], pictures[1].text["attributes"]) == ("red_hair", "")
    assert pictures[0].text["drawn_attributes"] == ",".join(conditional.complete_attributes(["red_hair"], 3))
    assert pictures[1].text["drawn_attributes"] == ",".join(conditional.complete_attributes([], 8))
    invoke("generate", "--model", folder, "--n", 1, "--seed", 3, "--singles", tmp_path / "one")
    with Image.open(tmp_path / "one" / "avatar_000003.png") as single:  # the same keys either way
        assert set(single.text) == set(pictures[0].text) and pictures[0].text["model"] == "unregistered"
    assert np.array_equal(np.asarray(pictures[0].convert("RGB")), conditional.draw([3], "red_hair")[0])
    assert np.array_equal(np.asarray(pictures[1].convert("RGB")), conditional.draw([8])[0])


def test_a_model_logged_before_the_regroup_still_loads(files, conditional: AvatarModel, tmp_path: Path) -> None:
    """Versions registered before moepipe/ was grouped by stage run `from moepipe.pyfunc import
    AvatarGenerator` in their logged entry point."""
    import mlflow.pyfunc

    from moepipe.registry.pyfunc import signature

    entry = tmp_path / "pyfunc_model.py"
    entry.write_text("import mlflow.models\n\nfrom moepipe.pyfunc import AvatarGenerator\n\n"
                     "mlflow.models.set_model(AvatarGenerator())\n")
    folder = tmp_path / "old"
    mlflow.pyfunc.save_model(str(folder), python_model=str(entry), signature=signature(),
                             artifacts={"generator": str(files["conditional"])}, pip_requirements=["torch"])
    result = invoke("generate", "--model", folder, "--attributes", "red_hair", "--n", 1, "--seed", 3,
                    "--out", tmp_path / "old.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "old.png") as image:
        assert np.array_equal(np.asarray(image.convert("RGB"))[:, :SIZE], conditional.draw([3], "red_hair")[0])


# -- groups a request leaves out, --vary, legacy files -----------------------------------------
def recorded(conditional: AvatarModel, prior: dict | None = None) -> tuple[AvatarModel, Recorder]:
    """The conditional model drawing through a Recorder (and, if given, another label prior)."""
    recorder = Recorder(conditional.generator)
    meta = {**conditional.meta, **({"label_prior": prior} if prior else {})}
    return AvatarModel(recorder, meta), recorder


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(z, labels) of every DCGAN forward pass, also inside `moepipe generate`."""
    from moepipe.models.dcgan import DCGANGenerator

    calls, original = [], DCGANGenerator.forward

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        calls.append((z.detach().clone(), None if labels is None else labels.detach().clone()))
        return original(self, z, labels, **kwargs)

    monkeypatch.setattr(DCGANGenerator, "forward", forward)
    return calls


def stacked(calls: list) -> tuple[torch.Tensor, torch.Tensor]:
    return unpadded(torch.cat([z for z, _ in calls]), torch.cat([labels for _, labels in calls]))


def test_groups_left_out_are_drawn_by_seed_never_zero(conditional: AvatarModel) -> None:
    avatars, recorder = recorded(conditional)
    avatars.draw(range(40))
    _, labels = recorder.take()
    assert torch.all(labels[:, HAIR].sum(1) == 1) and torch.all(labels[:, EXPRESSION].sum(1) == 1)
    assert len({tuple(row.tolist()) for row in labels}) > 4  # seeds differ in their fill ...
    assert 0 < labels[:, ACCESSORIES].sum() < 80  # ... multi tags come and go
    avatars.draw([5])
    assert torch.equal(recorder.take()[1][0], labels[5])  # same seed, same fill, alone
    avatars.draw([30, 5, 12])
    assert torch.equal(recorder.take()[1], labels[[30, 5, 12]])  # whatever the batch


def test_fills_follow_the_models_label_prior(conditional: AvatarModel) -> None:
    avatars, recorder = recorded(conditional, {"hair_color": [0.0, 1.0], "expression": [0.5, 0.5],
                                               "accessories": [1.0, 0.0]})
    avatars.draw(range(20))
    _, labels = recorder.take()
    assert labels[:, HAIR].tolist() == [[0.0, 1.0]] * 20  # always red
    assert labels[:, ACCESSORIES].tolist() == [[1.0, 0.0]] * 20  # always a hat, never glasses


def test_fills_are_kept_per_model_and_equal_a_fresh_draw(conditional: AvatarModel, monkeypatch) -> None:
    import moepipe.generate.avatar as avatar_module

    avatars, _ = recorded(conditional)
    fresh = [AvatarModel(avatars.generator, avatars.meta).complete_attributes(["red_hair"], s) for s in range(6)]
    monkeypatch.setattr(avatar_module, "KEPT_FILLS", 4)
    draws = []
    real_complete = avatars.layout.complete
    monkeypatch.setattr(avatars.layout, "complete", lambda *a: draws.append(1) or real_complete(*a))
    first = [avatars.complete_attributes(["red_hair"], s) for s in range(6)]
    assert first == fresh and len(draws) == 6
    first[5].append("glasses")  # a caller's list is its own
    assert [avatars.complete_attributes(["red_hair"], s) for s in (4, 5)] == fresh[4:] and len(draws) == 6
    assert avatars.complete_attributes(["red_hair"], 0) == fresh[0] and len(draws) == 7  # 4 kept: 0 was dropped


def test_a_named_group_is_kept_and_the_others_keep_their_draw(conditional: AvatarModel) -> None:
    avatars, recorder = recorded(conditional)
    avatars.draw(range(20))
    free = recorder.take()[1]
    avatars.draw(range(20), "red_hair,glasses")
    asked = recorder.take()[1]
    assert asked[:, HAIR].tolist() == [[0.0, 1.0]] * 20 and asked[:, ACCESSORIES].tolist() == [[0.0, 1.0]] * 20
    assert torch.equal(asked[:, EXPRESSION], free[:, EXPRESSION])  # the seed's own expression still
    assert avatars.complete_attributes(["red_hair", "glasses"], 3) == ["red_hair", *[
        t for t in avatars.complete_attributes([], 3) if t in ("smile", "closed_eyes")], "glasses"]


def test_generate_vary_sweeps_one_group_with_all_else_fixed(files, conditional: AvatarModel, tmp_path: Path,
                                                            spy: list) -> None:
    out, singles = tmp_path / "vary.png", tmp_path / "each"
    result = invoke("generate", "--model", files["conditional"], "--vary", "accessories", "--attributes", "smile",
                    "--n", 3, "--seed", 4, "--out", out, "--singles", singles)
    assert result.exit_code == 0, result.output
    z, labels = stacked(spy)
    assert z.shape[0] == 9 and torch.equal(z, conditional.latents([4, 5, 6]).repeat_interleave(3, dim=0))
    assert labels[:, ACCESSORIES].tolist() == [[0, 0], [1, 0], [0, 1]] * 3  # none, hat, glasses
    assert labels[:, EXPRESSION].tolist() == [[1, 0]] * 9  # as asked
    rows = labels[:, HAIR].reshape(3, 3, 2)
    assert torch.all(rows == rows[:, :1])  # one hair colour per row ...
    fills = [conditional.complete_attributes(["smile"], s) for s in (4, 5, 6)]
    assert [VOCABULARY[int(r[0].argmax())] for r in rows] == [next(t for t in f if "hair" in t) for f in fills]
    with Image.open(out) as image:  # ... the seed's own, as in a plain grid
        assert (image.text["vary"], image.text["values"]) == ("accessories", "none,hat,glasses")
        assert image.size[1] == 14 + 3 * (SIZE + 2) - 2
        tile = np.asarray(image.convert("RGB"))[14 + SIZE + 2:14 + 2 * SIZE + 2, -SIZE:]  # seed 5, glasses
    names = sorted(p.name for p in singles.glob("*.png"))
    assert len(names) == 9 and names[5] == "vary_accessories_000005_02_glasses.png"
    with Image.open(singles / names[5]) as image:
        assert (image.text["seed"], image.text["attributes"], image.text["vary"]) == ("5", "smile,glasses",
                                                                                       "accessories")
        assert np.array_equal(np.asarray(image.convert("RGB")), tile)
    assert np.array_equal(tile, conditional.draw([5], "smile,glasses")[0])  # same seed, same fill: same avatar


@pytest.mark.parametrize("args, message", [
    (["--vary", "hairdo"], "unknown attribute group 'hairdo'; groups: hair_color, expression, accessories"),
    (["--vary", "hair_color", "--attributes", "smile,red_hair"],
     "--attributes names 'red_hair', a hair_color value; --vary hair_color draws each hair_color in turn"),
    (["--vary", "hair_color", "--interpolate", "3"], "--vary and --interpolate draw different pictures; pick one"),
])
def test_generate_bad_vary_is_one_line(files, tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("generate", "--model", files["conditional"], "--out", tmp_path / "x.png", *args)
    assert (result.exit_code, result.stderr) == (1, f"moepipe: error: {message}\n")
    assert not (tmp_path / "x.png").exists()


def test_generate_vary_needs_a_conditional_model(files, tmp_path: Path) -> None:
    result = invoke("generate", "--model", files["unconditional"], "--vary", "hair_color", "--out", tmp_path / "x.png")
    assert (result.exit_code, result.stderr) == (
        1, "moepipe: error: --vary needs a conditional model; this one takes no attribute labels\n")


def test_a_format_1_generator_still_draws_with_a_uniform_fill(tmp_path: Path, spy: list) -> None:
    legacy = save_generator(tmp_path / "old.pt", True, legacy=True)
    avatars = AvatarModel.load(legacy)
    assert avatars.generator.block == "transposed" and avatars.label_prior == avatars.layout.uniform_prior()
    result = invoke("generate", "--model", legacy, "--attributes", "hat", "--n", 3, "--seed", 2,
                    "--singles", tmp_path / "each")
    assert result.exit_code == 0, result.output
    _, labels = stacked(spy)
    assert torch.all(labels[:, HAIR].sum(1) == 1) and labels[:, ACCESSORIES].tolist() == [[1, 0]] * 3
    with Image.open(tmp_path / "each" / "avatar_000003.png") as image:
        assert image.text["attributes"] == "hat"
        assert image.text["drawn_attributes"] == ",".join(avatars.complete_attributes(["hat"], 3))
        assert np.array_equal(np.asarray(image.convert("RGB")), avatars.draw([3], "hat")[0])
