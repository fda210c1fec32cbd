"""NumPy workloads used by the tests and the benchmark script.

``mlp_training(steps)`` trains a small two-layer perceptron with plain NumPy
(forward pass, softmax cross-entropy, backward pass, SGD with momentum) on a fixed
synthetic dataset: a NumPy-heavy loop of many temporaries of a few sizes, the
allocation pattern of numeric Python code. It is deterministic, so its result
under ``tensorpool.install()`` can be compared bit for bit with NumPy's allocator.
"""

from __future__ import annotations

import numpy as np


def mlp_training(
    steps: int = 50,
    batch: int = 64,
    features: int = 128,
    hidden: int = 256,
    classes: int = 10,
    seed: int = 0,
) -> tuple[list[float], np.ndarray]:
    """Trains the MLP for ``steps`` minibatches; returns the losses and the final
    first-layer weights."""
    rng = np.random.default_rng(seed)
    x_all = rng.standard_normal((batch * 8, features)).astype(np.float32)
    true_w = rng.standard_normal((features, classes)).astype(np.float32)
    y_all = np.argmax(x_all @ true_w, axis=1)
    w1 = (rng.standard_normal((features, hidden)) * np.sqrt(2.0 / features)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = (rng.standard_normal((hidden, classes)) * np.sqrt(2.0 / hidden)).astype(np.float32)
    b2 = np.zeros(classes, np.float32)
    params = [w1, b1, w2, b2]
    velocity = [np.zeros_like(p) for p in params]
    lr, momentum = np.float32(0.05), np.float32(0.9)
    losses = []
    for step in range(steps):
        lo = (step % 8) * batch
        x, y = x_all[lo : lo + batch], y_all[lo : lo + batch]
        # forward
        h_pre = x @ w1 + b1
        h = np.maximum(h_pre, 0)
        logits = h @ w2 + b2
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probs = exp / exp.sum(axis=1, keepdims=True)
        loss = -np.log(probs[np.arange(batch), y] + 1e-9).mean()
        losses.append(float(loss))
        # backward
        dlogits = probs.copy()
        dlogits[np.arange(batch), y] -= 1
        dlogits /= batch
        dw2 = h.T @ dlogits
        db2 = dlogits.sum(axis=0)
        dh = dlogits @ w2.T
        dh[h_pre <= 0] = 0
        dw1 = x.T @ dh
        db1 = dh.sum(axis=0)
        # update
        for p, v, g in zip(params, velocity, [dw1, db1, dw2, db2]):
            v *= momentum
            v -= lr * g
            p += v
    return losses, w1
