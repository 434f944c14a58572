"""A plain PyTorch training script: an MLP on scikit-learn's bundled handwritten digits.

It knows nothing of traintop, and `traintop run examples/train_digits.py` still watches and steers
it (through the optimizer's step hooks). `watch_digits.py` is the same script with three lines
added for `traintop.watch`.

    python examples/train_digits.py --epochs 20 --lr 0.001
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--schedule", choices=["none", "step", "cosine", "onecycle"], default="cosine")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(args.seed)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
train, val = order[:1500], order[1500:]
loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=args.batch_size, shuffle=True)

model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
steps = args.epochs * len(loader)
scheduler = {
    "none": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
    "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=len(loader) * 5, gamma=0.5),
    "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
    "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps),
}[args.schedule]()

for epoch in range(args.epochs):
    model.train()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        out = model(x[val])
        val_loss = F.cross_entropy(out, y[val]).item()
        accuracy = (out.argmax(1) == y[val]).float().mean().item()
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f}  accuracy {accuracy:.4f}")
torch.save(model.state_dict(), "digits_mlp.pt")
