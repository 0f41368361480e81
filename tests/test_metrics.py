"Tests of echoflow.metrics: bootstrap coverage, Frechet closed forms, NN precision/recall, the classifier two-sample test, EF adherence."
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from echoflow.metrics import (as_video_tensor, best_threshold, bootstrap_ci, c2st, ef_adherence, feature_stats, frechet_distance,
                              frechet_from_stats, frechet_subsets, frechet_video_distance, nn_precision_recall, r2_score,
                              regression_metrics, video_features)


# ---------------------------------------------------------------- regression metrics
def test_regression_metrics_exact_values():
    y, p = np.array([1.0, 2, 3, 4]), np.array([1.5, 2, 2, 5])
    m = regression_metrics(y, p, n_boot=0)
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert m["r2"] == pytest.approx(1 - 2.25 / 5)
    assert r2_score(y, p) == pytest.approx(m["r2"])
    assert set(m) == {"n", "r2", "mae", "rmse"}


def test_regression_metrics_accepts_tensors_and_lists():
    a = regression_metrics(torch.tensor([1.0, 2, 3]), [1, 2, 4], n_boot=10)
    b = regression_metrics(np.array([1.0, 2, 3]), np.array([1, 2, 4.0]), n_boot=10)
    assert a == b and a["mae_lo"] <= a["mae"] <= a["mae_hi"]


def test_bootstrap_interval_covers_truth_about_95_percent():
    # true error model: EF ~ N(55, 12), prediction error ~ N(0, 5)
    # -> MAE = 5 sqrt(2/pi), RMSE = 5, R^2 = 1 - 25/144 (population values)
    truth = {"mae": 5 * math.sqrt(2 / math.pi), "rmse": 5.0, "r2": 1 - 25 / 144}
    rng = np.random.default_rng(0)
    hits = {k: 0 for k in truth}
    n_studies = 200
    for s in range(n_studies):
        y = rng.normal(55, 12, 150)
        m = regression_metrics(y, y + rng.normal(0, 5, 150), n_boot=400, seed=s)
        for k, v in truth.items(): hits[k] += m[f"{k}_lo"] <= v <= m[f"{k}_hi"]
    for k, h in hits.items():
        assert 0.88 <= h / n_studies <= 0.99, f"{k}: coverage {h / n_studies:.3f}"


def test_bootstrap_interval_is_reproducible_and_narrows():
    rng = np.random.default_rng(1)
    y = rng.normal(55, 12, 1000); p = y + rng.normal(0, 5, 1000)
    assert regression_metrics(y, p, seed=3) == regression_metrics(y, p, seed=3)
    small = regression_metrics(y[:50], p[:50]); big = regression_metrics(y, p)
    assert (big["mae_hi"] - big["mae_lo"]) < (small["mae_hi"] - small["mae_lo"]) / 2.5
    lo, hi = bootstrap_ci(y, p, lambda t, q: np.abs(t - q).mean(-1), n_boot=500)
    assert lo < big["mae"] < hi


@pytest.mark.parametrize("args, message", [
    (([1, 2], [1, 2, 3]), "y_true has 2 values but y_pred has 3"),
    (([1.0], [1.0]), "need at least 2 values"),
    (([1, float("nan")], [1, 2]), "y_true contains NaN"),
    (([1, 2], [1, float("inf")]), "y_pred contains NaN or infinite"),
    ((["a", "b"], [1, 2]), "y_true must be numbers"),
])
def test_regression_metrics_bad_input(args, message):
    with pytest.raises(ValueError, match=message): regression_metrics(*args)


def test_regression_metrics_bad_n_boot():
    with pytest.raises(ValueError, match="n_boot"): regression_metrics([1, 2, 3], [1, 2, 3], n_boot=-1)
    with pytest.raises(ValueError, match="n_boot"): bootstrap_ci([1, 2, 3], [1, 2, 3], lambda a, b: a.mean(-1), n_boot=0)


# ---------------------------------------------------------------- Frechet distance
def _random_spd(d, rng):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_closed_form_one_dimension_and_diagonal():
    assert frechet_from_stats([1.0], [[9.0]], [4.0], [[1.0]]) == pytest.approx(9 + 4)
    s1, s2 = np.diag([1.0, 4, 9, 16]), np.diag([4.0, 1, 9, 25])
    expected = 4 * 1.0 + sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in [(1, 4), (4, 1), (9, 9), (16, 25)])
    assert frechet_from_stats(np.zeros(4), s1, np.ones(4), s2) == pytest.approx(expected)


