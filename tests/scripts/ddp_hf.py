"""A Hugging Face Trainer with traintop's callback on the processes torchrun started (gloo on the
CPU; the Trainer reads torchrun's environment). Each rank writes the learning rate its optimizer
used at every step to `used-rank<R>.txt` in the working folder, one line per step.

    torchrun --nproc-per-node 2 ddp_hf.py EPOCHS [SLEEP]
"""

import os
import sys
import time

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from traintop.transformers import TraintopCallback

epochs = float(sys.argv[1])
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


class Recording(torch.optim.SGD):
    """SGD that writes down the rate it uses, from inside its own step, after every hook has run."""

    def step(self, closure=None):
        with open(f"used-rank{torch.distributed.get_rank()}.txt", "a") as f:
            f.write(f"{self.param_groups[0]['lr']!r}\n")
        return super().step(closure)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 2)

    def forward(self, x, labels=None):
        if pause and self.training:
            time.sleep(pause)
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Rows(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


if __name__ == "__main__":
    torch.manual_seed(0)
    model = Tiny()
    args = TrainingArguments(output_dir=os.path.join(os.getcwd(), "hf-out"), num_train_epochs=epochs,
                             per_device_train_batch_size=16, lr_scheduler_type="constant", save_strategy="no",
                             eval_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                             logging_steps=100000)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(512), eval_dataset=Rows(64),
                      optimizers=(Recording(model.parameters(), lr=0.1), None),
                      callbacks=[TraintopCallback("ddp-hf")])
    trainer.train()
