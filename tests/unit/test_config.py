from pathlib import Path

import pytest

from moepipe.config import ConfigError, load_params, parse_params

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
        ({"preprocess": {"resolution": 48}}, "params.yaml: preprocess.resolution: must be one of 16, 32, 64, 128, 256 (got 48)"),
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
