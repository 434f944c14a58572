"""examples/train_digits.py with three lines added and three changed: `traintop.watch` gives this
loop the dashboard, attach over SSH, pause, learning-rate changes that the scheduler keeps,
validate, checkpoint and stop.

    python examples/watch_digits.py --epochs 20     # and in another terminal: traintop attach latest
"""

import argparse

import torch
import traintop
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
run = traintop.watch(model, optimizer, name="digits-watch", config=vars(args))
scheduler = {
    "none": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
    "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=len(loader) * 5, gamma=0.5),
    "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
    "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps),
}[args.schedule]()

for epoch in run.epochs(args.epochs):
    model.train()
    for xb, yb in run.iter(loader):
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        run.step(loss)
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        out = model(x[val])
        val_loss = F.cross_entropy(out, y[val]).item()
        accuracy = (out.argmax(1) == y[val]).float().mean().item()
    run.validate(val_loss=val_loss, accuracy=accuracy)
torch.save(model.state_dict(), "digits_mlp.pt")
