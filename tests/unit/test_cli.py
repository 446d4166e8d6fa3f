"""The CLI's promise: user mistakes end in one line on stderr and a non-zero exit."""

import subprocess
import sys

import pytest


def moepipe(*args, cwd):
    return subprocess.run([sys.executable, "-m", "moepipe", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_bad_params_value_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("scrape:\n  rate_per_host: -1\n")
    result = moepipe("scrape", "--out", str(tmp_path / "raw"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "moepipe: error: params.yaml: scrape.rate_per_host: Input should be greater than or equal to 0 (got -1)"
    ]
    assert not (tmp_path / "raw").exists()  # validated before any work


@pytest.mark.parametrize(
    "stage, option, message",
    [
        ("curate", "--raw", "raw data folder not found: missing"),
        ("preprocess", "--curated", "curated data folder not found: missing"),
    ],
)
def test_missing_input_folder_is_one_line(tmp_path, stage, option, message):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    result = moepipe(stage, option, "missing", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"moepipe: error: {message}"


def test_missing_params_file(tmp_path):
    result = moepipe("check-params", "--params", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "moepipe: error: nope.yaml: no such file"


def test_help_explains_every_stage(tmp_path):
    result = moepipe("--help", cwd=tmp_path)
    assert result.returncode == 0
    for stage in ("scrape", "curate", "preprocess"):
        assert stage in result.stdout


@pytest.mark.parametrize("stage", ["classifier", "evaluate"])
def test_evaluation_stages_name_a_missing_prepared_folder(tmp_path, stage):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    result = moepipe(stage, "--prepared", "missing", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "moepipe: error: prepared data folder not found: missing"


def test_classifier_and_evaluate_summaries_and_bad_model_files(tmp_path, prepared16):
    from moepipe.config import TrainConfig
    from moepipe.train.loop import train

    train(TrainConfig(width=8, z_dim=16, batch_size=8, steps=2, threads=1, device="cpu", precision="fp32"),
          0, prepared16, tmp_path / "models", echo=lambda line: None)
    (tmp_path / "params.yaml").write_text("seed: 0\nevaluate: {samples: 16, control_samples: 1, kid_subsets: 5, "
                                          "classifier: {epochs: 1, batch_size: 8}}\n")
    made = moepipe("classifier", "--prepared", str(prepared16), "--out", "models/classifier.pt", "--reports",
                   "reports", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("classifier: held-out accuracy ") and made.stdout.count("\n") == 1
    assert made.stdout.strip().endswith("→ models/classifier.pt")
    assert (tmp_path / "reports" / "classifier.json").is_file()
    scored = moepipe("evaluate", "--prepared", str(prepared16), "--out", "reports/evaluate", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.startswith("evaluate: fd ") and ", control " in scored.stdout
    assert scored.stdout.strip().endswith("→ reports/evaluate") and scored.stdout.count("\n") == 1
    assert (tmp_path / "reports" / "evaluate" / "metrics.json").is_file()

    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    for option, message in (("--model", "nope.pt: no such generator file"),
                            ("--classifier", "junk.pt: cannot read the feature classifier")):
        result = moepipe("evaluate", "--prepared", str(prepared16), option,
                         "nope.pt" if option == "--model" else "junk.pt", cwd=tmp_path)
        assert result.returncode == 1
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"moepipe: error: {message}")
