"""A loop that updates its weights by hand, without a torch.optim optimizer."""

import torch

w = torch.zeros(3, requires_grad=True)
x, y = torch.randn(64, 3), torch.randn(64)
for _ in range(20):
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= 0.1 * w.grad
        w.grad.zero_()
print("done")
