"""A DistributedDataParallel loop of your own, watched: every rank calls `traintop.watch` after
`init_process_group`; rank 0 records the run and serves the dashboard, and every rank obeys each
pause, learning-rate change, checkpoint and stop at the same step.

    torchrun --nproc-per-node 2 examples/ddp_watch.py --epochs 20    # then: traintop attach latest
    traintop run examples/ddp_watch.py --nproc-per-node 2 -- --epochs 20
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import traintop

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--batch-size", type=int, default=32, help="per rank")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step, to watch it slowly")
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(args.seed)  # the same initial weights on every rank
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
train, val = order[:1500], order[1500:]
sampler = DistributedSampler(TensorDataset(x[train], y[train]), seed=args.seed)
loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=args.batch_size, sampler=sampler)

model = DistributedDataParallel(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
run = traintop.watch(model, optimizer, name="digits-ddp", config=vars(args))

for epoch in run.epochs(args.epochs):
    sampler.set_epoch(epoch)
    model.train()
    for xb, yb in run.iter(loader):
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        run.step(loss)  # every rank: rank 0 records; a command is applied here, at the same step on all
        optimizer.step()
        if args.sleep:
            time.sleep(args.sleep)
        if run.should_stop:  # the same on every rank
            break
    model.eval()
    with torch.no_grad():  # each rank measures its half of the validation split; run.validate averages
        mine = val[rank::dist.get_world_size()]
        out = model.module(x[mine])
        val_loss = F.cross_entropy(out, y[mine]).item()
        accuracy = (out.argmax(1) == y[mine]).float().mean().item()
    run.validate(val_loss=val_loss, accuracy=accuracy)
run.finish()
if rank == 0:
    torch.save(model.module.state_dict(), os.path.join(os.getcwd(), "digits_ddp.pt"))
dist.destroy_process_group()