def test_frechet_general_covariances_against_scipy_sqrtm():
    from scipy.linalg import sqrtm
    rng = np.random.default_rng(0)
    for d in (2, 5, 16):
        s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
        assert frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
        assert frechet_from_stats(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-7)
        # symmetric in its arguments
        assert frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(frechet_from_stats(mu2, s2, mu1, s1), rel=1e-6)


def test_frechet_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(2)
    d = 4
    s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
    mu1, mu2 = np.zeros(d), rng.normal(size=d)
    a = rng.multivariate_normal(mu1, s1, 40000); b = rng.multivariate_normal(mu2, s2, 40000)
    exact = frechet_from_stats(mu1, s1, mu2, s2)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.03)
    # the torch and numpy inputs agree, and the estimated stats match the sample moments
    assert frechet_distance(torch.from_numpy(a), b) == pytest.approx(frechet_distance(a, b))
    mu, cov = feature_stats(a)
    np.testing.assert_allclose(cov, np.cov(a, rowvar=False))


def test_frechet_handles_rank_deficient_covariance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(6, 32))   # fewer samples than dimensions
    v = frechet_distance(a, b)
    assert np.isfinite(v) and v > 0


@pytest.mark.parametrize("bad, message", [
    (lambda a: (a, a[:, :2]), "feats_a has 3 features per sample but feats_b has 2"),
    (lambda a: (a[:1], a), "need at least 2 feature vectors"),
    (lambda a: (np.where(a > 1, np.nan, a), a), "NaN"),
])
def test_frechet_bad_input(bad, message):
    a = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(ValueError, match=message): frechet_distance(*bad(a))


def test_frechet_subsets_mean_spread_and_bias():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) + [1.0, 0, 0]
    small, big = frechet_subsets(a, b, n=20, repeats=30), frechet_subsets(a, b, n=400, repeats=3)
    assert big["sd"] < 1e-9 and big["mean"] == pytest.approx(frechet_distance(a, b))   # all rows: every subset is the full set
    assert small["sd"] > 0.05 and small["mean"] > big["mean"]                            # small samples: noisy and biased upwards
    assert frechet_subsets(a, b, n=20, seed=1) == frechet_subsets(a, b, n=20, seed=1)
    with pytest.raises(ValueError, match="n must be an int in"): frechet_subsets(a, b, n=401)


def test_frechet_from_stats_shape_mismatch():
    with pytest.raises(ValueError, match="sigma_b has shape"): frechet_from_stats(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))


# ---------------------------------------------------------------- precision / recall
def test_nn_precision_recall_separates_quality_from_coverage():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 3))
    same = nn_precision_recall(real, rng.normal(size=(400, 3)))
    far = nn_precision_recall(real, rng.normal(size=(400, 3)) + 10)
    narrow = nn_precision_recall(real, 0.2 * rng.normal(size=(400, 3)))
    assert same["precision"] > 0.85 and same["recall"] > 0.85
    assert far["precision"] == 0 and far["recall"] == 0
    assert narrow["precision"] > 0.95 and narrow["recall"] < 0.4


def test_nn_precision_recall_bad_k():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="k must be"): nn_precision_recall(x, x, k=5)
    with pytest.raises(ValueError, match="features per sample"): nn_precision_recall(x, np.zeros((5, 3)))


# ---------------------------------------------------------------- classifier two-sample test
def _smooth_videos(n, seed, gain=0.0, contrast=1.0):
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool3d(torch.randn(n, 1, 4, 16, 16, generator=g), 3, 1, 1) * 2 * contrast
    return (x + gain).clamp(-1, 1)


def test_c2st_same_distribution_is_near_chance():
    accs = [c2st(_smooth_videos(160, 10 + k), _smooth_videos(160, 20 + k), steps=60, seed=k)["accuracy"] for k in range(3)]
    assert 0.38 <= np.mean(accs) <= 0.62, accs


def test_c2st_different_distributions_are_caught():
    out = c2st(_smooth_videos(160, 1), _smooth_videos(160, 2, gain=0.3), steps=60)
    assert out["accuracy"] >= 0.95 and out["p_value"] < 1e-6
    out = c2st(_smooth_videos(160, 1), _smooth_videos(160, 2, contrast=0.3), steps=60)
    assert out["accuracy"] >= 0.95
    assert out["accuracy_lo"] <= out["accuracy"] <= out["accuracy_hi"]


