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
