"""Linear probe internals: splits, metrics, the torch logistic regression against scikit-learn,
label files and storage round trips."""

from __future__ import annotations

import numpy as np
import pytest

from vitdex.probes.errors import LabelError
from vitdex.probes.labels import read_csv_labels, read_folder_labels
from vitdex.probes.logreg import C_GRID, VALIDATION_FRACTION, fit, lbfgs, tune
from vitdex.probes.metrics import classification_report
from vitdex.probes.split import check_splittable, stratified_folds, stratified_split


def gaussian_classes(
    n: int,
    dim: int,
    n_classes: int,
    *,
    spread: float,
    seed: int,
    weights: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes around a shared direction, L2-normalised like embeddings."""
    rng = np.random.default_rng(seed)
    centre_rng = np.random.default_rng(1000)  # the same classes for every seed
    shared = centre_rng.normal(size=dim) * 3
    centres = centre_rng.normal(size=(n_classes, dim)) * spread
    y = rng.choice(n_classes, size=n, p=weights)
    x = shared + centres[y] + rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


# --- splits ---------------------------------------------------------------------------------------
def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.repeat(np.arange(4), [2, 3, 10, 50])
    kept, held = stratified_split(y, 0.2, np.random.default_rng(0))
    assert len(np.intersect1d(kept, held)) == 0
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(y)))
    assert np.array_equal(np.bincount(y[held]), [1, 1, 2, 10])
    assert set(y[kept]) == {0, 1, 2, 3}


def test_stratified_folds_partition_and_balance():
    y = np.repeat(np.arange(3), [10, 7, 23])
    folds = stratified_folds(y, 5, np.random.default_rng(1))
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(y)))
    for c, count in enumerate([10, 7, 23]):
        per_fold = [int(np.sum(y[f] == c)) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == count
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_too_few_examples_names_the_label():
    y = np.array([0, 0, 0, 1, 2, 2])
    with pytest.raises(LabelError, match=r"'dog' \(1\)"):
        check_splittable(y, ["cat", "dog", "fox"], 2, "training")
    check_splittable(y[y != 1], ["cat", "dog", "fox"], 0, "training")


def straddling(groups: np.ndarray, *sides: np.ndarray) -> set[int]:
    """Groups with examples on more than one of `sides`."""
    seen: dict[int, int] = {}
    bad = set()
    for number, side in enumerate(sides):
        for group in set(groups[side].tolist()):
            if seen.setdefault(group, number) != number:
                bad.add(group)
    return bad


def test_grouped_splits_never_split_a_group():
    """Copies (groups of 2 to 4) fall on one side of the split and of every fold."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 5, 60)
    groups = np.repeat(np.arange(60), sizes)
    y = np.repeat(np.arange(60) % 3, sizes)
    for seed in range(5):
        kept, held = stratified_split(y, 0.2, np.random.default_rng(seed), groups)
        assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(y)))
        assert not straddling(groups, kept, held)
        assert set(y[held]) == set(y[kept]) == {0, 1, 2}
        assert 0.1 < len(held) / len(y) < 0.3
        folds = stratified_folds(y, 4, np.random.default_rng(seed), groups)
        assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(y)))
        assert not straddling(groups, *folds)
    # a label whose examples are all copies of one picture cannot be split
    with pytest.raises(LabelError, match=r"distinct images for label 'b' \(1\)"):
        check_splittable(np.array([0, 0, 1, 1, 1]), ["a", "b"], 2, "x", np.array([0, 1, 2, 2, 2]))


def test_content_groups_join_identical_files_and_near_duplicates():
    from vitdex.probes.groups import content_groups

    x, _ = gaussian_classes(40, 16, 2, spread=2.0, seed=9)
    rng = np.random.default_rng(0)
    edited = x[:5] + rng.normal(scale=1e-3, size=(5, 16)).astype(np.float32)
    edited /= np.linalg.norm(edited, axis=1, keepdims=True)
    vectors = np.concatenate([x, x[5:10], edited])  # 5 identical copies, 5 near duplicates
    sha = [f"c{i}" for i in range(40)] + [f"c{i}" for i in range(5, 10)]
    sha += [f"edit{i}" for i in range(5)]
    grouped = content_groups(sha, vectors, threshold=0.999)
    g = grouped.group
    assert all(g[40 + i] == g[5 + i] for i in range(5))  # identical contents
    assert all(g[45 + i] == g[i] for i in range(5))  # near duplicates
    assert len(set(g[:40].tolist())) == 40  # distinct pictures stay apart
    assert (grouped.identical, grouped.near, grouped.count) == (10, 10, 40)


