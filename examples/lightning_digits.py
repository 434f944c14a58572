"""A LightningModule on scikit-learn's bundled digits, watched and steered by traintop through one
callback: `Trainer(callbacks=[TraintopCallback()])`.

    python examples/lightning_digits.py --epochs 20     # and in another terminal: traintop attach latest
    torchrun --nproc-per-node 2 examples/lightning_digits.py --devices 2    # DDP: one run, both ranks steered
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning as L
except ImportError:  # the older package name works the same
    import pytorch_lightning as L

from traintop.lightning import TraintopCallback


class DigitsMLP(L.LightningModule):
    def __init__(self, lr: float = 1e-3, hidden: int = 128, epochs: int = 20):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_accuracy", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1, help="processes (DDP on the CPU when more than 1)")
    args = parser.parse_args()

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    train = DataLoader(TensorDataset(x[:1500], y[:1500]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=256)
    several = {"strategy": "ddp", "accelerator": "cpu", "devices": args.devices} if args.devices > 1 else {}
    trainer = L.Trainer(max_epochs=args.epochs, accumulate_grad_batches=args.accumulate, **several,
                        callbacks=[TraintopCallback("digits-lightning")], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DigitsMLP(lr=args.lr, epochs=args.epochs), train, val)


if __name__ == "__main__":
    main()
