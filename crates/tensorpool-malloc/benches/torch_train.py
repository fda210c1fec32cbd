"""A PyTorch CPU training step: a small convolutional network on 32x32 images,
batch 64, 30 steps of forward, backward and SGD (torch's CPU allocator is a plain
posix_memalign/free: every tensor goes to the preloaded allocator). Prints the time
in ms."""
import time

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(2)
model = nn.Sequential(
    nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10),
)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(64, 3, 32, 32)
y = torch.randint(0, 10, (64,))
loss_fn = nn.CrossEntropyLoss()
for _ in range(3):  # warm-up
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
start = time.perf_counter()
for _ in range(30):
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
print(f"{(time.perf_counter() - start) * 1e3:.1f}")
