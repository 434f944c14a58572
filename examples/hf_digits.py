"""A Hugging Face `Trainer` on scikit-learn's bundled digits, watched and steered by traintop through
one callback: `Trainer(..., callbacks=[TraintopCallback()])`.

Each 8x8 image is read as a sequence of 64 tokens (its pixel intensities, 0-16) by a tiny BERT
built from its config class, so nothing is downloaded.

    python examples/hf_digits.py --epochs 5     # and in another terminal: traintop attach latest
    torchrun --nproc-per-node 2 examples/hf_digits.py --epochs 5     # DDP: one run, both ranks steered
"""

import argparse
import tempfile

import numpy as np
import torch
from sklearn.datasets import load_digits
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from traintop.transformers import TraintopCallback


class Digits(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.ids = torch.tensor(images, dtype=torch.long)  # pixel intensities 0..16 as token ids
        self.labels = torch.tensor(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def accuracy(prediction):
    return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--logging-steps", type=int, default=500)
    args = parser.parse_args()

    digits = load_digits()
    data = digits.data.astype(np.int64)
    train, val = Digits(data[:1500], digits.target[:1500]), Digits(data[1500:], digits.target[1500:])
    config = BertConfig(vocab_size=17, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=10)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-digits-"), num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=64, gradient_accumulation_steps=args.accumulate, eval_strategy="epoch",
        save_strategy="no", logging_steps=args.logging_steps, report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=training, train_dataset=train, eval_dataset=val,
                      compute_metrics=accuracy, callbacks=[TraintopCallback("digits-hf")])
    trainer.train()


if __name__ == "__main__":
    main()
