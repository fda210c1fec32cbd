#!/usr/bin/env python3
"""Records the allocation traces of real NumPy, SciPy and scikit-learn programs into
traces/recorded/, the fixtures the defaults are checked on beside ../shared/traces.

    python3 -m venv /tmp/rec && /tmp/rec/bin/pip install -r scripts/record_requirements.txt
    (cd crates/tensorpool-py && /tmp/rec/bin/maturin build --release -i /tmp/rec/bin/python -o /tmp/wheels)
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


def _layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(var + eps) + b


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _block_weights(rng, d, layers):
    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    return [
        {
            "ln1": (np.ones(d, np.float32), np.zeros(d, np.float32)),
            "qkv": w(d, 3 * d),
            "proj": w(d, d),
            "ln2": (np.ones(d, np.float32), np.zeros(d, np.float32)),
            "fc": w(d, 4 * d),
            "out": w(4 * d, d),
        }
        for _ in range(layers)
    ]


def np_gpt_kv():
    """NumPy: a GPT-style decoder (6 layers, d_model 384, 6 heads, vocabulary 8,000,
    random weights) generating 96 tokens greedily after a 32-token prompt, with a
    key/value cache per layer grown by `np.concatenate` at every token, as NumPy
    GPT implementations (picoGPT and its KV-cache variants) write it."""
    d, heads, layers, vocab, prompt, new = 384, 6, 6, 8000, 32, 96
    rng = np.random.default_rng(0)
    wte = (rng.standard_normal((vocab, d)) * 0.02).astype(np.float32)
    wpe = (rng.standard_normal((prompt + new, d)) * 0.01).astype(np.float32)
    blocks = _block_weights(rng, d, layers)
    ln_f = (np.ones(d, np.float32), np.zeros(d, np.float32))
    cache = [None] * layers
    tokens = list(rng.integers(0, vocab, prompt))

    def attend(x, i):
        b = blocks[i]
        q, k, v = np.split(_layer_norm(x, *b["ln1"]) @ b["qkv"], 3, axis=-1)
        if cache[i] is not None:
            k = np.concatenate([cache[i][0], k])
            v = np.concatenate([cache[i][1], v])
        cache[i] = (k, v)
        n, t = q.shape[0], k.shape[0]
        qh = q.reshape(n, heads, -1).transpose(1, 0, 2)
        kh = k.reshape(t, heads, -1).transpose(1, 2, 0)
        vh = v.reshape(t, heads, -1).transpose(1, 0, 2)
        mask = np.triu(np.full((n, t), -1e9, np.float32), t - n + 1)
        att = _softmax(qh @ kh / np.sqrt(d // heads) + mask) @ vh
        x = x + att.transpose(1, 0, 2).reshape(n, d) @ b["proj"]
        return x + _gelu(_layer_norm(x, *b["ln2"]) @ b["fc"]) @ b["out"]

    inputs = tokens
    for _ in range(new):
        start = len(tokens) - len(inputs)
        x = wte[inputs] + wpe[start : start + len(inputs)]
        for i in range(layers):
            x = attend(x, i)
        logits = _layer_norm(x[-1:], *ln_f) @ wte.T
        nxt = int(logits.argmax())
        tokens.append(nxt)
        inputs = [nxt]
    return tokens[-1]


def np_vit():
    """NumPy: a ViT-style image classifier (patch embedding of 16 x 16 patches of
    224 x 224 images, 6 encoder layers, d_model 384, 6 heads, random weights) run on
    4 batches of 2 images, as an inference loop does."""
    d, heads, layers, patch, classes = 384, 6, 6, 16, 1000
    rng = np.random.default_rng(0)
    blocks = _block_weights(rng, d, layers)
    w_patch = (rng.standard_normal((3 * patch * patch, d)) * 0.02).astype(np.float32)
    cls = np.zeros((1, 1, d), np.float32)
    pos = (rng.standard_normal((1, 197, d)) * 0.01).astype(np.float32)
    head = (rng.standard_normal((d, classes)) * 0.02).astype(np.float32)
    ln_f = (np.ones(d, np.float32), np.zeros(d, np.float32))
    predictions = []
    for _ in range(4):
        images = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
        n = images.shape[0]
        p = images.reshape(n, 3, 14, patch, 14, patch).transpose(0, 2, 4, 1, 3, 5)
        x = p.reshape(n, 196, 3 * patch * patch) @ w_patch
        x = np.concatenate([np.broadcast_to(cls, (n, 1, d)), x], axis=1) + pos
        for b in blocks:
            h = _layer_norm(x, *b["ln1"]) @ b["qkv"]
            q, k, v = (
                t.reshape(n, 197, heads, -1).transpose(0, 2, 1, 3)
                for t in np.split(h, 3, axis=-1)
            )
            att = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)) @ v
            x = x + att.transpose(0, 2, 1, 3).reshape(n, 197, d) @ b["proj"]
            x = x + _gelu(_layer_norm(x, *b["ln2"]) @ b["fc"]) @ b["out"]
        logits = _layer_norm(x[:, 0], *ln_f) @ head
        predictions.extend(logits.argmax(axis=-1).tolist())
    return predictions


PROGRAMS = {
    f.__name__: f
    for f in (sk_forest, sk_kmeans_pca, sk_ridge_cv, np_wave, scipy_sparse, np_gpt_kv, np_vit)
}


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
