"""BigGAN-deep's generator with exactly the state-dict keys of the `pytorch-pretrained-biggan` checkpoints
(``pytorch_model.bin`` + ``config.json``): the config (``BigGANConfig``, the port's fields and its 128/256/512
presets), spectral-norm layers folded once at load, truncation-indexed batch-norm statistics, bottleneck
blocks, attention, and the exact fp32 forward (``BigGAN``). No I/O here."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from factory.format import FactoryError

# (upsample?, input channel multiplier, output channel multiplier) of each block, as the port defines them.
_LAYERS_128 = ((False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4),
               (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1))
_LAYERS_256 = _LAYERS_128[:5] + ((True, 8, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2),
                                 (False, 2, 2), (True, 2, 1))
_LAYERS_512 = _LAYERS_256 + ((False, 1, 1), (True, 1, 1))
PRESET_LAYERS = {128: _LAYERS_128, 256: _LAYERS_256, 512: _LAYERS_512}
CONFIG_KEYS = ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "layers",
               "attention_layer_position", "eps", "n_stats")


@dataclass(frozen=True)
class BigGANConfig:
    """The port's ``config.json`` fields; defaults are its 128 px model. ``class_embed_dim`` is recorded
    but, as in the port, the class embedding has width ``z_dim``."""

    output_dim: int = 128
    z_dim: int = 128
    class_embed_dim: int = 128
    channel_width: int = 128
    num_classes: int = 1000
    layers: tuple = _LAYERS_128
    attention_layer_position: int = 8
    eps: float = 1e-4
    n_stats: int = 51

    def __post_init__(self):
        def bad(msg):
            raise FactoryError(f"invalid BigGAN config: {msg}")

        for name in ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "n_stats"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(f"{name}={v!r} must be a positive integer")
        if self.n_stats < 2:
            bad(f"n_stats={self.n_stats}: at least 2 truncation statistics are needed")
        try:
            layers = tuple((bool(u), int(a), int(b)) for u, a, b in self.layers)
        except (TypeError, ValueError):
            bad(f"layers must be a list of [upsample, in, out] triples, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        if not layers or layers[0][1] != 16 or layers[-1][2] != 1:
            bad("layers must start with 16x and end with 1x channel_width (the port's stem and output convolution)")
        for i, (_, cin, cout) in enumerate(layers):
            if i and cin != layers[i - 1][2]:
                bad(f"layer {i} takes {cin}x channels but layer {i - 1} gives {layers[i - 1][2]}x")
            if cout not in (cin, cin / 2) or (self.channel_width * cin) % 4:
                bad(f"layer {i} ({cin}x -> {cout}x): a block keeps or halves its channels, divisible by 4")
        if not 0 <= self.attention_layer_position < len(layers):
            bad(f"attention_layer_position={self.attention_layer_position} outside the {len(layers)} layers")
        if (self.channel_width * layers[self.attention_layer_position][1]) % 8:
            bad("attention needs channels divisible by 8")
        if 4 * 2 ** sum(u for u, _, _ in layers) != self.output_dim:
            bad(f"output_dim={self.output_dim} but the layers upsample 4 px to {4 * 2 ** sum(u for u, _, _ in layers)}")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            bad(f"eps={self.eps!r} must be a positive number")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [list(t) for t in self.layers]
        return d

    def short(self) -> str:
        return f"{self.output_dim}px ch={self.channel_width} z={self.z_dim} classes={self.num_classes} blocks={len(self.layers)}"

    @classmethod
    def preset(cls, resolution: int) -> BigGANConfig:
        """The port's 128, 256 or 512 config."""
        if resolution not in PRESET_LAYERS:
            raise FactoryError(f"biggan: no preset for {resolution} px; the port defines 128, 256 and 512")
        return cls(output_dim=resolution, layers=PRESET_LAYERS[resolution])

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> BigGANConfig:
        """From the port's config.json contents; unknown keys are refused, absent ones take the port's defaults."""
        if not isinstance(d, Mapping):
            raise FactoryError(f"{source}: a BigGAN config is a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(CONFIG_KEYS))
        if unknown:
            raise FactoryError(f"{source}: unknown BigGAN config keys {unknown}; known: {', '.join(CONFIG_KEYS)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# Layers (parameters under the port's names; spectral norm folded once by `fold`)
# ----------------------------------------------------------------------------------------------


class SNLayer(nn.Module):
    """A spectrally normalised linear (k=0) or k x k convolution. Keys: weight_orig, weight_u, weight_v
    (and bias). ``fold()`` sets ``weight = weight_orig / (u . W v)`` from the stored vectors, the eval-mode
    value of torch's spectral norm; the forward uses the folded weight."""

    def __init__(self, n_in: int, n_out: int, *, kernel: int = 0, bias: bool = True):
        super().__init__()
        shape = (n_out, n_in) if kernel == 0 else (n_out, n_in, kernel, kernel)
        self.kernel = kernel
        self.weight_orig = nn.Parameter(torch.zeros(shape))
        if bias:
            self.bias = nn.Parameter(torch.zeros(n_out))
        else:
            self.bias = None
        self.register_buffer("weight_u", torch.zeros(n_out))
        self.register_buffer("weight_v", torch.zeros(n_in * max(kernel, 1) ** 2))
        self.register_buffer("weight", torch.zeros(shape), persistent=False)

    @torch.no_grad()
    def fold(self) -> None:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        self.weight = w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == 0:
            return F.linear(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, padding=self.kernel // 2)


def stats_position(truncation: float, n_stats: int) -> tuple[int, float]:
    """(index, weight) of the stored statistics used at ``truncation``, the port's rule: with
    ``coef, i = modf(truncation / step)``, ``mean = means[i] * coef + means[i + 1] * (1 - coef)``."""
    coef, start = math.modf(truncation / (1.0 / (n_stats - 1)))
    return int(start), coef


class TruncatedBN(nn.Module):
    """Batch norm on stored statistics (``running_means/vars [n_stats, C]``, one row per truncation step);
    conditional (``1 + scale(c)``, ``offset(c)``, spectral-norm linears without bias) or with a fixed affine."""

    def __init__(self, channels: int, *, n_stats: int, eps: float, cond_dim: int | None):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        self.conditional = cond_dim is not None
        if self.conditional:
            self.scale = SNLayer(cond_dim, channels, bias=False)
            self.offset = SNLayer(cond_dim, channels, bias=False)
        else:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def statistics(self, position: tuple[int, float]) -> tuple[torch.Tensor, torch.Tensor]:
        i, coef = position
        if coef == 0.0:
            return self.running_means[i], self.running_vars[i]
        mean = self.running_means[i] * coef + self.running_means[i + 1] * (1 - coef)
        var = self.running_vars[i] * coef + self.running_vars[i + 1] * (1 - coef)
        return mean, var

    def forward(self, x: torch.Tensor, position: tuple[int, float], cond: torch.Tensor | None = None) -> torch.Tensor:
        mean, var = self.statistics(position)
        if not self.conditional:
            return F.batch_norm(x, mean, var, self.weight, self.bias, training=False, momentum=0.0, eps=self.eps)
        gain = 1 + self.scale(cond)[:, :, None, None]
        shift = self.offset(cond)[:, :, None, None]
        return (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps) * gain + shift


class Bottleneck(nn.Module):
    """One BigGAN-deep block: BN-ReLU-1x1 down to in/4, (upsample) BN-ReLU-3x3, BN-ReLU-3x3, BN-ReLU-1x1 out;
    the skip drops the second half of its channels when the block halves them, and is upsampled with it."""

    def __init__(self, cin: int, cout: int, *, cond_dim: int, upsample: bool, n_stats: int, eps: float):
        super().__init__()
        mid = cin // 4
        self.upsample = upsample
        self.cout = cout
        for i, channels in enumerate((cin, mid, mid, mid)):
            setattr(self, f"bn_{i}", TruncatedBN(channels, n_stats=n_stats, eps=eps, cond_dim=cond_dim))
        self.conv_0 = SNLayer(cin, mid, kernel=1)
        self.conv_1 = SNLayer(mid, mid, kernel=3)
        self.conv_2 = SNLayer(mid, mid, kernel=3)
        self.conv_3 = SNLayer(mid, cout, kernel=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, position: tuple[int, float]) -> torch.Tensor:
        h = self.conv_0(F.relu(self.bn_0(x, position, cond)))
        h = F.relu(self.bn_1(h, position, cond))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(F.relu(self.bn_2(h, position, cond)))
        h = self.conv_3(F.relu(self.bn_3(h, position, cond)))
        skip = x[:, : self.cout] if x.shape[1] != self.cout else x
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class Attention(nn.Module):
    """Self-attention over positions: queries at full resolution, keys and values 2x2 max-pooled,
    softmax without scaling, output 1x1 convolution, added with weight ``gamma``."""

    def __init__(self, channels: int):
        super().__init__()
        self.snconv1x1_theta = SNLayer(channels, channels // 8, kernel=1, bias=False)
        self.snconv1x1_phi = SNLayer(channels, channels // 8, kernel=1, bias=False)
        self.snconv1x1_g = SNLayer(channels, channels // 2, kernel=1, bias=False)
        self.snconv1x1_o_conv = SNLayer(channels // 2, channels, kernel=1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.snconv1x1_theta(x).flatten(2)  # [B, C/8, N]
        key = F.max_pool2d(self.snconv1x1_phi(x), 2).flatten(2)  # [B, C/8, N/4]
        value = F.max_pool2d(self.snconv1x1_g(x), 2).flatten(2)  # [B, C/2, N/4]
        weights = torch.softmax(torch.bmm(query.transpose(1, 2), key), dim=-1)  # [B, N, N/4]
        out = torch.bmm(value, weights.transpose(1, 2)).view(b, c // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(out)


class Synthesis(nn.Module):
    """The port's ``generator`` submodule: condition [z, class embedding] -> image."""

    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        ch, cond = cfg.channel_width, 2 * cfg.z_dim
        self.ch = ch
        self.gen_z = SNLayer(cond, 4 * 4 * 16 * ch)
        layers: list[nn.Module] = []
        for i, (up, cin, cout) in enumerate(cfg.layers):
            if i == cfg.attention_layer_position:
                layers.append(Attention(ch * cin))
            layers.append(Bottleneck(ch * cin, ch * cout, cond_dim=cond, upsample=up, n_stats=cfg.n_stats, eps=cfg.eps))
        self.layers = nn.ModuleList(layers)
        self.bn = TruncatedBN(ch, n_stats=cfg.n_stats, eps=cfg.eps, cond_dim=None)
        self.conv_to_rgb = SNLayer(ch, ch, kernel=3)

    def forward(self, cond: torch.Tensor, position: tuple[int, float]) -> torch.Tensor:
        # the stem's features are stored height, width, channels (the TF layout)
        x = self.gen_z(cond).view(-1, 4, 4, 16 * self.ch).permute(0, 3, 1, 2).contiguous()
        for layer in self.layers:
            x = layer(x, cond, position) if isinstance(layer, Bottleneck) else layer(x)
        x = self.conv_to_rgb(F.relu(self.bn(x, position)))
        return torch.tanh(x[:, :3])


class BigGAN(nn.Module):
    """``embeddings`` (a bias-free linear from class vectors to z_dim) and ``generator``, the port's keys.
    ``forward(z, classes, truncation)``: classes are int labels [B] or class vectors [B, num_classes]."""

    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.Linear(cfg.num_classes, cfg.z_dim, bias=False)
        self.generator = Synthesis(cfg)

    def fold_spectral_norm(self) -> None:
        """Compute every folded weight from weight_orig, u and v (call after loading weights)."""
        for m in self.modules():
            if isinstance(m, SNLayer):
                m.fold()

    def embed(self, classes: torch.Tensor) -> torch.Tensor:
        if classes.dim() == 1:  # int labels: the embedding's columns (the product with one-hot vectors)
            return self.embeddings.weight.t()[classes]
        return self.embeddings(classes)

    def forward(self, z: torch.Tensor, classes: torch.Tensor, truncation: float) -> torch.Tensor:
        if not 0 < truncation <= 1:
            raise FactoryError(f"biggan: truncation={truncation} must be in (0, 1]")
        cond = torch.cat((z, self.embed(classes).to(z.dtype)), dim=1)
        return self.generator(cond, stats_position(truncation, self.cfg.n_stats))