def test_validation_scores_the_chosen_c_refitted_on_the_rest():
    """The reported figure is what the saved probe's procedure scores on held-out data: the
    chosen C refitted on all the non-held-out labels (recomputed here with scikit-learn)."""
    from sklearn.linear_model import LogisticRegression

    from vitdex.probes.train import EVALUATION_FRACTION, HOLDOUT_METHOD, fit_and_score

    x, y = gaussian_classes(500, 32, 4, spread=0.35, seed=8)
    classes = ["a", "b", "c", "d"]
    fitted = fit_and_score(x, y, classes, balanced=False, rng=np.random.default_rng(0))
    assert fitted.validation["method"] == HOLDOUT_METHOD
    assert "refitted at that C on all the rest" in fitted.validation["measured_by"]
    rest, held = stratified_split(y, EVALUATION_FRACTION, np.random.default_rng(0))
    assert np.array_equal(held, fitted.held_out)
    reference = LogisticRegression(C=fitted.final.c, tol=1e-10, max_iter=10_000)
    reference.fit(x[rest], y[rest])
    assert fitted.validation["n"] == len(held)
    assert fitted.validation["accuracy"] == reference.score(x[held], y[held])
    assert fitted.validation["log_loss"] == pytest.approx(
        -np.mean(np.log(reference.predict_proba(x[held])[np.arange(len(held)), y[held]])),
        rel=1e-2,
    )


# --- metrics --------------------------------------------------------------------------------------
def test_metrics_match_scikit_learn():
    from sklearn import metrics

    rng = np.random.default_rng(3)
    classes = [f"c{i}" for i in range(7)]
    y = rng.integers(0, 7, 300)
    proba = rng.dirichlet(np.ones(7), 300)
    proba[np.arange(150), y[:150]] += 1  # better than chance, not perfect
    proba /= proba.sum(axis=1, keepdims=True)
    predicted = proba.argmax(axis=1)
    report = classification_report(y, proba, classes)
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(y, predicted))
    balanced = metrics.balanced_accuracy_score(y, predicted)
    assert report["balanced_accuracy"] == pytest.approx(balanced)
    assert report["top5_accuracy"] == pytest.approx(metrics.top_k_accuracy_score(y, proba, k=5))
    assert report["log_loss"] == pytest.approx(metrics.log_loss(y, proba), rel=1e-6)
    assert report["confusion"] == metrics.confusion_matrix(y, predicted).tolist()
    precision, recall, f1, support = metrics.precision_recall_fscore_support(y, predicted)
    for i, label in enumerate(classes):
        row = report["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (precision[i], recall[i], f1[i])
        )
        assert row["support"] == support[i]


def test_no_top5_for_five_classes_or_fewer():
    report = classification_report(np.array([0, 1, 2]), np.eye(3), ["a", "b", "c"])
    assert "top5_accuracy" not in report and report["accuracy"] == 1.0


# --- the logistic regression ----------------------------------------------------------------------
@pytest.mark.parametrize("balanced", [False, True])
def test_fit_minimises_scikit_learns_objective(balanced):
    """Same l2 <-> C = 1 / (l2 n): the probabilities agree with scikit-learn's lbfgs solution."""
    from sklearn.linear_model import LogisticRegression

    x, y = gaussian_classes(400, 48, 5, spread=0.4, seed=0, weights=[0.4, 0.3, 0.15, 0.1, 0.05])
    l2 = 1e-3
    model, _ = fit(x, y, 5, l2, balanced=balanced, loss_tolerance=1e-9)
    reference = LogisticRegression(
        C=1 / (l2 * len(y)),
        tol=1e-10,
        max_iter=10_000,
        class_weight="balanced" if balanced else None,
    ).fit(x, y)
    assert np.abs(model.proba(x) - reference.predict_proba(x)).max() < 3e-3


def test_fit_with_fewer_examples_than_dimensions():
    """The preconditioner's covariance is singular here; the solution is still scikit-learn's."""
    from sklearn.linear_model import LogisticRegression

    x, y = gaussian_classes(60, 200, 3, spread=0.5, seed=6)
    l2 = 1e-2
    model, _ = fit(x, y, 3, l2, loss_tolerance=1e-9)
    reference = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    assert np.abs(model.proba(x) - reference.predict_proba(x)).max() < 3e-3


def test_lbfgs_minimises_an_ill_conditioned_quadratic():
    import torch

    curvature = torch.logspace(-2, 1, 500)  # condition number 1000
    target = torch.linspace(-1, 1, 500)

    def loss_and_gradient(theta):
        delta = theta - target
        return float(0.5 * (curvature * delta * delta).sum()), curvature * delta

    theta, iterations, evaluations = lbfgs(
        loss_and_gradient,
        torch.zeros(500),
        first_scale=1.0,
        max_iter=500,
        grad_tolerance=1e-6,
        loss_tolerance=0.0,
    )
    assert float((curvature * (theta - target)).abs().max()) <= 1e-6
    assert iterations < 500 and evaluations < 1.2 * iterations + 5  # mostly one per iteration


def test_warm_start_reaches_the_same_solution():
    x, y = gaussian_classes(300, 32, 5, spread=0.4, seed=2)
    cold, _ = fit(x, y, 5, 1e-4, loss_tolerance=1e-9)
    warm, _ = fit(x, y, 5, 1e-4, init=fit(x, y, 5, 1e-2)[0], loss_tolerance=1e-9)
    assert np.abs(cold.proba(x) - warm.proba(x)).max() < 5e-3