def test_best_threshold():
    s, y = np.array([-9.0, -8.5, -8.0, -7.0, -6.5, -6.0]), np.array([0, 0, 0, 1, 1, 1])
    assert best_threshold(s, y) == -7.0                                         # all below 0, still split (score >= -7)


def test_c2st_reports_auc_and_predicts_both_classes():
    "A separable pair is ranked (AUC) and split by the fitted threshold with both classes predicted, not all in one."
    real, synth = _smooth_videos(80, 1), _smooth_videos(80, 2, gain=0.5)
    out = c2st(real, synth, steps=60)
    assert not out["degenerate"] and out["auc"] > 0.95 and out["accuracy"] > 0.9 and out["train_accuracy"] > 0.9
    assert 0.3 < out["predicted_real_share"] < 0.7


def test_c2st_keeps_real_patients_on_one_side_and_balances():
    real, synth = _smooth_videos(40, 1), _smooth_videos(25, 2)
    groups = np.repeat(np.arange(10), 4)          # 10 patients, 4 videos each
    out = c2st(real, synth, steps=5, real_groups=groups, test_fraction=0.3)
    assert out["n_test"] % 2 == 0 and out["n_train"] % 2 == 0   # balanced: as many real as synthetic
    assert out["n_test"] == 2 * min(12, 8)                       # 3 patients x 4 videos real, 8 synthetic held out


@pytest.mark.parametrize("real, synth, message", [
    (_smooth_videos(8, 0), _smooth_videos(8, 1)[:, :, :2], "use clips of one size"),
    (_smooth_videos(3, 0), _smooth_videos(8, 1), "at least 4 videos per side"),
    (torch.zeros(8, 2, 4, 16, 16), _smooth_videos(8, 1), r"must be \(N, 1, T, H, W\)"),
])
def test_c2st_bad_input(real, synth, message):
    with pytest.raises(ValueError, match=message): c2st(real, synth, steps=1)


def test_c2st_groups_length_checked():
    with pytest.raises(ValueError, match="real_groups has 3 entries for 8 real videos"):
        c2st(_smooth_videos(8, 0), _smooth_videos(8, 1), steps=1, real_groups=[1, 2, 3])


def test_as_video_tensor_accepts_uint8_lists():
    vids = [np.full((4, 8, 8), 255, np.uint8), np.zeros((4, 8, 8), np.uint8)]
    x = as_video_tensor(vids)
    assert x.shape == (2, 1, 4, 8, 8) and x.max() == 1 and x.min() == -1
    with pytest.raises(ValueError, match="different shapes"): as_video_tensor([np.zeros((4, 8, 8), np.uint8), np.zeros((5, 8, 8), np.uint8)])


# ---------------------------------------------------------------- Frechet video distance
def test_frechet_video_distance_with_a_feature_model():
    class Feat(torch.nn.Module):
        def __init__(self):
            super().__init__(); self.lin = torch.nn.Linear(4 * 16 * 16, 6)
        def features(self, x): return self.lin(x.flatten(1))
    torch.manual_seed(0); m = Feat()
    f = video_features(m, _smooth_videos(10, 0), batch_size=3)
    assert f.shape == (10, 6)
    same = frechet_video_distance(_smooth_videos(300, 1), _smooth_videos(300, 2), m)
    diff = frechet_video_distance(_smooth_videos(300, 1), _smooth_videos(300, 2, gain=0.3), m)
    assert diff > 10 * same


# ---------------------------------------------------------------- EF adherence
def test_ef_adherence_perfect_and_flat():
    req = np.repeat(np.arange(20.0, 81, 10), 3)
    perfect = ef_adherence(req, req)
    assert perfect["mae"] == 0 and perfect["r2"] == 1 and perfect["slope"] == pytest.approx(1) and perfect["bias"] == 0
    biased = ef_adherence(req, req + 4)
    assert biased["mae"] == pytest.approx(4) and biased["bias"] == pytest.approx(4) and biased["slope"] == pytest.approx(1)
    flat = ef_adherence(req, np.full(len(req), 55.0))
    assert flat["slope"] == 0 and flat["r2"] < 0
    with_ci = ef_adherence(req, req + np.random.default_rng(0).normal(0, 3, len(req)), n_boot=200)
    assert with_ci["mae_lo"] < with_ci["mae"] < with_ci["mae_hi"]


def test_ef_adherence_bad_input():
    with pytest.raises(ValueError, match="requested_ef must vary"): ef_adherence([50, 50, 50], [40, 50, 60])
    with pytest.raises(ValueError, match="requested_ef has 3 values but measured_ef has 2"): ef_adherence([20, 50, 80], [40, 50])
