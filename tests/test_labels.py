"""The four FER+ label schemes: hand-made vote rows, an independent literal
oracle of the reference rules, and the real FER+ counts."""
import numpy as np
import pytest

from ferlib import EMOTIONS, MODES, FERError
from ferlib.labels import check_target_power, make_targets, multi_target_mask, sample_onehot, sharpen, training_targets

N, H, SU, SA, AN, DI, FE, CO, UN, NF = range(10)


def votes(**counts):
    """A vote row from column names, e.g. votes(neutral=6, happiness=4)."""
    columns = list(EMOTIONS) + ["unknown", "NF"]
    row = np.zeros(10, dtype=int)
    for name, count in counts.items():
        row[columns.index(name)] = count
    return row[None]


def oracle(raw, mode):
    """Literal, loop-by-loop statement of the FER+ reference rules (one row).

    Returns the 8-emotion target, or None when the row is dropped.
    """
    v = [float(x) if x > 1 else 0.0 for x in raw]
    total = sum(v)
    taken = [0.0] * 10
    if mode == "majority":
        top = max(v)
        if not top > 0.5 * total:
            return None
        taken[v.index(top)] = top
    elif mode in ("probability", "crossentropy"):
        covered, count, valid = 0.0, 0, True
        while covered < 0.75 * total and count < 3 and valid:
            top = max(v)
            for i in range(10):
                if v[i] == top:
                    taken[i] = top
                    v[i] = 0.0
                    covered += top
                    count += 1
                    if i >= 8:
                        valid = False
                        if sum(taken) > top:
                            taken[i] = 0.0
                            count -= 1
                        break
        if sum(taken) <= 0.5 * total or count > 3:
            return None
    else:
        taken = [x if x >= 0.3 * total else 0.0 for x in v]
        if sum(taken) <= 0.5 * total:
            return None
    if int(np.argmax(taken)) >= 8:
        return None
    emotions = np.array(taken[:8])
    return emotions / emotions.sum()


def check_against_oracle(all_votes, mode):
    targets, keep = make_targets(all_votes, mode)
    for row, target, kept in zip(all_votes, targets, keep):
        expected = oracle(row, mode)
        assert kept == (expected is not None), (mode, row)
        if kept:
            np.testing.assert_allclose(target, expected, rtol=1e-6, err_msg=f"{mode} {row}")
        else:
            assert not target.any()


def test_outlier_single_votes_are_removed():
    # 5 happiness, then five emotions with one vote each: without outlier
    # removal 5 of 10 is no majority; with it, 5 of 5 is.
    t, keep = make_targets(votes(happiness=5, neutral=1, surprise=1, sadness=1, anger=1, fear=1), "majority")
    assert keep[0] and t[0, H] == 1.0
    t, keep = make_targets(votes(happiness=5, neutral=1, surprise=1, sadness=1, anger=1, fear=1), "crossentropy")
    assert keep[0] and t[0, H] == 1.0


