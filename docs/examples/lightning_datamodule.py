"""A LightningDataModule over a factory dataset or view: train on its training split, validate on its hold-out.

    python docs/examples/lightning_datamodule.py --data data/paper.json --steps 20

Needs `pip install lightning` (the `examples` extra).
"""
from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F

import factory


class ViewData(L.LightningDataModule):
    """Train / hold-out loaders of a dataset or view (`factory.open(URL).torch`)."""

    def __init__(self, url: str, batch_size: int = 8, workers: int = 0, seed: int = 0):
        super().__init__()
        self.url, self.batch_size, self.workers, self.seed = url, batch_size, workers, seed

    def setup(self, stage: str | None = None) -> None:
        data = factory.open(self.url)
        # one rank here; under DDP, Lightning's ranks are read from torch.distributed by the dataset itself
        self.train_set = data.torch(split="train", seed=self.seed, batch_size=self.batch_size, flip=True,
                                     holdout_permille=100)
        self.val_set = data.torch(split="holdout", batch_size=self.batch_size, holdout_permille=100)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, num_workers=self.workers)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.workers)


class TinySegmenter(L.LightningModule):
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, 1, 1))

    def training_step(self, batch, _):
        image, mask = batch
        loss = F.binary_cross_entropy_with_logits(self.net(image), mask)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        image, mask = batch
        iou = ((self.net(image) > 0) & (mask > 0.5)).sum() / ((self.net(image) > 0) | (mask > 0.5)).sum().clamp(min=1)
        self.log("val_iou", iou)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder, s3:// URL or view JSON")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    dm = ViewData(args.data, batch_size=args.batch_size)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=2)
    model = TinySegmenter()
    trainer.fit(model, datamodule=dm)
    trainer.validate(model, datamodule=dm, verbose=False)
    print(f"trained {trainer.global_step} steps on {len(dm.train_set)} training samples of {args.data}; "
          f"hold-out {len(dm.val_set)} samples, val_iou {float(trainer.callback_metrics['val_iou']):.3f}")


if __name__ == "__main__":
    main()
