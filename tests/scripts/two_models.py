"""Trains one small model for two epochs, then a second one with an optimizer of its own (its steps slowed down)."""
import sys, time, torch
import torch.nn.functional as F
torch.manual_seed(0)
x = torch.randn(64, 8); y = (x.sum(1) > 0).long()
epochs2 = int(sys.argv[1]) if len(sys.argv) > 1 else 100
for k in range(2):
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for ep in range(2 if k == 0 else epochs2):
        for i in range(0, 64, 8):
            loss = F.cross_entropy(m(x[i:i+8]), y[i:i+8])
            opt.zero_grad(); loss.backward(); opt.step()
            if k == 1:
                time.sleep(0.01)
    print("phase", k, "lr", opt.param_groups[0]["lr"], flush=True)
