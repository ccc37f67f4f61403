"""`trainers train`: thin click command over trainers.train.train (attached to the group in
trainers/cli/__init__.py, which turns every FactoryError into a one-line error)."""
from __future__ import annotations

import click

from trainers.cli.options import cache_options


@click.command("train")
@click.option("--data", required=True, metavar="DATASET|VIEW",
              help="dataset folder/URL (manifest.json inside) or a view JSON written by `factory filter`")
@click.option("--out", required=True, metavar="RUN", help="run folder: model.safetensors, model.json, card.json, "
              "checkpoints")
@click.option("--steps", default=12_000, show_default=True, type=click.IntRange(min=1), help="optimizer steps")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Adam learning rate")
@click.option("--lr-step", default=8_000, show_default=True, type=click.IntRange(min=0),
              help="step from which the lr is multiplied by --lr-gamma (0: never)")
@click.option("--lr-gamma", default=0.2, show_default=True, type=float, help="lr factor after --lr-step")
@click.option("--batch-size", default=95, show_default=True, type=click.IntRange(min=1),
              help="samples per step PER RANK (a step consumes ranks x batch-size samples)")
@click.option("--width", default=64, show_default=True, type=click.IntRange(min=1), help="U-Net base width")
@click.option("--workers", default=None, type=click.IntRange(min=0), show_default="CPUs per rank, max 8",
              help="data-loader worker processes per rank (0: load in the training process)")
@click.option("--seed", default=0, show_default=True, type=int, help="seeds weights, data order and flips")
@click.option("--holdout-permille", default=10, show_default=True, type=click.IntRange(0, 999),
              help="keys with int(sha256(key),16) % 1000 < this are validation only")
@click.option("--val-max", default=1000, show_default=True, type=click.IntRange(min=0),
              help="validate on at most this many hold-out samples (0: all)")
@click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(min=0),
              help="checkpoint every N steps (0: only at the end)")
@click.option("--val-every", default=1000, show_default=True, type=click.IntRange(min=0),
              help="validate on the hold-out every N steps (0: only at the end)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda (= cuda:LOCAL_RANK), cuda:N")
@click.option("--mask", type=click.Choice(["clean", "raw"]), default="clean", show_default=True,
              help="train on the cleaned masks or the raw ones (datasets made with --keep-raw-mask)")
@click.option("--mask-source", type=click.Choice(["mask", "teacher", "intersection"]), default="mask",
              show_default=True, help="train on the GAN mask, the teacher's (relabelled datasets; p >= 0.5), or both")
@click.option("--flip/--no-flip", default=True, show_default=True, help="random horizontal flips (seeded)")
@click.option("--shuffle-window", default=2000, show_default=True, type=click.IntRange(min=1),
              help="samples shuffled together (consecutive shards in a seeded shard order)")
@click.option("--access", type=click.Choice(["stream", "random"]), default="stream", show_default=True,
              help="stream: shard by shard, shuffled in --shuffle-window windows; random: each sample read by key "
                   "(one range read; format version 2, else run factory upgrade), shuffled over the whole dataset")
@click.option("--deterministic/--no-deterministic", default=True, show_default=True,
              help="torch deterministic algorithms (bit-exact resume on CPU; may be slower on GPU)")
@click.option("--resume", is_flag=True, help="continue RUN from its newest checkpoint (exactly)")
@click.option("--allow-remote-shards", is_flag=True, help="trust shard URLs in a remote manifest")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="do not check each shard's sha256 against the manifest as it is read (checked once per process by default)")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="progress on rank 0 (stderr): a bar on a terminal, else one line every --progress-every s")
@click.option("--progress-every", default=30.0, show_default=True, type=click.FloatRange(min=0), metavar="SECONDS",
              help="seconds between progress lines when stderr is not a terminal (logs, pipes)")
@cache_options
@click.option("--audit", is_flag=True, hidden=True, help="write RUN/audit/rank-R.json (rows per step, digest)")
def train(*, data, out, steps, lr, lr_step, lr_gamma, batch_size, width, workers, seed, holdout_permille, val_max,
          checkpoint_every, val_every, device, mask, mask_source, flip, shuffle_window, access, deterministic, resume,
          allow_remote_shards, no_verify, progress, progress_every, audit, cache, cache_dir, cache_limit):
    """Train the U-Net on a dataset or view (the paper's recipe by default).

    \b
    Examples:
      trainers train --data /data/bigbigan-imagenet --out runs/unet
      trainers train --data views/paper.json --out runs/unet --resume
      trainers train --data data/relabelled --mask-source teacher --out runs/round2
      trainers train --data views/paper.json --access random --out runs/shuffled
      torchrun --standalone --nproc-per-node 8 -m trainers.cli train --data s3://b/ds --out runs/unet --batch-size 12
      trainers train --data s3://b/ds --out runs/unet --cache-dir /scratch/shards --cache-limit 200G
    """
    from trainers.train import TrainConfig
    from trainers.train import train as run_training

    cfg = TrainConfig(data=data, out=out, steps=steps, lr=lr, lr_step=lr_step, lr_gamma=lr_gamma,
                      batch_size=batch_size, width=width, workers=workers, seed=seed,
                      holdout_permille=holdout_permille, val_max=val_max, checkpoint_every=checkpoint_every,
                      val_every=val_every, device=device, mask=mask, mask_source=mask_source, flip=flip,
                      shuffle_window=shuffle_window, access=access,
                      deterministic=deterministic, resume=resume, allow_remote_shards=allow_remote_shards,
                      verify=not no_verify,
                      progress=progress, progress_every=progress_every, audit=audit, cache=cache,
                      cache_dir=cache_dir, cache_limit=cache_limit)
    card = run_training(cfg)
    if card.get("validation"):  # rank 0 only
        v = card["validation"]["metrics"]
        vals = "  ".join(f"{k}={v[k]:.4f}" for k in ("bce", "IoU", "accuracy") if k in v)
        click.echo(f"{out}: step {card['training']['steps']}, loss {card['training']['final_train_loss']:.4f}"
                   + (f", hold-out {vals}" if vals else "") + f"; card {out}/card.json")
