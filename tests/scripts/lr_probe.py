"""A watched loop that writes down the learning rate its optimizer actually uses at every step.

    python lr_probe.py OUT.json step|cosine|onecycle STEPS [--sleep S]

The optimizer records `param_groups[0]["lr"]` from inside its own `step`, after every hook has
run, and the scheduler's own view (`get_last_lr`) beside it, so a test can tell the rate used
from the rate the schedule believes in.
"""

import json
import sys
import time

import torch

import traintop

out, schedule, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0


class Recording(torch.optim.SGD):
    used: list = []

    def step(self, closure=None):
        self.used.append(self.param_groups[0]["lr"])
        return super().step(closure)


torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = Recording(model.parameters(), lr=0.1)
scheduler = {
    "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.5),
    "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
    "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps),
}[schedule]()
believed = []
run = traintop.watch(model, optimizer, name=f"lr-probe-{schedule}")
x = torch.randn(256, 4)
y = x.sum(1, keepdim=True)
for step in range(steps):
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    run.step(loss)
    optimizer.step()
    believed.append(scheduler.get_last_lr()[0])
    scheduler.step()
    time.sleep(pause)
run.finish()
with open(out, "w") as f:
    json.dump({"used": Recording.used, "believed": believed}, f)
