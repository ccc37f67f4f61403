"""BigBiGAN-128 generator: `model` (the authors' layers, exact), `fused` (the fast polyphase variant),
`checkpoint` (reading and checking weights files), `generator` (the registered adapter)."""
from factory.generators.bigbigan import generator  # noqa: F401  (registers "bigbigan")
