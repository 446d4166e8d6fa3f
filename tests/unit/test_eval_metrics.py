"""FD, KID, precision/recall and control accuracy against values known in closed form or by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from moepipe.config import LabelsConfig
from moepipe.evaluate import metrics
from moepipe.evaluate.metrics import (
    control_accuracy,
    edit_locality,
    fd_from_features,
    frechet_distance,
    kid,
    knn_radii,
    precision_recall,
)


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    m = rng.normal(size=(d, d))
    return m @ m.T / d + 0.1 * np.eye(d)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(s)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


# --- Fréchet distance -------------------------------------------------------------------------

def test_fd_of_identical_sets_is_zero() -> None:
    a = np.random.default_rng(0).normal(size=(400, 16))
    assert fd_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_fd_of_diagonal_gaussians_is_sum_of_squared_root_differences() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.2, 3.0, 6), rng.uniform(0.2, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


def test_fd_of_full_covariances_matches_the_closed_form() -> None:
    rng = np.random.default_rng(2)
    d = 10
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _spd(rng, d), _spd(rng, d)
    root1 = _sqrt_psd(s1)  # tr (S1 S2)^½ = tr (S1^½ S2 S1^½)^½, computed here with eigh only
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _sqrt_psd(root1 @ s2 @ root1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_fd_from_samples_approaches_the_population_value() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(1.0, 2.0, size=(20000, 3))
    assert fd_from_features(a, b) == pytest.approx(3 * 1.0 + 3 * (2 - 1) ** 2, rel=0.05)


def test_fd_with_fewer_samples_than_dimensions_stays_finite() -> None:
    rng = np.random.default_rng(4)
    value = fd_from_features(rng.normal(size=(6, 32)), rng.normal(size=(6, 32)) + 1.0)
    assert np.isfinite(value) and value > 0


def test_fd_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- KID --------------------------------------------------------------------------------------

def test_kid_matches_a_hand_computed_value() -> None:
    # d = 1, k(x, y) = (xy + 1)^3. Within: (2·27 + 2·1) / (2·1) = 28; across: 2·(1+8+1+27)/4 = 18.5.
    mean, std = kid(np.array([[1.0], [2.0]]), np.array([[0.0], [1.0]]), subsets=3, subset_size=5)
    assert mean == pytest.approx(9.5) and std == pytest.approx(0.0)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    mean, std = kid(a, b, subsets=50, subset_size=200)
    assert abs(mean) < 3 * std
    shifted_mean, shifted_std = kid(a, b + 0.5, subsets=50, subset_size=200)
    assert shifted_mean > 0.05 and shifted_mean > 5 * shifted_std
    assert shifted_mean > 20 * abs(mean)


def test_kid_estimator_is_unbiased_where_the_plain_mmd_is_not() -> None:
    rng = np.random.default_rng(6)
    m, d, draws = 8, 4, 1500
    unbiased, biased = [], []
    for _ in range(draws):
        x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d))
        unbiased.append(kid(x, y, subsets=1, subset_size=m)[0])
        k = lambda u, v: (u @ v.T / d + 1) ** 3  # noqa: E731 - a one-line formula, named for the assertions below
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    unbiased, biased = np.array(unbiased), np.array(biased)
    assert abs(unbiased.mean()) < 4 * unbiased.std() / np.sqrt(draws)
    assert biased.mean() > 10 * biased.std() / np.sqrt(draws)  # the diagonal terms inflate it


def test_kid_is_seeded_and_caps_the_subset_size() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(30, 4))
    assert kid(a, b, subsets=5, subset_size=1000, seed=1) == kid(a, b, subsets=5, subset_size=1000, seed=1)
    assert kid(a, b, subsets=5, subset_size=1000, seed=1) != kid(a, b, subsets=5, subset_size=1000, seed=2)


# --- precision / recall -----------------------------------------------------------------------

def _clusters(rng: np.random.Generator, centres: np.ndarray, per: int) -> np.ndarray:
    return np.concatenate([c + 0.1 * rng.normal(size=(per, centres.shape[1])) for c in centres])


# Four tight clusters far apart, in 2-D: in many dimensions a k=3 ball cover misses a fair share
# of fresh samples of the same distribution, which is the metric working, not failing.
CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])


def test_precision_recall_of_a_set_with_itself_is_one() -> None:
    real = _clusters(np.random.default_rng(8), CENTRES, 60)
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)


def test_covering_half_the_clusters_halves_recall_but_keeps_precision() -> None:
    rng = np.random.default_rng(9)
    real = _clusters(rng, CENTRES, 150)
    fake = _clusters(rng, CENTRES[:2], 150)
    precision, recall = precision_recall(real, fake, k=5)
    assert precision > 0.95
    assert 0.45 < recall <= 0.5


def test_far_away_fakes_score_zero() -> None:
    rng = np.random.default_rng(10)
    real = _clusters(rng, CENTRES, 50)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)


def test_batched_distances_equal_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(53, 5))
    brute = np.sort(cdist(x, x, "sqeuclidean"), axis=1)[:, 3]
    monkeypatch.setattr(metrics, "_row_block", lambda other_rows, budget=0: 7)  # many ragged blocks
    assert np.allclose(knn_radii(x, 3), brute)
    fake = rng.normal(size=(41, 5)) * 1.5
    blocked = precision_recall(x, fake, k=3)
    monkeypatch.setattr(metrics, "_row_block", lambda other_rows, budget=0: 10_000)
    assert precision_recall(x, fake, k=3) == blocked


def test_precision_recall_needs_more_samples_than_k() -> None:
    with pytest.raises(ValueError, match="at least 4 rows"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# --- control accuracy -------------------------------------------------------------------------

GROUPS = {"hair": {"tags": ["red", "blue", "green"]}, "accessories": {"tags": ["hat", "glasses"], "multi": True}}
VOCABULARY = ["red", "blue", "green", "hat", "glasses"]


def test_control_accuracy_on_hand_made_predictions() -> None:
    requested = np.array([
        [1, 0, 0, 1, 0],  # red + hat
        [0, 1, 0, 0, 0],  # blue
        [0, 0, 1, 0, 1],  # green + glasses
        [0, 0, 0, 1, 1],  # no hair colour asked: not counted for hair
    ])
    predictions = {
        "hair": np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]]),
        "accessories": np.array([[0.9, 0.1], [0.2, 0.7], [0.4, 0.6], [0.3, 0.8]]),
    }
    result = control_accuracy(predictions, requested, GROUPS, VOCABULARY)
    assert result["groups"]["hair"] == pytest.approx(2 / 3)  # red ✓, blue ✗ (saw red), green ✓
    assert result["n"] == {"hair": 3, "accessories": 4}
    # (p > 0.5) vs request, absences included: row 0 ✓✓, row 1 ✓✗, row 2 ✓✓, row 3 ✗✓ → 6 of 8
    assert result["groups"]["accessories"] == pytest.approx(6 / 8)
    assert result["tags"] == {"red": 1.0, "blue": 0.0, "green": 1.0, "hat": 0.5, "glasses": 1.0}
    assert result["overall"] == pytest.approx((2 / 3 + 6 / 8) / 2)


def test_control_accuracy_counts_any_requested_value_of_a_multi_tagged_single_group() -> None:
    requested = np.array([[1, 1, 0, 0, 0]])  # two hair colours, as booru tags sometimes have
    predictions = {"hair": np.array([[0.1, 0.8, 0.1]]), "accessories": np.array([[0.1, 0.1]])}
    result = control_accuracy(predictions, requested, GROUPS, VOCABULARY)
    assert result["groups"] == {"hair": 1.0, "accessories": 1.0}


def test_control_accuracy_with_nothing_requested_is_none_not_nan() -> None:
    groups = {"hair": GROUPS["hair"]}
    result = control_accuracy({"hair": np.zeros((2, 3))}, np.zeros((2, 3)), groups)
    assert result["groups"] == {"hair": None} and result["overall"] is None


def test_control_accuracy_takes_config_groups_and_checks_shapes() -> None:
    labels = LabelsConfig()
    groups, vocabulary = labels.groups, labels.vocabulary
    n = 3
    predictions = {name: np.full((n, len(group.tags)), 0.1) for name, group in groups.items()}
    result = control_accuracy(predictions, np.zeros((n, len(vocabulary))), groups, vocabulary)
    assert set(result["groups"]) == set(groups)
    predictions["hair_color"] = np.zeros((n, 2))
    with pytest.raises(ValueError, match="hair_color"):
        control_accuracy(predictions, np.zeros((n, len(vocabulary))), groups, vocabulary)


# --- edit locality ----------------------------------------------------------------------------

LOCALITY_GROUPS = {"hair": {"tags": ["red", "blue", "green"]}, "eyes": {"tags": ["brown", "grey"]},
                   "accessories": {"tags": ["hat", "glasses"], "multi": True}}
LOCALITY_BASE = {
    "hair": np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]]),
    "eyes": np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]]),
    "accessories": np.array([[0.9, 0.1], [0.2, 0.7], [0.4, 0.6], [0.1, 0.2]]),
}


def _edited(**changes: list[list[float]]) -> dict[str, np.ndarray]:
    return {name: np.array(changes[name]) if name in changes else probs.copy()
            for name, probs in LOCALITY_BASE.items()}


def test_edit_locality_is_one_when_only_the_edited_group_changes() -> None:
    # Every hair reading changes, and probabilities elsewhere move without crossing a decision.
    edited = _edited(hair=[[0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]],
                     eyes=[[0.6, 0.4], [0.45, 0.55], [0.9, 0.1], [0.4, 0.6]],
                     accessories=[[0.55, 0.3], [0.05, 0.95], [0.1, 0.51], [0.49, 0.0]])
    assert edit_locality(LOCALITY_BASE, edited, LOCALITY_GROUPS, "hair") == 1.0
    # The same arrays read as an edit of eyes: hair flipped on all 4 avatars, accessories on none.
    assert edit_locality(LOCALITY_BASE, edited, LOCALITY_GROUPS, "eyes") == pytest.approx(4 / 8)


def test_edit_locality_counts_the_other_groups_an_edit_also_changed() -> None:
    edited = _edited(hair=[[0.1, 0.8, 0.1]] * 4,  # the edit itself: not scored
                     eyes=[[0.1, 0.9], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]],  # avatar 0 flips
                     accessories=[[0.9, 0.1], [0.2, 0.7], [0.4, 0.4], [0.1, 0.2]])  # avatar 2 loses glasses
    # 4 avatars × 2 other groups = 8 pairs, 2 changed.
    assert edit_locality(LOCALITY_BASE, edited, LOCALITY_GROUPS, "hair") == pytest.approx(6 / 8)


def test_edit_locality_reads_a_multi_group_tag_by_tag_as_one_pair() -> None:
    # Both accessories flip on avatar 0 and one on avatar 3: two pairs, not three tags.
    edited = _edited(accessories=[[0.1, 0.9], [0.2, 0.7], [0.4, 0.6], [0.1, 0.9]])
    assert edit_locality(LOCALITY_BASE, edited, LOCALITY_GROUPS, "hair") == pytest.approx(6 / 8)
    # Editing the multi group itself: its own changes are ignored, hair and eyes are scored.
    edited["hair"][1] = [0.9, 0.05, 0.05]
    assert edit_locality(LOCALITY_BASE, edited, LOCALITY_GROUPS, "accessories") == pytest.approx(7 / 8)


def test_edit_locality_without_other_groups_is_none_and_checks_its_inputs() -> None:
    hair = {"hair": LOCALITY_GROUPS["hair"]}
    assert edit_locality({"hair": LOCALITY_BASE["hair"]}, {"hair": LOCALITY_BASE["hair"]}, hair, "hair") is None
    empty = {name: probs[:0] for name, probs in LOCALITY_BASE.items()}
    assert edit_locality(empty, empty, LOCALITY_GROUPS, "hair") is None
    with pytest.raises(ValueError, match="unknown edited group 'mouth'"):
        edit_locality(LOCALITY_BASE, LOCALITY_BASE, LOCALITY_GROUPS, "mouth")
    with pytest.raises(ValueError, match="eyes"):
        edit_locality(LOCALITY_BASE, {**LOCALITY_BASE, "eyes": LOCALITY_BASE["eyes"][:3]}, LOCALITY_GROUPS, "hair")


def test_hidden_by_finds_the_tag_under_which_a_group_cannot_be_read() -> None:
    from moepipe.evaluate.metrics import hidden_by

    groups = {"eyes": {"tags": ["blue_eyes", "red_eyes"]}, "expression": {"tags": ["smile", "closed_eyes"]},
              "extras": {"tags": ["blush"], "multi": True}}
    vocabulary = ["blue_eyes", "red_eyes", "smile", "closed_eyes", "blush"]
    rng = np.random.default_rng(0)
    n = 200
    eyes, closed = rng.integers(0, 2, n), rng.integers(0, 2, n)
    labels = np.zeros((n, 5), np.uint8)
    labels[np.arange(n), eyes] = 1
    labels[np.arange(n), 2 + closed] = 1
    labels[:, 4] = rng.integers(0, 2, n)
    # The classifier reads the eye colour right with open eyes, guesses "blue" with closed ones;
    # it always reads the expression right.
    eye_guess = np.where(closed == 1, 0, eyes)
    predictions = {"eyes": np.eye(2)[eye_guess], "expression": np.eye(2)[closed],
                   "extras": labels[:, 4:5].astype(float)}
    assert hidden_by(predictions, labels, groups, vocabulary) == {"eyes": ["closed_eyes"]}
    # With the eyes read right everywhere, nothing hides anything.
    predictions["eyes"] = np.eye(2)[eyes]
    assert hidden_by(predictions, labels, groups, vocabulary) == {}
    # Too few images with a tag: no verdict on it.
    few = {name: p[:12] for name, p in {**predictions, "eyes": np.eye(2)[eye_guess]}.items()}
    assert hidden_by(few, labels[:12], groups, vocabulary, min_rows=10) == {}
