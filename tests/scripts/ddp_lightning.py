"""A Lightning Trainer with traintop's callback on the processes torchrun started (strategy "ddp",
gloo on the CPU). Each rank writes the learning rate its optimizer used at every step to
`used-rank<R>.txt` in the working folder, one line per step, so a test can tell which rate every
rank trained with at which step.

    torchrun --nproc-per-node 2 ddp_lightning.py EPOCHS [SLEEP]
"""

import os
import sys
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from traintop.lightning import TraintopCallback

epochs = int(sys.argv[1])
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


class Recording(torch.optim.SGD):
    """SGD that writes down the rate it uses, from inside its own step, after every hook has run."""

    def step(self, closure=None):
        loss = super().step(closure)  # Lightning's closure runs forward and backward inside
        with open(f"used-rank{torch.distributed.get_rank()}.txt", "a") as f:
            f.write(f"{self.param_groups[0]['lr']!r}\n")
        return loss


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        if pause:
            time.sleep(pause)
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return Recording(self.parameters(), lr=0.1)


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = (x.sum(1) > 0).long()
    trainer = L.Trainer(max_epochs=epochs, strategy="ddp", accelerator="cpu", devices=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TraintopCallback("ddp-lightning")])
    trainer.fit(Tiny(), DataLoader(TensorDataset(x[:448], y[:448]), batch_size=32),
                DataLoader(TensorDataset(x[448:], y[448:]), batch_size=32))
