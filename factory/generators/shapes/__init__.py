"""`shapes`: a procedural test world that behaves like BigBiGAN where the paper relies on it, with ground truth.

Every image is one object (ellipse / rectangle / superellipse / star, blended
continuously) on a textured background (smooth noise, stripes, gradient). All
parameters are smooth functions of coordinates ``c = z @ Q`` of the latent in a
fixed orthonormal basis ``Q`` (the world's "weights", drawn from ``seed``), so the
image is a deterministic, continuous function of ``z``. See docs/shapes-world.md.

Named directions (columns of ``Q``, unit vectors):

- ``background`` -- like BigBiGAN's h_bg: moving along it darkens the background
  and lightens the object, so ``gray(G(z)) < gray(G(z + 5 h))`` recovers the object
  (the authors' luminance rule).
- ``brightness``, ``color`` -- act on all pixels alike (distractors).
- ``shift_x``, ``shift_y``, ``zoom`` -- move the whole scene (distractors).

Failure modes, in the proportions the paper's filters exist for (under N(0, I)):

- close-ups: big objects whose response to ``background`` bleeds onto the
  surrounding background, so the mask covers more than half the image;
- low contrast: washed-out grey images whose response to ``background`` is weak
  and follows a texture, so the mask is noise and the shifted image's histogram
  has a single mode;
- responsive spots: small background spots that respond like the object and
  add spurious small components, which connected-components cleanup removes.

The pixel math: ``pre_c(x) = base_c(x) + LAMBDA * c_bg * R(x) + brightness/colour terms``
and ``image = tanh(pre)``. ``R`` (the response field) is the same for all three
channels, so the luminance mask along ``background`` is exactly ``{R > 0}``.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from factory.format import FactoryError
from factory.generators import register

WORLD_VERSION = "shapes-v1"
DIRECTION_NAMES = ("background", "brightness", "color", "shift_x", "shift_y", "zoom")

# ---------------------------------------------------------------------------
# Coordinate layout: index of each scalar parameter in c = z @ Q.
# The six named directions come first so that they are exactly Q[:, 0..5].
_NAMES = list(DIRECTION_NAMES) + [
    "contrast",  # failure control: low -> washed out, weak response (histogram filter)
    "size",  # failure control: high -> close-up with bleeding mask (area filter)
    "spots",  # failure control: high -> responsive background spots (CC cleanup)
    "pos_x", "pos_y", "aspect", "angle", "squareness",
    "star_a3", "star_a5", "star_a6", "star_p3", "star_p5", "star_p6",
    "obj_lum", "obj_ch0", "obj_ch1", "obj_ch2", "obj_tex_amp", "obj_tex_p0", "obj_tex_p1",
    "bg_lum", "bg_ch0", "bg_ch1", "bg_ch2", "bg_tex_amp",
    "mix_noise", "mix_stripes", "mix_gradient",
    "stripe_angle", "stripe_freq", "stripe_phase", "grad_angle",
    "tint0", "tint1", "tint2", "spot_vis",
]
N_NOISE = 10  # sinusoids in the background's smooth noise
N_SPOTS = 4
N_TEX2 = 8  # sinusoids of the texture that drives the response of low-contrast samples
N_TEX3 = 8  # sinusoids that jitter the mask boundary
_NAMES += [f"noise_p{i}" for i in range(N_NOISE)]
_NAMES += [f"spot_x{i}" for i in range(N_SPOTS)] + [f"spot_y{i}" for i in range(N_SPOTS)]
_NAMES += [f"spot_w{i}" for i in range(N_SPOTS)]
_NAMES += [f"tex2_p{i}" for i in range(N_TEX2)] + [f"tex3_p{i}" for i in range(N_TEX3)]
COORD = {n: i for i, n in enumerate(_NAMES)}
N_COORDS = len(_NAMES)

# Constants of the world (not learnt; chosen so the failure proportions are realistic).
LAMBDA = 0.35  # response of the pre-activation to the background coordinate
EDGE = 0.02  # soft edge width of the object (normalised units; image spans [-1, 1])
RESP_EDGE = 0.03  # soft edge of the response field
JITTER = 0.07  # boundary displacement of the response field, in object radii (per unit of texture)
CONTRAST_T = -0.95  # contrast coordinate below this -> low contrast
SIZE_R0 = 0.42  # median object radius
SIZE_SIGMA = 0.32
SPILL_R0 = 0.52  # objects with radius above this start to bleed
SPILL_GAIN = 3.0
SPOTS_T = 0.5  # spots coordinate above this -> responsive spots


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / math.sqrt(math.fsum(x * x for x in v.tolist()))).astype(np.float32)


def orthonormal_basis(a: np.ndarray) -> np.ndarray:
    """The Q of ``a = Q R`` with ``diag(R) > 0`` (float64), the same bits on every machine.

    Modified Gram-Schmidt, each column orthogonalised twice, with every dot product and norm a
    correctly rounded ``math.fsum``: no BLAS or LAPACK kernel (whose last bits depend on the
    CPU kind OpenBLAS picks) decides a bit of the world.
    """
    cols = [a[:, j].astype(np.float64) for j in range(a.shape[1])]
    q: list[np.ndarray] = []
    for v in cols:
        for _ in range(2):
            for u in q:
                v = v - math.fsum((u * v).tolist()) * u
        q.append(v / math.sqrt(math.fsum((v * v).tolist())))
    return np.stack(q, 1)


class ShapesWorld:
    """The `shapes` generator. Build it with ``load_generator("shapes", ...)``."""

    def __init__(self, *, resolution: int = 128, dim_z: int = 120, device: str | torch.device = "cpu", seed: int = 0):
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 8:
            raise FactoryError(f"shapes: resolution must be an integer >= 8 (e.g. 64 or 128), got {resolution!r}")
        if not isinstance(dim_z, int) or isinstance(dim_z, bool) or dim_z < N_COORDS:
            raise FactoryError(f"shapes: dim_z must be an integer >= {N_COORDS} (default 120), got {dim_z!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise FactoryError(f"shapes: seed must be a non-negative integer (the world's weights), got {seed!r}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise FactoryError(f"shapes: bad device {device!r} ({e}); use 'cpu' or 'cuda'") from None
        self.resolution = resolution
        self.dim_z = dim_z
        self.seed = seed

        rng = np.random.default_rng([seed, 0x5A7E5])
        self._basis_np = orthonormal_basis(rng.standard_normal((dim_z, dim_z))).astype(np.float32)
        # Fixed random constants: wave vectors of the textures.
        self._k_noise = self._waves(rng, N_NOISE, 2.0, 7.0)
        self._a_noise = (1.0 / np.sqrt(N_NOISE / 2.0)) * rng.uniform(0.6, 1.4, N_NOISE).astype(np.float32)
        self._k_tex2 = self._waves(rng, N_TEX2, 4.0, 9.0)
        self._k_tex3 = self._waves(rng, N_TEX3, 5.0, 12.0)
        self._k_obj = self._waves(rng, 2, 9.0, 16.0)
        # colour direction: equal luminance change is not required; acts on all pixels alike
        self._hue = _unit(np.array([1.0, -0.35, -0.8]))

        h = hashlib.sha256()
        h.update(WORLD_VERSION.encode())
        for a in (self._basis_np, self._k_noise, self._a_noise, self._k_tex2, self._k_tex3, self._k_obj, self._hue):
            h.update(np.ascontiguousarray(a).tobytes())
        self._sha = h.hexdigest()

        # The world renders in float64 and rounds to float32 once, at the end: a last-bit difference of a
        # SIMD kernel (sin, exp, tanh, matmul differ by CPU capability) then cannot move a pixel across a
        # rounding boundary of the 8-bit image, nor a pixel across the mask's strict comparisons.
        t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=self.device)  # noqa: E731
        self._basis = t(self._basis_np[:, :N_COORDS])
        self._kn, self._an = t(self._k_noise), t(self._a_noise)
        self._k2, self._k3, self._ko = t(self._k_tex2), t(self._k_tex3), t(self._k_obj)
        self._hue_t = t(self._hue)
        n = resolution
        self._grid = (torch.arange(n, dtype=torch.float64, device=self.device) + 0.5) * (2.0 / n) - 1.0

    @staticmethod
    def _waves(rng, n: int, kmin: float, kmax: float) -> np.ndarray:
        ang = rng.uniform(0, math.pi, n)
        mag = rng.uniform(kmin, kmax, n)
        # math's cos/sin (libm), not numpy's SIMD-dispatched loops
        return np.array([[m * math.cos(a), m * math.sin(a)] for m, a in zip(mag.tolist(), ang.tolist())],
                        np.float64).reshape(n, 2).astype(np.float32)

    # ------------------------------------------------------------------ API
    def identity(self) -> dict:
        return {
            "name": "shapes",
            "world_version": WORLD_VERSION,
            "resolution": self.resolution,
            "dim_z": self.dim_z,
            "seed": self.seed,
            "weights_sha256": self._sha,
        }

    @property
    def basis(self) -> np.ndarray:
        """The world's orthonormal basis Q [dim_z, dim_z] float32 (c = z @ Q), a copy."""
        return self._basis_np.copy()

    def coordinate_direction(self, name: str) -> np.ndarray:
        """The unit latent direction of world coordinate ``name`` (a column of Q, see ``COORD``)."""
        return self._basis_np[:, COORD[name]].copy()

    def named_directions(self) -> dict[str, np.ndarray]:
        return {n: self.coordinate_direction(n) for n in DIRECTION_NAMES}

    def coords(self, z: torch.Tensor) -> torch.Tensor:
        """The world's parameter coordinates c = z @ Q  [B, N_COORDS] (float64)."""
        return self._check(z).double() @ self._basis

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.render(z)[0]

    def true_mask(self, z: torch.Tensor) -> torch.Tensor:
        return self.render(z, image=False)[1]

    def to(self, device) -> "ShapesWorld":
        return ShapesWorld(resolution=self.resolution, dim_z=self.dim_z, device=device, seed=self.seed)

    def eval(self) -> "ShapesWorld":
        return self

    # ------------------------------------------------------------ internals
    def _check(self, z) -> torch.Tensor:
        if not isinstance(z, torch.Tensor):
            z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self.dim_z:
            raise FactoryError(f"shapes: z must have shape [B, {self.dim_z}], got {tuple(z.shape)}")
        return z.to(device=self.device, dtype=torch.float32)

    def _waves_field(self, X, Y, k, phase, *, amp=None):
        """sum_s amp_s sin(k_s . (X, Y) + phase_s), separably: X [B, W], Y [B, H] -> [B, H, W]."""
        ax = k[:, 0][None, :, None] * X[:, None, :] + phase[:, :, None]  # [B, S, W]
        ay = k[:, 1][None, :, None] * Y[:, None, :]  # [B, S, H]
        sx, cx = torch.sin(ax), torch.cos(ax)
        if amp is not None:
            sx, cx = sx * amp[..., None], cx * amp[..., None]
        left = torch.cat([torch.cos(ay), torch.sin(ay)], 1).transpose(1, 2)  # [B, H, 2S]
        right = torch.cat([sx, cx], 1)  # [B, 2S, W]
        return torch.bmm(left, right)

    def render(self, z: torch.Tensor, image: bool = True):
        """Return (image [B,3,H,W] float32 in [-1,1] or None, true mask [B,H,W] bool).

        Works on chunks of a few images so that the per-pixel fields stay in cache
        (2-3x faster on CPU than one big batch); every sample is independent.
        """
        c = self.coords(z)
        step = max(1, min(16, 2**17 // (self.resolution * self.resolution)))
        if c.shape[0] <= step:
            return self._render(c, image)
        parts = [self._render(c[i : i + step], image) for i in range(0, c.shape[0], step)]
        imgs = torch.cat([p[0] for p in parts]) if image else None
        return imgs, torch.cat([p[1] for p in parts])

    def _render(self, c: torch.Tensor, image: bool):
        f = _Frame.of(c, self._grid)
        d, r, inside, mask = _object_geometry(f)
        if not image:
            return None, mask
        gc = torch.sigmoid(4.0 * (f.g("contrast") - CONTRAST_T))  # failure control: 1 = normal, 0 = washed out
        R, spots, spot_on = self._response(f, d, r, gc)
        bg, bg_lum = self._background(f, gc, spots, spot_on)
        obj = self._object_colour(f, gc, bg_lum)
        a = inside[:, None]
        pre = a * obj + (1 - a) * bg  # [B, 3, H, W]
        pre = pre + (LAMBDA * f.g("background"))[:, None, None, None] * R[:, None]
        pre = pre + (0.3 * f.g("brightness"))[:, None, None, None]
        pre = pre + (0.3 * f.g("color"))[:, None, None, None] * self._hue_t[None, :, None, None]
        return torch.tanh(pre).float(), mask

    def _response(self, f: _Frame, d: torch.Tensor, r: torch.Tensor, gc: torch.Tensor):
        """Response field R [B,H,W]: the object (+ bleeding halo), spots, texture for washed-out samples;
        also the spots field and how much the spots are on."""
        c, g, X, Y = f.c, f.g, f.X, f.Y
        spill = SPILL_GAIN * torch.nn.functional.softplus((r - SPILL_R0) / 0.05) * 0.05
        spot_on = torch.sigmoid(4.0 * (g("spots") - SPOTS_T))
        tex3 = self._waves_field(X, Y, self._k3, math.pi * c[:, COORD["tex3_p0"] : COORD["tex3_p0"] + N_TEX3]) / math.sqrt(N_TEX3 / 2)
        # the response boundary follows the object's, displaced by a smooth texture (imperfect masks)
        shift = spill[:, None, None] + JITTER * r[:, None, None] * tex3
        resp_obj = torch.tanh(-(d - shift) / RESP_EDGE)
        sxk = 0.85 * torch.tanh(c[:, COORD["spot_x0"] : COORD["spot_x0"] + N_SPOTS] / 1.2)
        syk = 0.85 * torch.tanh(c[:, COORD["spot_y0"] : COORD["spot_y0"] + N_SPOTS] / 1.2)
        wk = torch.sigmoid(2.0 * c[:, COORD["spot_w0"] : COORD["spot_w0"] + N_SPOTS] + 1.0)
        sig = (0.2 * r).clamp(max=0.08)[:, None, None]  # spot width, small next to the object
        gx = torch.exp(-0.5 * ((X[:, None, :] - sxk[:, :, None]) / sig) ** 2)  # [B, K, W]
        gy = torch.exp(-0.5 * ((Y[:, None, :] - syk[:, :, None]) / sig) ** 2) * wk[:, :, None]  # [B, K, H]
        spots = torch.bmm(gy.transpose(1, 2), gx)  # [B, H, W]
        tex2 = self._waves_field(X, Y, self._k2, math.pi * c[:, COORD["tex2_p0"] : COORD["tex2_p0"] + N_TEX2]) / math.sqrt(N_TEX2 / 2)
        gcb = gc[:, None, None]
        R = gcb * (resp_obj + 3.0 * spot_on[:, None, None] * spots) + (1 - gcb) * (0.2 * tex2)
        return R, spots, spot_on

    def _background(self, f: _Frame, gc: torch.Tensor, spots: torch.Tensor, spot_on: torch.Tensor):
        """Background [B,3,H,W]: a mix of smooth noise, stripes and a gradient, tinted; and its luminance [B]."""
        c, g, X, Y = f.c, f.g, f.X, f.Y
        B = c.shape[0]
        wmix = torch.softmax(1.2 * c[:, [COORD["mix_noise"], COORD["mix_stripes"], COORD["mix_gradient"]]], 1)
        onehot_noise = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, device=self.device)
        wmix = gc[:, None] * wmix + (1 - gc[:, None]) * onehot_noise  # washed-out images: noise only
        noise = self._waves_field(X, Y, self._kn, math.pi * c[:, COORD["noise_p0"] : COORD["noise_p0"] + N_NOISE],
                                  amp=self._an[None, :].expand(B, -1))
        sa_ = math.pi * torch.tanh(0.6 * g("stripe_angle"))
        kf = 4.0 + 3.0 * torch.tanh(g("stripe_freq")) + 3.0
        ks = torch.stack([kf * torch.cos(sa_), kf * torch.sin(sa_)], 1)  # per-sample wave vector
        stripes = torch.sin(ks[:, 0, None, None] * X[:, None, :] + ks[:, 1, None, None] * Y[:, :, None] + math.pi * g("stripe_phase")[:, None, None]) * 1.2
        ga = math.pi * torch.tanh(0.6 * g("grad_angle"))
        grad = 1.1 * (torch.cos(ga)[:, None, None] * X[:, None, :] + torch.sin(ga)[:, None, None] * Y[:, :, None])
        tex = wmix[:, 0, None, None] * noise + wmix[:, 1, None, None] * stripes + wmix[:, 2, None, None] * grad
        tex_amp = (0.35 + 0.25 * torch.tanh(g("bg_tex_amp"))) * (0.35 + 0.65 * gc) + 0.3 * (1 - gc)
        vis = (0.3 + 0.2 * torch.tanh(g("spot_vis"))) * spot_on
        sat = 0.12 + 0.5 * gc  # washed-out images are nearly grey
        bg_lum = 0.45 * torch.tanh(g("bg_lum") / 1.5) * (0.3 + 0.7 * gc)
        bg_col = bg_lum[:, None] + sat[:, None] * 0.55 * f.chroma(("bg_ch0", "bg_ch1", "bg_ch2"))  # [B, 3]
        tint = 1.0 + 0.35 * torch.tanh(torch.stack([g("tint0"), g("tint1"), g("tint2")], 1)) * gc[:, None]
        bg = bg_col[:, :, None, None] + (tex_amp[:, None] * tint)[:, :, None, None] * tex[:, None] + vis[:, None, None, None] * spots[:, None]
        return bg, bg_lum

    def _object_colour(self, f: _Frame, gc: torch.Tensor, bg_lum: torch.Tensor) -> torch.Tensor:
        """The object's colour and texture [B,3,H,W] (washed-out objects take the background's luminance)."""
        g = f.g
        sat = 0.12 + 0.5 * gc
        obj_lum = 0.6 * torch.tanh(g("obj_lum") / 1.2)
        obj_lum = gc * obj_lum + (1 - gc) * bg_lum
        obj_col = obj_lum[:, None] + sat[:, None] * 0.7 * f.chroma(("obj_ch0", "obj_ch1", "obj_ch2"))
        otex = self._waves_field(f.X, f.Y, self._ko, math.pi * torch.stack([g("obj_tex_p0"), g("obj_tex_p1")], 1))
        otex_amp = 0.12 + 0.1 * torch.tanh(g("obj_tex_amp"))
        return obj_col[:, :, None, None] + (otex_amp[:, None, None] * otex)[:, None]


class _Frame:
    """One chunk's coordinates ``c`` [B, N_COORDS] and scene coordinates ``X`` [B, W], ``Y`` [B, H] after the
    camera (named geometry directions: pan and zoom of the whole scene)."""

    def __init__(self, c: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, zoom: torch.Tensor):
        self.c, self.X, self.Y, self.zoom = c, X, Y, zoom

    @classmethod
    def of(cls, c: torch.Tensor, x: torch.Tensor) -> _Frame:
        zoom = torch.exp(0.18 * c[:, COORD["zoom"]])
        sx = 0.3 * torch.tanh(c[:, COORD["shift_x"]] / 1.5)
        sy = 0.3 * torch.tanh(c[:, COORD["shift_y"]] / 1.5)
        X = x[None, :] / zoom[:, None] - sx[:, None]  # scene coordinates [B, W]
        Y = x[None, :] / zoom[:, None] - sy[:, None]  # [B, H]
        return cls(c, X, Y, zoom)

    def g(self, name: str) -> torch.Tensor:
        return self.c[:, COORD[name]]

    def chroma(self, names) -> torch.Tensor:
        ch = torch.stack([self.g(n) for n in names], 1)
        return ch - ch.mean(1, keepdim=True)


def _object_geometry(f: _Frame):
    """(signed distance d [B,H,W] < 0 inside, mean radius r [B], soft inside [B,H,W], true mask [B,H,W])."""
    g, X, Y, zoom = f.g, f.X, f.Y, f.zoom
    r = SIZE_R0 * torch.exp(SIZE_SIGMA * g("size"))  # mean radius (scene units)
    px = 0.32 * torch.tanh(g("pos_x") / 1.3) * (1 - 0.4 * torch.tanh(r))
    py = 0.32 * torch.tanh(g("pos_y") / 1.3) * (1 - 0.4 * torch.tanh(r))
    asp = torch.exp(0.28 * torch.tanh(g("aspect")))
    ang = math.pi * torch.tanh(0.6 * g("angle"))
    p = 1.15 + 5.0 * torch.sigmoid(1.5 * g("squareness"))  # superellipse exponent: diamond..ellipse..rectangle
    ca, sa = torch.cos(ang), torch.sin(ang)
    dx = X[:, None, :] - px[:, None, None]  # [B, 1, W]
    dy = Y[:, :, None] - py[:, None, None]  # [B, H, 1]
    u = (ca[:, None, None] * dx + sa[:, None, None] * dy) / (r * asp)[:, None, None]
    v = (-sa[:, None, None] * dx + ca[:, None, None] * dy) * (asp / r)[:, None, None]
    pp = p[:, None, None]
    rho = (u.abs() + 1e-6).pow(pp).add((v.abs() + 1e-6).pow(pp)).pow(1.0 / pp)
    theta = torch.atan2(v, u)
    star = 1.0
    for k, ca_, cp_ in ((3, "star_a3", "star_p3"), (5, "star_a5", "star_p5"), (6, "star_a6", "star_p6")):
        a_k = 0.32 * torch.sigmoid(2.5 * (g(ca_) - 1.4))  # mostly off; "star-ish" when on
        star = star + a_k[:, None, None] * torch.cos(k * theta + math.pi * g(cp_)[:, None, None])
    d = (rho - star) * r[:, None, None]  # ~ signed distance (scene units), < 0 inside
    inside = torch.sigmoid(-d / (EDGE / zoom)[:, None, None])
    return d, r, inside, d < 0


def shapes_options(identity: dict) -> dict:
    """load_shapes' options that rebuild the world an identity describes: resolution, dim_z, seed."""
    opts = {k: identity[k] for k in ("resolution", "dim_z", "seed") if k in identity}
    bad = [k for k, v in opts.items() if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise FactoryError(f"shapes: the identity's {', '.join(bad)} must be integers")
    return opts


@register("shapes", from_identity=shapes_options)
def load_shapes(
    *, resolution: int = 128, dim_z: int = 120, device: str | torch.device = "cpu", seed: int = 0, dtype=None, **unknown
) -> ShapesWorld:
    """The `shapes` test world (CPU-fast, with ground-truth masks). It always computes in float32."""
    if dtype not in (None, "float32", "fp32", torch.float32):
        raise FactoryError(f"shapes: dtype {dtype!r} is not supported; the test world renders in float32 (omit dtype)")
    if unknown:
        raise FactoryError(
            f"shapes: unknown option(s) {', '.join(sorted(unknown))}; known options: resolution, dim_z, device, seed, dtype"
        )
    return ShapesWorld(resolution=resolution, dim_z=dim_z, device=device, seed=seed)
