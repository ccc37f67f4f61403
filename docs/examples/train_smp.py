"""Train a segmentation_models_pytorch U-Net (random init) on a factory dataset or view for N steps.

    python docs/examples/train_smp.py --data data/paper.json --steps 20

Needs `pip install segmentation-models-pytorch`, which installs torchvision (smp's encoders import timm,
which imports torchvision); pin torch first if your torch must not change.
"""
from __future__ import annotations

import argparse

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

import factory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder, s3:// URL or view JSON")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--encoder", default="resnet18")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = smp.Unet(args.encoder, encoder_weights=None, in_channels=3, classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = factory.open(args.data).torch(split="train", seed=0, batch_size=args.batch_size, flip=True)
    step, epoch = 0, 0
    while step < args.steps:
        data.set_epoch(epoch)
        for image, mask in torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=2):
            loss = F.binary_cross_entropy_with_logits(model(image), mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == 1 or step == args.steps:
                print(f"step {step}: loss {loss.item():.4f}")
            if step == args.steps:
                break
        epoch += 1
    print(f"trained smp.Unet({args.encoder}) {step} steps on {len(data)} samples of {args.data}")


if __name__ == "__main__":
    main()
