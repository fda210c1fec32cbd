#!/usr/bin/env python3
"""Records the allocation traces of real NumPy, SciPy and scikit-learn programs into
traces/recorded/, the fixtures the defaults are checked on beside ../shared/traces.

    python3 -m venv /tmp/rec && /tmp/rec/bin/pip install -r scripts/record_requirements.txt
    (cd crates/tensorpool-py && /tmp/rec/bin/maturin build --release -o /tmp/wheels)
    /tmp/rec/bin/pip install /tmp/wheels/tensorpool-*.whl
    /tmp/rec/bin/python scripts/record_traces.py [NAME ...]

Every NumPy data allocation and free of each program goes through
`tensorpool.record`, in the RMM CSV format `tensorpool replay` reads, gzipped. The
programs are ordinary uses of the libraries on data they generate or ship (no
download): nothing in them knows it is recorded. Data is seeded, so a re-recording
makes the same sizes in the same order (addresses differ).
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import tensorpool  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent.parent / "traces" / "recorded"


def sk_forest():
    """scikit-learn: a random forest fit and scored on a generated classification
    problem, with cross-validated predictions."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_predict

    x, y = make_classification(n_samples=4000, n_features=40, n_informative=12, random_state=0)
    forest = RandomForestClassifier(n_estimators=24, max_depth=12, random_state=0)
    pred = cross_val_predict(forest, x, y, cv=3)
    return float((pred == y).mean())


def sk_kmeans_pca():
    """scikit-learn: scaling, PCA and k-means on the digits data it ships (tiled and
    jittered to 7,190 samples), then a silhouette score."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    rng = np.random.default_rng(0)
    x = np.tile(digits.data, (4, 1)) + rng.normal(0, 0.5, (4 * len(digits.data), 64))
    x = StandardScaler().fit_transform(x)
    z = PCA(n_components=24, random_state=0).fit_transform(x)
    labels = KMeans(n_clusters=10, n_init=4, random_state=0).fit_predict(z)
    return float(silhouette_score(z[:3000], labels[:3000]))


def sk_ridge_cv():
    """scikit-learn: polynomial features and ridge regression with a grid search over
    the penalty (5-fold), on a generated regression problem."""
    from sklearn.datasets import make_regression
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    x, y = make_regression(n_samples=3000, n_features=12, noise=4.0, random_state=0)
    model = make_pipeline(PolynomialFeatures(2), StandardScaler(), Ridge())
    search = GridSearchCV(model, {"ridge__alpha": np.logspace(-3, 3, 7)}, cv=5)
    search.fit(x, y)
    return float(search.best_score_)


def np_wave():
    """NumPy: a 2-D wave equation on a 256 x 256 grid by finite differences (array
    expressions, slices, temporaries of every step), with an FFT of the field every
    25 steps."""
    n, steps, c = 256, 300, 0.25
    yy, xx = np.mgrid[0:n, 0:n] / n
    u = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 200.0)
    prev = u.copy()
    energy = []
    for step in range(steps):
        lap = (
            np.roll(u, 1, 0) + np.roll(u, -1, 0) + np.roll(u, 1, 1) + np.roll(u, -1, 1) - 4 * u
        )
        nxt = 2 * u - prev + c * lap
        nxt[0, :] = nxt[-1, :] = nxt[:, 0] = nxt[:, -1] = 0
        prev, u = u, nxt
        if step % 25 == 0:
            spectrum = np.abs(np.fft.rfft2(u))
            energy.append(float((spectrum**2).sum()))
    return energy[-1]


def scipy_sparse():
    """SciPy: a 2-D Poisson problem as a sparse matrix (Kronecker sums), solved by
    conjugate gradients for several right-hand sides, and a few eigenvalues by
    Lanczos."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import cg, eigsh

    n = 120
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    a = (sp.kron(sp.identity(n), t) + sp.kron(t, sp.identity(n))).tocsr()
    rng = np.random.default_rng(0)
    residuals = []
    for _ in range(6):
        b = rng.standard_normal(n * n)
        x, _info = cg(a, b, rtol=1e-8, maxiter=2000)
        residuals.append(float(np.linalg.norm(a @ x - b)))
    vals = eigsh(a, k=6, which="LM", return_eigenvectors=False)
    return max(residuals), float(vals.max())


PROGRAMS = {f.__name__: f for f in (sk_forest, sk_kmeans_pca, sk_ridge_cv, np_wave, scipy_sparse)}


def record(name):
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        csv = pathlib.Path(tmp) / f"{name}.csv"
        with tensorpool.record(csv, tensorpool.MemoryManager()):
            result = PROGRAMS[name]()
        target = OUT / f"{name}.csv.gz"
        with open(csv, "rb") as src, gzip.open(target, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
        events = sum(1 for _ in open(csv)) - 1
    print(f"{target.relative_to(OUT.parent.parent)}: {events} events (result {result})")


def main():
    names = sys.argv[1:] or list(PROGRAMS)
    for name in names:
        if name not in PROGRAMS:
            sys.exit(f"unknown program {name!r}; the programs are: {', '.join(PROGRAMS)}")
        record(name)


if __name__ == "__main__":
    main()