def test_majority_needs_more_than_half():
    _, keep = make_targets(votes(neutral=5, happiness=5), "majority")
    assert not keep[0]
    t, keep = make_targets(votes(neutral=6, happiness=4), "majority")
    assert keep[0] and t[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


def test_majority_of_unknown_or_not_a_face_is_dropped():
    for column in ("unknown", "NF"):
        _, keep = make_targets(votes(**{column: 8, "neutral": 2}), "majority")
        assert not keep[0]


def test_crossentropy_takes_classes_until_75_percent():
    t, keep = make_targets(votes(neutral=6, happiness=2, surprise=2), "crossentropy")
    # 6 < 7.5 so a second round takes the tied 2s together: 10 of 10.
    assert keep[0]
    np.testing.assert_allclose(t[0, [N, H, SU]], [0.6, 0.2, 0.2])
    t, keep = make_targets(votes(neutral=8, happiness=2), "crossentropy")
    assert keep[0] and t[0, N] == 1.0 and t[0, H] == 0.0  # 8 >= 7.5: stops after one class


def test_crossentropy_stops_at_unknown_and_leaves_it_out_after_an_emotion():
    t, keep = make_targets(votes(sadness=5, unknown=3, neutral=2), "crossentropy")
    # takes sadness (5 < 7.5), then meets unknown: stop, drop unknown; 5 of 10 is not > 50%.
    assert not keep[0]
    t, keep = make_targets(votes(sadness=6, unknown=2, neutral=2), "crossentropy")
    # round 2 ties neutral (column 0) and unknown (column 8): neutral is taken, unknown left out.
    assert keep[0]
    np.testing.assert_allclose(t[0, [N, SA]], [0.25, 0.75])


def test_crossentropy_drops_rows_with_more_than_three_tied_classes():
    _, keep = make_targets(votes(neutral=4, happiness=2, surprise=2, sadness=2), "crossentropy")
    assert not keep[0]  # 4 then a 3-way tie: 4 classes
    t, keep = make_targets(votes(neutral=4, happiness=3, surprise=3), "crossentropy")
    assert keep[0] and np.count_nonzero(t[0]) == 3


def test_probability_uses_the_same_selection_as_crossentropy(real_or_random_votes):
    ce, keep_ce = make_targets(real_or_random_votes, "crossentropy")
    pr, keep_pr = make_targets(real_or_random_votes, "probability")
    assert (keep_ce == keep_pr).all() and np.array_equal(ce, pr)


def test_multi_target_takes_classes_with_30_percent():
    t, keep = make_targets(votes(happiness=4, surprise=3, neutral=3), "multi_target")
    assert keep[0]
    np.testing.assert_allclose(t[0, [N, H, SU]], [0.3, 0.4, 0.3])
    _, keep = make_targets(votes(happiness=4, surprise=2, neutral=2, fear=2), "multi_target")
    assert not keep[0]  # only 4 of 10 reach 30%


def test_multi_target_tie_with_unknown_keeps_the_emotion_first_in_order():
    t, keep = make_targets(votes(anger=5, unknown=5), "multi_target")
    assert keep[0] and t[0, AN] == 1.0


@pytest.fixture(scope="module")
def real_or_random_votes():
    rng = np.random.default_rng(0)
    # Crowd-like rows: 10 votes over 10 columns with a strong first choice.
    weights = rng.dirichlet(np.full(10, 0.4), size=3000)
    return np.array([rng.multinomial(10, w) for w in weights])


@pytest.mark.parametrize("mode", MODES)
def test_vectorised_rules_match_the_literal_oracle_on_random_rows(mode, real_or_random_votes):
    check_against_oracle(real_or_random_votes, mode)


def test_targets_are_distributions_where_kept(real_or_random_votes):
    for mode in MODES:
        t, keep = make_targets(real_or_random_votes, mode)
        assert t.dtype == np.float32 and t.shape == (len(keep), 8)
        np.testing.assert_allclose(t[keep].sum(axis=1), 1.0, rtol=1e-6)
        assert (t[~keep] == 0).all()


def test_unknown_mode_lists_the_modes():
    with pytest.raises(FERError, match="majority, probability, crossentropy, multi_target"):
        make_targets(votes(neutral=10), "softmax")


def test_probability_draw_follows_the_distribution():
    target = np.tile(np.array([[0.6, 0.3, 0.1, 0, 0, 0, 0, 0]], np.float32), (20000, 1))
    onehot = sample_onehot(target, np.random.default_rng(1))
    assert (onehot.sum(axis=1) == 1).all()
    freq = onehot.mean(axis=0)
    np.testing.assert_allclose(freq[:3], [0.6, 0.3, 0.1], atol=0.015)
    assert freq[3:].sum() == 0


def test_training_targets_forms():
    t, _ = make_targets(votes(happiness=4, surprise=3, neutral=3), "multi_target")
    mask = training_targets(t, "multi_target")
    np.testing.assert_allclose(mask[0, [N, H, SU]], 1.0)
    np.testing.assert_allclose(mask[0, [SA, AN, DI, FE, CO]], 0.001)
    np.testing.assert_allclose(multi_target_mask(t), mask)
    with pytest.raises(FERError, match="rng"):
        training_targets(t, "probability")
    assert np.array_equal(training_targets(t, "crossentropy"), t)


def test_sharpening_moves_each_distribution_towards_its_majority_and_keeps_it_a_distribution(real_or_random_votes):
    t, keep = make_targets(real_or_random_votes, "crossentropy")
    sharp, flat = sharpen(t, 2), sharpen(t, 0.5)
    assert sharp.dtype == np.float32 and sharp.shape == t.shape
    np.testing.assert_allclose(sharp[keep].sum(axis=1), 1.0, rtol=1e-6)
    assert (sharp[~keep] == 0).all()  # dropped rows stay empty, no division by zero
    assert (sharp.argmax(axis=1) == t.argmax(axis=1)).all()  # the same strongest class
    assert (sharp[keep].max(axis=1) >= t[keep].max(axis=1) - 1e-6).all()
    assert (flat[keep].max(axis=1) <= t[keep].max(axis=1) + 1e-6).all()
    assert sharp[keep].max(axis=1).mean() > t[keep].max(axis=1).mean()  # some rows really change
    np.testing.assert_allclose(sharpen([[0.6, 0.4, 0, 0, 0, 0, 0, 0]], 2)[0, :2], [0.36 / 0.52, 0.16 / 0.52], rtol=1e-6)
    np.testing.assert_allclose(sharpen(t, 1), t, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, "2", True, float("inf"), None])
