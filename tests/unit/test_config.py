from pathlib import Path

import pytest

from moepipe.config import SUPPORTED_RESOLUTIONS, ConfigError, check_resolution, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def test_committed_params_yaml_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.scrape.sources[0].kind == "synthetic"
    assert len(params.labels.vocabulary) == len(set(params.labels.vocabulary))


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"scrape": {"rate_per_host": -1}}, "params.yaml: scrape.rate_per_host: Input should be greater than or equal to 0 (got -1)"),
        ({"scrap": {}}, "params.yaml: scrap: Extra inputs are not permitted"),
        ({"preprocess": {"resolution": 48}}, "params.yaml: preprocess.resolution: resolution must be a power of two from 16 to 256 px (got 48)"),
        ({"scrape": {"concurrency": "many"}}, "params.yaml: scrape.concurrency: Input should be a valid integer"),
        ({"scrape": {"allow_private": ["localhost"]}}, "params.yaml: scrape.allow_private: 'localhost' is not an IP address or network"),
        ({"scrape": {"sources": [{"kind": "booru"}]}}, "params.yaml: scrape.sources.0: Input tag 'booru'"),
        ({"scrape": {"sources": [{"kind": "folder"}]}}, "params.yaml: scrape.sources.0.folder.path: Field required"),
    ],
)
def test_bad_values_name_the_key_in_one_line(data, expected):
    with pytest.raises(ConfigError) as caught:
        parse_params(data)
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_label_tag_in_two_groups_is_refused():
    groups = {"a": {"tags": ["x", "y"]}, "b": {"tags": ["y"]}}
    with pytest.raises(ConfigError, match="tag 'y' appears in both 'a' and 'b'"):
        parse_params({"labels": {"groups": groups, "aliases": {}}})


def test_dirt_rates_cannot_fill_the_gallery():
    dirt = {name: 0.2 for name in ["duplicate", "near_duplicate", "tiny", "monochrome", "non_avatar"]}
    with pytest.raises(ConfigError, match="sources.0.synthetic.dirt: dirt rates add up to 1.04"):
        parse_params({"scrape": {"sources": [{"kind": "synthetic", "dirt": dirt}]}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: no such file"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("scrape: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+: not valid YAML"):
        load_params(broken)


def test_model_stage_sections_are_typed():
    params = parse_params({"register": {"primary_metric": "kid", "direction": "minimize",
                                        "gates": {"control_accuracy": {"min": 0.5}}},
                           "evaluate": {"samples": 200, "classifier": {"epochs": 3}}})
    assert params.registry.gates["control_accuracy"].min == 0.5
    assert params.evaluate.classifier.epochs == 3 and params.evaluate.samples == 200
    with pytest.raises(ConfigError, match=r"register.direction: .*'minimize' or 'maximize'"):
        parse_params({"register": {"direction": "up"}})
    with pytest.raises(ConfigError, match=r"evaluate.sample: Extra inputs are not permitted"):
        parse_params({"evaluate": {"sample": 10}})


@pytest.mark.parametrize("resolution", [8, 24, 48, 96, 512, 0, -64])
def test_resolution_outside_the_rule_is_refused_in_one_line(resolution):
    rule = f"resolution must be a power of two from 16 to 256 px (got {resolution})"
    with pytest.raises(ValueError) as caught:
        check_resolution(resolution)
    assert str(caught.value) == rule
    with pytest.raises(ConfigError) as caught:
        parse_params({"preprocess": {"resolution": resolution}})
    assert str(caught.value) == f"params.yaml: preprocess.resolution: {rule}"


def test_every_supported_resolution_passes_with_crops_as_large():
    assert SUPPORTED_RESOLUTIONS == (16, 32, 64, 128, 256)
    for resolution in SUPPORTED_RESOLUTIONS:
        assert check_resolution(resolution) == resolution
        params = parse_params({"curate": {"output_size": resolution}, "preprocess": {"resolution": resolution}})
        assert params.preprocess.resolution == params.curate.output_size == resolution


def test_crops_smaller_than_the_resolution_are_refused():
    with pytest.raises(ConfigError) as caught:
        parse_params({"curate": {"output_size": 64}, "preprocess": {"resolution": 128}})
    assert str(caught.value) == (
        "params.yaml: curate.output_size 64 is smaller than preprocess.resolution 128; "
        "raise curate.output_size to at least 128 or lower preprocess.resolution")
    parse_params({"curate": {"output_size": 96}, "preprocess": {"resolution": 64}})  # larger crops are fine
