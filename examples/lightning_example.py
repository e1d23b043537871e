"""The loader as a LightningDataModule's train and val loaders: ``python examples/lightning_example.py``.

Lightning's defaults are safe with it: the two-batch sanity validation, ``limit_train_batches``, early
stopping and ``val_check_interval`` all start a fresh epoch at the next ``iter()``, as with torch's
DataLoader, so every validation epoch sees every image exactly once and a cut-short training epoch does
not shift the next one. Under DDP (``devices=N``) each process's loader shards itself and takes its GPU
from LOCAL_RANK, which is how Lightning places its processes.
"""
from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

import i2e_dali
from _common import demo_root, tiny_snn


class I2EDataModule(L.LightningDataModule):
    """``make_loader`` train/val loaders over ``data`` (keyword arguments go to make_loader)."""

    def __init__(self, data: str | None = None, batch_size: int = 16, **loader_kwargs):
        super().__init__()
        self.data, self.batch_size, self.loader_kwargs = data, batch_size, loader_kwargs
        self.train_loader = self.val_loader = None

    def setup(self, stage: str) -> None:
        # Built once per process and iterated every epoch: each iter() is a new epoch.
        root = demo_root(self.data)
        if self.train_loader is None:
            self.train_loader = i2e_dali.make_loader(root, "train", self.batch_size, **self.loader_kwargs)
            self.val_loader = i2e_dali.make_loader(root, "val", self.batch_size, **self.loader_kwargs)

    def train_dataloader(self):
        return self.train_loader

    def val_dataloader(self):
        return self.val_loader


class SNNClassifier(L.LightningModule):
    def __init__(self, num_classes: int, lr: float = 0.1):
        super().__init__()
        self.net = tiny_snn(num_classes)
        self.lr = lr

    def forward(self, events):
        out = self.net(events).mean(0)  # rate over the T timesteps
        functional.reset_net(self.net)
        return out

    def training_step(self, batch, batch_idx):
        events, labels = batch[0], batch[1]  # a Batch (events, labels[, indices])
        loss = F.cross_entropy(self(events), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        events, labels = batch[0], batch[1]
        acc = (self(events).argmax(1) == labels).float().mean()
        self.log("val_acc", acc, prog_bar=True, batch_size=labels.numel())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="ImageNet-layout folder with train/ and val/ (default: the demo set)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--limit-train-batches", type=float, default=1.0)
    args = p.parse_args(argv)
    dm = I2EDataModule(args.data, args.batch_size, size=args.size,
                       conversion=i2e_dali.Conversion(timesteps=args.timesteps))
    dm.setup("fit")
    model = SNNClassifier(dm.train_loader.num_classes)
    trainer = L.Trainer(max_epochs=args.epochs, limit_train_batches=args.limit_train_batches, logger=False,
                        enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    return trainer


if __name__ == "__main__":
    main()
