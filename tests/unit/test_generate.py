"""Drawing avatars: seeds, truncation, interpolation, attributes, edit directions, PNGs, the CLI."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from moepipe.cli import app
from moepipe.edits import fit_boundaries, learn_directions
from moepipe.errors import UserError
from moepipe.generate import AvatarModel, Directions, png_bytes
from moepipe.models import build_models
from moepipe.train.loop import GENERATOR_FORMAT

GROUPS = {
    "hair_color": {"tags": ["blue_hair", "red_hair"], "multi": False},
    "expression": {"tags": ["smile", "closed_eyes"], "multi": False},
    "accessories": {"tags": ["hat", "glasses"], "multi": True},
}
VOCABULARY = [t for g in GROUPS.values() for t in g["tags"]]
Z_DIM, SIZE = 16, 16


def save_generator(path: Path, conditional: bool) -> Path:
    """An untrained 16 px DCGAN as generator.pt; weights widened so that seeds differ visibly."""
    torch.manual_seed(0)
    label_dim = len(VOCABULARY) if conditional else 0
    generator, _ = build_models("dcgan", SIZE, label_dim, width=8, z_dim=Z_DIM)
    for p in generator.parameters():
        if p.dim() > 1:
            nn.init.normal_(p, 0.0, 0.2)
    torch.save({"format": GENERATOR_FORMAT, "arch": "dcgan", "resolution": SIZE, "label_dim": label_dim,
                "model_kwargs": {"width": 8, "z_dim": Z_DIM}, "vocabulary": VOCABULARY if conditional else [],
                "groups": GROUPS, "step": 0, "kimg": 0.0, "train_config": "{}",
                "state_dict": generator.state_dict()}, path)
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
    small_batches = conditional.render(z, [["blue_hair"]] * 4, 1.0, batch_size=3)
    assert np.array_equal(in_batch[2], alone) and np.array_equal(small_batches[3], alone)
    assert not np.array_equal(in_batch[0], in_batch[1])  # seeds do differ


def test_truncation_zero_gives_one_avatar_per_attribute_set(conditional: AvatarModel) -> None:
    flat = conditional.draw([1, 2, 3], "red_hair,smile", truncation=0.0)
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
    ends = conditional.draw([3, 9], "hat")
    assert strip.shape == (5, SIZE, SIZE, 3)
    assert np.array_equal(strip[0], ends[0]) and np.array_equal(strip[-1], ends[1])
    assert not np.array_equal(strip[2], ends[0]) and not np.array_equal(strip[2], ends[1])


def test_conditional_attributes_change_the_avatar(conditional: AvatarModel) -> None:
    blue, red, plain = (conditional.draw([4], tags)[0] for tags in ("blue_hair", "red_hair", ""))
    assert not np.array_equal(blue, red) and not np.array_equal(blue, plain)


def test_png_text_metadata_round_trips() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    text = {"model": "models:/moe-generator@champion", "seed": "7", "attributes": "blue_hair,smile",
            "truncation": "0.7"}
    with Image.open(io.BytesIO(png_bytes(pixels, text))) as image:
        assert image.text == text
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)


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
    """Wraps a generator and keeps the z it was called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.z_dim, self.seen = inner, inner.z_dim, []

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append(z.clone())
        return self.inner(z, labels)


def test_edits_move_z_to_the_target_distance(unconditional: AvatarModel) -> None:
    recorder = Recorder(unconditional.generator)
    avatars = AvatarModel(recorder, unconditional.meta, hand_directions())
    z = avatars.latents(range(6))
    z[5, 0] = 20.0  # already far on the smile side: stays where it is
    psi = 0.5
    avatars.render(z, [["smile", "hat"]] * 5 + [["smile"]], truncation=psi)
    moved, start = recorder.seen[0], z * psi
    smile, hat = moved[:, 0] + 0.5, moved[:, 1] - 1.0  # signed distances n.z + b
    for row in range(5):
        assert smile[row] == pytest.approx(max(3.0, float(start[row, 0] + 0.5)), abs=1e-5)
        assert hat[row] == pytest.approx(max(3.0, float(start[row, 1] - 1.0)), abs=1e-5)
    assert torch.equal(moved[5], start[5])
    assert torch.equal(moved[:, 2:], start[:, 2:])  # only along the normals
    plain = avatars.render(z[:2], None, psi)
    assert torch.equal(recorder.seen[-1], start[:2]) and plain.shape == (2, SIZE, SIZE, 3)


class ColourGenerator(nn.Module):
    """A known 'generator': flat images whose channel c is tanh(u_c . z / 2)."""

    def __init__(self, u: torch.Tensor) -> None:
        super().__init__()
        self.z_dim, self.u = u.shape[1], nn.Parameter(u, requires_grad=False)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
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
    assert result.stdout.startswith("directions: ") and f"from 200 samples" in result.stdout
    learned = Directions.load(tmp_path / "u.npz")
    assert learned.tags and set(learned.tags) <= set(VOCABULARY) and set(learned.accuracy) == set(learned.tags)
    assert f"directions: {len(learned.tags)} tag(s) from 200 samples" in result.stdout
    assert np.allclose(np.linalg.norm(learned.normals, axis=1), 1.0, atol=1e-5)
    result = invoke("directions", *common, "--model", files["conditional"], "--out", tmp_path / "c.npz")
    assert result.exit_code == 0 and "conditional" in result.stdout
    assert Directions.load(tmp_path / "c.npz").tags == []


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

    from moepipe.pyfunc import model_code, signature

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