def test_a_target_power_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(FERError, match="target power must be a number above 0"):
        check_target_power(bad)


@pytest.mark.parametrize("mode", ["majority", "multi_target"])
def test_a_target_power_is_refused_for_schemes_without_distributions(mode):
    assert check_target_power(1, mode) == 1.0
    with pytest.raises(FERError, match=f"does not apply to the {mode} scheme"):
        check_target_power(2, mode)


# The FER+ splits and per-class counts of the reference rules on the real
# fer2013new.csv (Training / PublicTest / PrivateTest rows with an image name).
# They are the README's table; the oracle test above pins the rules themselves.
REAL_COUNTS = {  # mode: {split: [total, per-class counts in EMOTIONS order]}
    "majority": {"train": [25060, [8740, 7287, 3149, 3014, 2100, 119, 532, 119]], "val": [3199, [1182, 865, 415, 351, 287, 24, 62, 13]], "test": [3153, [1090, 893, 396, 384, 273, 18, 83, 16]]},
    "probability": {"train": [27956, [10122, 7503, 3524, 3430, 2407, 169, 641, 160]], "val": [3505, [1317, 897, 450, 401, 314, 31, 72, 23]], "test": [3505, [1251, 925, 435, 435, 320, 22, 92, 25]]},
    "crossentropy": {"train": [27956, [10122, 7503, 3524, 3430, 2407, 169, 641, 160]], "val": [3505, [1317, 897, 450, 401, 314, 31, 72, 23]], "test": [3505, [1251, 925, 435, 435, 320, 22, 92, 25]]},
    "multi_target": {"train": [27671, [10071, 7492, 3486, 3399, 2327, 153, 598, 145]], "val": [3472, [1307, 893, 446, 400, 307, 30, 71, 18]], "test": [3472, [1243, 921, 438, 434, 302, 21, 90, 23]]},
}


@pytest.mark.realdata
def test_real_counts_match_the_reference_rules_row_by_row(real_ferplus_csv):
    from ferlib.data import read_ferplus

    plus = read_ferplus(real_ferplus_csv)
    named = plus.names != ""
    assert named.sum() == 35714
    for mode in MODES:
        check_against_oracle(plus.votes[named], mode)


@pytest.mark.realdata
def test_real_split_sizes_and_class_counts(real_ferplus_csv):
    from ferlib.data import USAGES, read_ferplus
    from ferlib.labels import class_counts

    plus = read_ferplus(real_ferplus_csv)
    for mode, per_split in REAL_COUNTS.items():
        for (split, (total, per_class)), usage in zip(per_split.items(), USAGES):
            rows = (plus.usage == usage) & (plus.names != "")
            targets, keep = make_targets(plus.votes[rows], mode)
            assert keep.sum() == total, (mode, split)
            assert class_counts(targets, keep).tolist() == per_class, (mode, split)
