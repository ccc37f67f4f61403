"""The fused inference graph of BigBiGAN (``FusedBigBiGAN``, built from a loaded ``BigBiGAN``): the same
function with the affines folded in float64, nearest-upsample + 3x3 conv as a 2x2 polyphase conv, one
theta/phi/g conv per attention; see the ``factory.generators.bigbigan.generator`` docstring."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from factory.generators.bigbigan.model import BN, Attention, BigBiGAN, GBlock

# ----------------------------------------------------------------------------------------------
# Fused inference path
# ----------------------------------------------------------------------------------------------

# Nearest x2 upsample followed by a 3x3 conv (taps at offsets -1, 0, +1) equals, for output
# phase a in {0, 1}, a 2-tap conv on the zero-padded low-res input: R[a] maps the 3 taps to 2.
_PHASE = torch.tensor(
    [[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64
)


def polyphase_weight(w: torch.Tensor) -> torch.Tensor:
    """[Co, Ci, 3, 3] -> [4*Co, Ci, 2, 2]; phase group p = 2*a + b (row phase a, column phase b)."""
    w = w.double()
    groups = [torch.einsum("tk,sl,oikl->oits", _PHASE[a], _PHASE[b], w) for a in (0, 1) for b in (0, 1)]
    return torch.cat(groups, 0)


def interleave_phases(p: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """[B, 4C, H+1, W+1] polyphase conv output -> [B, C, 2H, 2W] (out[2i+a, 2j+b] = P_ab[i+a, j+b])."""
    b, c4, hp, wp = p.shape
    c, h, w = c4 // 4, hp - 1, wp - 1
    if channels_last:
        q = p.permute(0, 2, 3, 1)  # [B, H+1, W+1, 4C] (contiguous when p is channels_last)
        rows = [
            torch.stack([q[:, a:a + h, bb:bb + w, (2 * a + bb) * c:(2 * a + bb + 1) * c] for bb in (0, 1)], 3)
            for a in (0, 1)
        ]
        out = torch.stack(rows, 2).reshape(b, 2 * h, 2 * w, c)  # [B, H, 2, W, 2, C] -> NHWC
        return out.permute(0, 3, 1, 2)
    q = p.unflatten(1, (2, 2, c))
    rows = [torch.stack([q[:, a, bb, :, a:a + h, bb:bb + w] for bb in (0, 1)], -1) for a in (0, 1)]
    return torch.stack(rows, -3).reshape(b, c, 2 * h, 2 * w)  # [B, C, H, 2, W, 2]


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class FusedBigBiGAN(nn.Module):
    """Same function as BigBiGAN.forward, rearranged for throughput (see module docstring)."""

    def __init__(self, ref: BigBiGAN, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        super().__init__()
        if not ref.folded:
            raise RuntimeError("fold spectral norm first")
        cfg = ref.cfg
        self.cfg = cfg
        self.channels_last = channels_last
        d = torch.float64
        e = ref.shared.weight[cfg.class_index].detach().to(d)
        sd, zc = cfg.shared_dim, cfg.z_chunk

        def sn(m):
            return m.weight_sn.detach().to(d)

        def buf(name, t):
            t = t.detach().to(dtype)
            if channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            self.register_buffer(name, t, persistent=False)

        buf("lin_w", sn(ref.linear))
        buf("lin_b", ref.linear.bias.detach().to(d))

        # conditioning: z chunks 1..n -> per-block [A1 | B1 | A2 | B2] via one block-diagonal GEMM
        cond_w, cond_b, self.cond_splits = [], [], []
        n = cfg.n_blocks
        self.attn_after: list[bool] = []
        last = n - 1
        for i, group in enumerate(ref.blocks):
            blk: GBlock = group[0]
            rs1 = torch.rsqrt(blk.bn1.stored_var.detach().to(d) + blk.bn1.eps)
            m1 = blk.bn1.stored_mean.detach().to(d)
            rs2 = torch.rsqrt(blk.bn2.stored_var.detach().to(d) + blk.bn2.eps)
            m2 = blk.bn2.stored_mean.detach().to(d)
            g1, b1, g2, b2 = (sn(blk.bn1.gain), sn(blk.bn1.bias), sn(blk.bn2.gain), sn(blk.bn2.bias))
            # affine in the z chunk: value = W_z @ z + c ; e-part folded into the constant c
            a1_w, a1_c = rs1[:, None] * g1[:, sd:], rs1 * (1 + g1[:, :sd] @ e)
            b1_w = b1[:, sd:] - (m1 * rs1)[:, None] * g1[:, sd:]
            b1_c = b1[:, :sd] @ e - m1 * rs1 * (1 + g1[:, :sd] @ e)
            a2_w, a2_c = g2[:, sd:], 1 + g2[:, :sd] @ e
            b2_w, b2_c = b2[:, sd:], b2[:, :sd] @ e
            w_blk = torch.cat([a1_w, b1_w, a2_w, b2_w], 0)
            full = torch.zeros(w_blk.shape[0], n * zc, dtype=d)
            full[:, i * zc:(i + 1) * zc] = w_blk
            cond_w.append(full)
            cond_b.append(torch.cat([a1_c, b1_c, a2_c, b2_c]))
            cin, cout = blk.conv1.weight.shape[1], blk.conv1.weight.shape[0]
            self.cond_splits += [cin, cin, cout, cout]
            # conv1 with bn2's stored statistics folded in, as a polyphase 2x2 conv
            w1 = sn(blk.conv1) * rs2[:, None, None, None]
            b1c = (blk.conv1.bias.detach().to(d) - m2) * rs2
            buf(f"c1_w{i}", polyphase_weight(w1))
            buf(f"c1_b{i}", b1c.repeat(4))
            w2, bb2 = sn(blk.conv2), blk.conv2.bias.detach().to(d)
            wsc, bsc = sn(blk.conv_sc), blk.conv_sc.bias.detach().to(d)
            if i == last:  # fold the output BN (fixed affine) into conv2 + shortcut
                obn: BN = ref.output_layer[0]
                a_o = obn.gain.detach().to(d) * torch.rsqrt(obn.stored_var.detach().to(d) + obn.eps)
                c_o = obn.bias.detach().to(d) - obn.stored_mean.detach().to(d) * a_o
                w2, bb2 = w2 * a_o[:, None, None, None], bb2 * a_o
                wsc, bsc = wsc * a_o[:, None, None, None], bsc * a_o + c_o
            buf(f"c2_w{i}", w2)
            buf(f"c2_b{i}", bb2)
            buf(f"sc_w{i}", wsc)
            buf(f"sc_b{i}", bsc)
            has_attn = len(group) > 1
            self.attn_after.append(has_attn)
            if has_attn:
                att: Attention = group[1]
                buf(f"at_qkv{i}", torch.cat([sn(att.theta), sn(att.phi), sn(att.g)], 0))
                buf(f"at_o{i}", sn(att.o) * att.gamma.detach().to(d))
                self.attn_c8 = att.ch // 8
        buf("cond_w", torch.cat(cond_w, 0))
        buf("cond_b", torch.cat(cond_b, 0))
        buf("out_w", sn(ref.output_layer[2]))
        buf("out_b", ref.output_layer[2].bias.detach().to(d))

    def _attention(self, x, i):
        b, c, hh, ww = x.shape
        c8 = self.attn_c8
        qkv = F.conv2d(x, getattr(self, f"at_qkv{i}"))
        pg = F.max_pool2d(qkv[:, c8:], 2)
        q = qkv[:, :c8].flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N, C/8]
        k = pg[:, :c8].flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N/4, C/8]
        v = pg[:, c8:].flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N/4, C/2]
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0).squeeze(1)  # [B, N, C/2]
        o = o.transpose(1, 2).reshape(b, c // 2, hh, ww)
        if self.channels_last:
            o = o.contiguous(memory_format=torch.channels_last)
        return F.conv2d(o, getattr(self, f"at_o{i}")) + x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        zc, bw = cfg.z_chunk, cfg.bottom_width
        z = z.to(self.lin_w.dtype)
        bsz = z.shape[0]
        h = F.linear(z[:, :zc], self.lin_w, self.lin_b).view(bsz, -1, bw, bw)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        cond = torch.addmm(self.cond_b, z[:, zc:], self.cond_w.t())
        parts = torch.split(cond, self.cond_splits, dim=1)
        for i in range(cfg.n_blocks):
            a1, b1, a2, b2 = (t[:, :, None, None] for t in parts[4 * i:4 * i + 4])
            x = h
            t = torch.addcmul(b1, x, a1).relu_()
            p = F.conv2d(F.pad(t, (1, 1, 1, 1)), getattr(self, f"c1_w{i}"), getattr(self, f"c1_b{i}"))
            t = interleave_phases(p, self.channels_last)
            t = torch.addcmul(b2, t, a2).relu_()
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            t = F.conv2d(t, getattr(self, f"c2_w{i}"), getattr(self, f"c2_b{i}"), padding=1)
            sc = F.conv2d(x, getattr(self, f"sc_w{i}"), getattr(self, f"sc_b{i}"))
            h = t + _up2(sc)
            if self.attn_after[i]:
                h = self._attention(h, i)
        out = F.conv2d(F.relu(h), self.out_w, self.out_b, padding=1)
        return torch.tanh(out).float()
