"""The network and its files: ``unet`` (the U-Net and its ModelConfig; no I/O), ``authors`` (the paper
authors' released ``.pth`` U-Nets: safe reading, strict checks, key names), ``checkpoint`` (run folders,
``--model``, ``convert``, training checkpoints)."""
