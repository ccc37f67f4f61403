"""Read a factory view with webdataset's `wids` (an indexed dataset over the shards as they are), and train a
tiny model on it for N steps.

    python docs/examples/wids_view.py --data data/paper.json --steps 10

`factory export wids VIEW --out FILE.json --indices FILE.npy` writes the shard list and the view's indices
(done here in Python: `view.export_wids`). Needs `pip install wids` (the `examples` extra).
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
import wids

import factory


def to_tensors(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """wids' sample (PIL images under '.png', '.mask.png') as (image [3,H,W] in [-1,1], mask [1,H,W] in {0,1})."""
    image = torch.from_numpy(np.asarray(sample[".png"].convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)
    mask = torch.from_numpy((np.asarray(sample[".mask.png"].convert("L")) > 127).astype(np.float32))[None]
    return image, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="view JSON (or dataset folder)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    view = factory.open(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        shards, indices = os.path.join(tmp, "view.wids.json"), os.path.join(tmp, "view.wids.npy")
        view.export_wids(shards, indices)
        base = wids.ShardListDataset(shards, cache_dir=os.path.join(tmp, "cache"))
        subset = torch.utils.data.Subset(base, np.load(indices))
        keys = [subset[i]["__key__"] for i in range(len(subset))]
        assert keys == view.keys()
        print(f"wids: {len(subset)} samples of {args.data} from {len(base)} in {len(view.shard_urls())} shards")
        if args.steps:
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))
            opt = torch.optim.Adam(net.parameters(), lr=1e-2)
            loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, shuffle=True,
                                                 collate_fn=lambda b: tuple(map(torch.stack, zip(*map(to_tensors, b)))))
            step = 0
            while step < args.steps:
                for image, mask in loader:
                    loss = F.binary_cross_entropy_with_logits(net(image), mask)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    step += 1
                    if step == args.steps:
                        break
            print(f"trained {step} steps, last loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
