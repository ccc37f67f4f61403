"""BigGAN-deep (the `pytorch-pretrained-biggan` checkpoints): `model` (the network, the port's keys),
`checkpoint` (reading and writing config.json + weights), `generator` (the registered adapter)."""
from factory.generators.biggan import generator  # noqa: F401  (registers "biggan")
