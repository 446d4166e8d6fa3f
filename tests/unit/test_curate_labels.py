"""Tags → canonical attributes → multi-hot vectors, coverage and conflicts."""

from moepipe.config import LabelGroup, LabelsConfig
from moepipe.curate.labels import LabelStats, attribute_tags, canonical_tag, multi_hot


def test_aliases_case_and_spaces_map_onto_the_vocabulary():
    labels = LabelsConfig()
    tags = ["Blond Hair", "TWIN_TAILS", "blue eyes", ":d", "solo", "chibi", "animal ears", "bob"]
    assert canonical_tag("Silver Hair", labels) == "white_hair"
    assert attribute_tags(tags, labels) == ["blonde_hair", "twintails", "bob_cut", "blue_eyes",
                                            "laughing", "cat_ears"]


def test_multi_hot_follows_vocabulary_order_and_length():
    labels = LabelsConfig()
    vector = multi_hot(["blue_eyes", "1girl", "glasses"], labels)
    assert len(vector) == len(labels.vocabulary)
    assert set(vector) == {0, 1}
    assert [labels.vocabulary[i] for i, bit in enumerate(vector) if bit] == ["blue_eyes", "1girl", "glasses"]
    assert multi_hot([], labels) == [0] * len(labels.vocabulary)


def test_unknown_and_non_string_tags_are_ignored():
    labels = LabelsConfig()
    assert attribute_tags(["highres", "absurdres", 42, None, "pink_hair"], labels) == ["pink_hair"]


def test_conflicts_keep_both_bits_and_are_counted_only_for_single_choice_groups():
    labels = LabelsConfig(groups={
        "hair_color": LabelGroup(tags=["red_hair", "blue_hair"]),
        "accessories": LabelGroup(tags=["hat", "glasses"], multi=True),
    }, aliases={})
    attributes = attribute_tags(["red_hair", "blue_hair", "hat", "glasses"], labels)
    assert multi_hot(attributes, labels) == [1, 1, 1, 1]
    stats = LabelStats(labels)
    stats.add(attributes)
    stats.add(["red_hair"])
    stats.add([])
    assert stats.conflict_counts() == {"hair_color": 1}
    assert stats.coverage() == {"hair_color": round(2 / 3, 4), "accessories": round(1 / 3, 4)}


def test_coverage_of_nothing_is_zero_not_a_division_error():
    assert set(LabelStats(LabelsConfig()).coverage().values()) == {0.0}
