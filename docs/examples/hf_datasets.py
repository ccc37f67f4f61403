"""Open a factory view's samples with Hugging Face `datasets` (its "webdataset" loader), restricted to the view.

    python docs/examples/hf_datasets.py --data data/paper.json

Only the shards holding the view's samples are loaded (`shard_urls()`), then the rows the view rejected are
dropped by key. Needs `pip install datasets` (the `examples` extra).
"""
from __future__ import annotations

import argparse

import datasets

import factory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="view JSON (or dataset folder)")
    ap.add_argument("--cache-dir", help="Hugging Face datasets' cache (default: theirs)")
    args = ap.parse_args()
    view = factory.open(args.data)
    keys = set(view.keys())
    hf = datasets.load_dataset("webdataset", data_files={"train": view.shard_urls()}, split="train",
                               cache_dir=args.cache_dir)
    hf = hf.filter(lambda key: key in keys, input_columns="__key__")
    assert sorted(hf["__key__"]) == view.keys()
    first = hf[0]
    print(f"{len(hf)} samples of {args.data} in a Hugging Face dataset (columns {', '.join(hf.column_names)}); "
          f"first {first['__key__']}: image {first['png'].size}, mask {first['mask.png'].size}")


if __name__ == "__main__":
    main()
