"""A NumPy MLP trained with hand-written backpropagation: the tensor workload of
the lecture's readers (batch 128, 784-512-256-10, 300 steps). Prints the time in ms."""
import time

import numpy as np

rng = np.random.default_rng(0)
sizes = [784, 512, 256, 10]
w = [rng.standard_normal((a, b)).astype(np.float32) / np.sqrt(a) for a, b in zip(sizes, sizes[1:])]
x_all = rng.standard_normal((128 * 8, 784)).astype(np.float32)
y_all = rng.integers(0, 10, 128 * 8)

start = time.perf_counter()
for step in range(300):
    i = (step % 8) * 128
    x, y = x_all[i:i + 128], y_all[i:i + 128]
    acts = [x]
    for m in w[:-1]:
        acts.append(np.maximum(acts[-1] @ m, 0))
    logits = acts[-1] @ w[-1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(128), y] -= 1
    grad = p / 128
    for k in range(len(w) - 1, -1, -1):
        gw = acts[k].T @ grad
        if k:
            grad = (grad @ w[k].T) * (acts[k] > 0)
        w[k] -= 0.01 * gw
print(f"{(time.perf_counter() - start) * 1e3:.1f}")