def test_tuned_accuracy_matches_scikit_learn_tuned_on_the_same_split():
    """On overlapping Gaussian classes (6 classes, 64-d), test accuracy within 0.01 of
    scikit-learn's LogisticRegression with C chosen on the same validation split."""
    from sklearn.linear_model import LogisticRegression

    x, y = gaussian_classes(600, 64, 6, spread=0.35, seed=0)
    x_test, y_test = gaussian_classes(3000, 64, 6, spread=0.35, seed=1)
    tuned = tune(x, y, 6, rng=np.random.default_rng(0))
    ours = float(np.mean(tuned.model.proba(x_test).argmax(axis=1) == y_test))

    fit_idx, val_idx = stratified_split(y, VALIDATION_FRACTION, np.random.default_rng(0))
    best = None
    for c in C_GRID:
        candidate = LogisticRegression(C=c, max_iter=5000).fit(x[fit_idx], y[fit_idx])
        key = (candidate.score(x[val_idx], y[val_idx]), c)
        best = key if best is None or key[0] > best[0] else best
    reference = LogisticRegression(C=best[1], max_iter=5000).fit(x, y)
    theirs = reference.score(x_test, y_test)
    assert 0.5 < theirs < 0.97, "the fixture should be neither trivial nor hopeless"
    print(
        f"test accuracy: vitdex {ours:.4f} (C {tuned.c:g}), scikit-learn {theirs:.4f}"
        f" (C {best[1]:g})"
    )
    assert abs(ours - theirs) <= 0.01
    assert [row["C"] for row in tuned.sweep] == sorted(C_GRID)[: len(tuned.sweep)]


def test_binary_probe():
    x, y = gaussian_classes(200, 32, 2, spread=0.5, seed=4)
    x_test, y_test = gaussian_classes(1000, 32, 2, spread=0.5, seed=5)
    tuned = tune(x, y, 2, rng=np.random.default_rng(0))
    assert tuned.model.weights.shape == (2, 32)
    assert np.mean(tuned.model.proba(x_test).argmax(axis=1) == y_test) > 0.8


@pytest.mark.parametrize("balanced", [False, True])
def test_binary_probe_matches_scikit_learn_at_its_c(balanced):
    """Two classes: the tuned C is scikit-learn's C (its single-logit model): same predictions,
    the same probabilities and the same coefficients (ours: the difference of the two rows)."""
    from sklearn.linear_model import LogisticRegression

    x, y = gaussian_classes(300, 24, 2, spread=0.4, seed=7, weights=[0.7, 0.3])
    tuned = tune(x, y, 2, balanced=balanced, rng=np.random.default_rng(0))
    ours, _ = fit(x, y, 2, tuned.l2, balanced=balanced, loss_tolerance=1e-10)
    reference = LogisticRegression(
        C=tuned.c, tol=1e-10, max_iter=10_000, class_weight="balanced" if balanced else None
    ).fit(x, y)
    assert np.array_equal(ours.proba(x).argmax(axis=1), reference.predict(x))
    assert np.abs(ours.proba(x) - reference.predict_proba(x)).max() < 2e-3
    coef = ours.weights[1] - ours.weights[0]
    assert np.abs(coef - reference.coef_[0]).max() < 2e-2 * np.abs(reference.coef_).max()
    assert ours.bias[1] - ours.bias[0] == pytest.approx(reference.intercept_[0], abs=2e-2)
    # the saved probe (the refit) is that very model, within the refit's own tolerance
    assert np.abs(tuned.model.proba(x) - reference.predict_proba(x)).max() < 1e-2


# --- labels ---------------------------------------------------------------------------------------
def test_csv_paths_are_relative_to_the_csv(tmp_path):
    folder = tmp_path / "sets"
    folder.mkdir()
    (folder / "labels.csv").write_text("path,label\nimg/a.jpg,cat\n/abs/b.jpg, dog\n../c.jpg,cat\n")
    rows = read_csv_labels(folder / "labels.csv")
    assert [(r.path, r.label) for r in rows] == [
        (str(folder / "img" / "a.jpg"), "cat"),
        ("/abs/b.jpg", "dog"),
        (str(tmp_path / "c.jpg"), "cat"),
    ]


def test_csv_without_header_is_refused(tmp_path):
    (tmp_path / "bad.csv").write_text("a.jpg,cat\n")
    with pytest.raises(LabelError, match="path,label"):
        read_csv_labels(tmp_path / "bad.csv")


def test_folders_label_by_subfolder(tmp_path):
    for name in ("cat/1.jpg", "cat/deep/2.jpg", "dog/3.jpg", ".hidden/4.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    rows = read_folder_labels(tmp_path)
    assert sorted((r.label, r.path) for r in rows) == [
        ("cat", str(tmp_path / "cat" / "1.jpg")),
        ("cat", str(tmp_path / "cat" / "deep" / "2.jpg")),
        ("dog", str(tmp_path / "dog" / "3.jpg")),
    ]
