"""Reference values for tuwen's VQGAN first stage against diffusers' `VQModel`.

    python3 python/make_vq_fixtures.py
    python3 python/make_vq_fixtures.py lpips   (after the above: tests/fixtures/lpips-tiny/,
                                                lpips_reference.safetensors)
    python3 python/make_vq_fixtures.py taming  (tests/fixtures/taming-vq.safetensors,
                                                taming_reference.safetensors)

writes
- tests/fixtures/vq-odd/: a random-weight diffusers `VQModel` with sizes no published model has
  (three resolutions 12/18/24 wide, attention in the middle resolution and the middle blocks,
  2 ResNet blocks per level, 6 groups, latent 5, codes 7 wide, 37 codes, 24 px);
- tests/fixtures/vq/*.png: three real photos at 24 px, as `tuwen reconstruct` reads them;
- tests/fixtures/vq_reference.safetensors:
  - `pixel_values` (x / 127.5 - 1), `latents` (`encode(x).latents`), `codes` ([b, h*w]),
    `sample` (`VQModel(x).sample`), `commit_loss` (diffusers' legacy-placed VQ loss);
  - `grad.paper.<tensor>`: the gradient of `mean|x - x̂| + codebook + 0.25 commitment` (the
    paper's placement) for every parameter; `grad.legacy.<tensor>` with taming's placement;
  - the adaptive weight of the adversarial term with a small PatchGAN discriminator (taming's
    `NLayerDiscriminator`, 2 layers, 5 filters; tests/fixtures/vq-disc/model.safetensors holds
    it under tuwen's names `convs.i.*`, `norms.i.*`): `adaptive.lambda` (‖∇L_rec‖ / (‖∇L_G‖ + 1e-4) at
    `decoder.conv_out.weight`, clamped to [0, 1e4], times the disc weight 0.8), and
    `grad.adaptive.<tensor>` for `L_rec + λ L_G + vq_loss`.

`python3 python/make_vq_fixtures.py check FOLDER IMAGE...` compares `tuwen reconstruct --json`
(the `tuwen` on PATH, or $TUWEN) with diffusers on any VQModel folder, one that tuwen trained and
saved or one that diffusers made: the codes must be equal and the reconstructions within 1e-4.
"""

import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import VQModel
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
SIZE = 24
PHOTOS = ["chelsea.jpg", "astronaut.png", "coffee.bmp"]


def config():
    return dict(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(12, 18, 24), layers_per_block=2, latent_channels=5,
        num_vq_embeddings=37, norm_num_groups=6, vq_embed_dim=7, sample_size=SIZE,
    )


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator: 4x4 convolutions, stride 2 then 1, batch norm, LeakyReLU
    0.2, a one-channel map of patch logits."""

    def __init__(self, channels, ndf, n_layers):
        super().__init__()
        widths = [channels] + [ndf * min(2 ** i, 8) for i in range(n_layers + 1)]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(n_layers + 1):
            stride = 2 if i < n_layers else 1
            self.convs.append(nn.Conv2d(widths[i], widths[i + 1], 4, stride, 1, bias=(i == 0)))
            if i > 0:
                self.norms.append(nn.BatchNorm2d(widths[i + 1]))
        self.convs.append(nn.Conv2d(widths[-1], 1, 4, 1, 1))

    def forward(self, x):
        h = F.leaky_relu(self.convs[0](x), 0.2)
        for conv, norm in zip(self.convs[1:-1], self.norms):
            h = F.leaky_relu(norm(conv(h)), 0.2)
        return self.convs[-1](h)


def vq_loss(z, z_q, beta, legacy):
    codebook = torch.mean((z_q - z.detach()) ** 2)
    commit = torch.mean((z_q.detach() - z) ** 2)
    return commit + beta * codebook if legacy else codebook + beta * commit


def forward_parts(model, x):
    """Encoder, quantiser (diffusers' lookup), decoder; the input of conv_out kept."""
    h = model.encode(x).latents
    b, d, gh, gw = h.shape
    flat = h.permute(0, 2, 3, 1).reshape(-1, d)
    idx = torch.argmin(torch.cdist(flat, model.quantize.embedding.weight), dim=1)
    zq = model.quantize.embedding(idx).view(b, gh, gw, d).permute(0, 3, 1, 2)
    st = h + (zq - h).detach()
    dec = model.decoder
    s = dec.conv_in(model.post_quant_conv(st))
    s = dec.mid_block(s, None)
    for up in dec.up_blocks:
        s = up(s, None)
    last = dec.conv_act(dec.conv_norm_out(s))
    return h, zq, idx.view(b, -1), last, dec.conv_out(last)


def photos():
    os.makedirs(os.path.join(FIX, "vq"), exist_ok=True)
    arrays = []
    for name in PHOTOS:
        img = Image.open(os.path.join(FIX, "images", name)).convert("RGB")
        img = img.resize((SIZE, SIZE), Image.BICUBIC)
        out = os.path.join(FIX, "vq", os.path.splitext(name)[0] + ".png")
        img.save(out)
        # Read back what was written, as tuwen will.
        arrays.append(np.asarray(Image.open(out).convert("RGB"), dtype=np.float32))
    x = np.stack(arrays).transpose(0, 3, 1, 2) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(x))


def main():
    torch.manual_seed(0)
    model = VQModel(**config())
    x = photos()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.2)
        # Codes near the latents of the photos, so that many are used.
        z = model.encode(x).latents.permute(0, 2, 3, 1).reshape(-1, 7)
        pick = torch.randperm(z.shape[0])[:37]
        model.quantize.embedding.weight.copy_(z[pick] + 0.3 * z.std() * torch.randn(37, 7))
    model.eval()
    out_dir = os.path.join(FIX, "vq-odd")
    model.save_pretrained(out_dir)
    ref = {"pixel_values": x}
    with torch.no_grad():
        ref["latents"] = model.encode(x).latents
        out = model(x)
        ref["sample"] = out.sample
        ref["commit_loss"] = out.commit_loss.reshape(-1)[:1]
    h, zq, idx, last, rec = forward_parts(model, x)
    ref["codes"] = idx.to(torch.int64)
    assert torch.allclose(rec, ref["sample"], atol=1e-5)
    print("codes used:", len(torch.unique(idx)), "of 37; sample range", float(rec.min()), float(rec.max()))

    params = dict(model.named_parameters())
    for placement, legacy in [("paper", False), ("legacy", True)]:
        model.zero_grad()
        h, zq, idx, last, rec = forward_parts(model, x)
        loss = torch.mean(torch.abs(x - rec)) + vq_loss(h, zq, 0.25, legacy)
        loss.backward()
        ref[f"loss.{placement}"] = loss.detach().reshape(1)
        for n, p in params.items():
            ref[f"grad.{placement}.{n}"] = p.grad.detach().clone()

    # The adaptive weight with a PatchGAN discriminator (training mode: batch statistics).
    torch.manual_seed(1)
    disc = PatchDiscriminator(3, 5, 2)
    with torch.no_grad():
        for n, p in disc.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norms" in n else 0.2) + (1.0 if "norms" in n and n.endswith("weight") else 0.0))
    disc.train()
    model.zero_grad()
    h, zq, idx, last, rec = forward_parts(model, x)
    rec_loss = torch.mean(torch.abs(x - rec))
    g_loss = -torch.mean(disc(rec))
    w = model.decoder.conv_out.weight
    g_rec = torch.autograd.grad(rec_loss, w, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, w, retain_graph=True)[0]
    lam = torch.clamp(torch.norm(g_rec) / (torch.norm(g_adv) + 1e-4), 0.0, 1e4).detach() * 0.8
    total = rec_loss + lam * g_loss + vq_loss(h, zq, 0.25, False)
    disc.zero_grad()
    total.backward()
    ref["adaptive.lambda"] = lam.reshape(1)
    ref["adaptive.g_loss"] = g_loss.detach().reshape(1)
    ref["adaptive.total"] = total.detach().reshape(1)
    for n, p in params.items():
        ref[f"grad.adaptive.{n}"] = p.grad.detach().clone()
    disc_dir = os.path.join(FIX, "vq-disc")
    os.makedirs(disc_dir, exist_ok=True)
    save_file({n: t.detach().clone().contiguous() for n, t in disc.state_dict().items()
               if not n.endswith("num_batches_tracked")},
              os.path.join(disc_dir, "model.safetensors"), metadata={"format": "pt"})
    ref = {k: v.contiguous() for k, v in ref.items()}
    save_file(ref, os.path.join(FIX, "vq_reference.safetensors"))
    print("lambda", float(lam), "total", float(total))





# --- LPIPS and the image measures -------------------------------------------------------------
# Run as `python3 python/make_vq_fixtures.py lpips`: a tiny LPIPS with the `lpips` package's
# structure and names (VGG-16's 13 convolutions in 5 slices, 1x1 channel weights after dropout),
# widths no published network has, and its distances and input gradient on real photos; SSIM
# and PSNR by scikit-image on the VQ fixture's reconstructions.

VGG = [(1, 0), (1, 2), (2, 5), (2, 7), (3, 10), (3, 12), (3, 14), (4, 17), (4, 19), (4, 21),
       (5, 24), (5, 26), (5, 28)]


class TinyLpips(nn.Module):
    def __init__(self, widths):
        super().__init__()
        self.scaling = nn.Module()
        self.scaling.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.scaling.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1) for i in range(13))
        ends = [widths[2], widths[4], widths[7], widths[10], widths[13]]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in ends)

    def features(self, x):
        h = (x - self.scaling.shift) / self.scaling.scale
        out, c = [], 0
        for s, n in enumerate([2, 2, 3, 3, 3]):
            if s > 0:
                h = F.max_pool2d(h, 2, 2)
            for _ in range(n):
                h = F.relu(self.convs[c](h))
                c += 1
            out.append(h)
        return out

    def forward(self, a, b):
        def unit(f):
            return f / (torch.sqrt(torch.sum(f ** 2, dim=1, keepdim=True)) + 1e-10)
        total = 0
        for fa, fb, lin in zip(self.features(a), self.features(b), self.lins):
            total = total + lin((unit(fa) - unit(fb)) ** 2).mean(dim=(2, 3))
        return total.reshape(-1)

    def lpips_state_dict(self):
        sd = {"scaling_layer.shift": self.scaling.shift, "scaling_layer.scale": self.scaling.scale}
        for (s, k), conv in zip(VGG, self.convs):
            sd[f"net.slice{s}.{k}.weight"] = conv.weight
            sd[f"net.slice{s}.{k}.bias"] = conv.bias
        for i, lin in enumerate(self.lins):
            sd[f"lin{i}.model.1.weight"] = lin.weight
        return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def lpips_fixtures():
    from skimage.metrics import structural_similarity
    torch.manual_seed(2)
    widths = [3, 4, 4, 5, 5, 6, 6, 6, 7, 7, 7, 7, 7, 7]
    net = TinyLpips(widths)
    with torch.no_grad():
        for lin in net.lins:
            lin.weight.copy_(torch.rand_like(lin.weight))
    out_dir = os.path.join(FIX, "lpips-tiny")
    os.makedirs(out_dir, exist_ok=True)
    save_file(net.lpips_state_dict(), os.path.join(out_dir, "lpips.safetensors"), metadata={"format": "pt"})
    imgs = []
    for name in ["astronaut.png", "coffee.bmp", "chelsea.jpg", "rocket.webp"]:
        img = Image.open(os.path.join(FIX, "images", name)).convert("RGB").resize((32, 32), Image.BICUBIC)
        imgs.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    a = torch.from_numpy(np.stack(imgs[:2]))
    b = torch.from_numpy(np.stack(imgs[2:])).requires_grad_(True)
    d = net(a, b)
    d.sum().backward()
    ref = {"a": a, "b": b.detach(), "lpips": d.detach(), "lpips_grad_b": b.grad.detach()}
    # SSIM and PSNR of the VQ fixture's reconstructions, as scikit-image computes them on [0, 1].
    vq = load_file(os.path.join(FIX, "vq_reference.safetensors"))
    x = ((vq["pixel_values"].clamp(-1, 1) + 1) / 2).numpy().astype(np.float64)
    y = ((vq["sample"].clamp(-1, 1) + 1) / 2).numpy().astype(np.float64)
    from skimage.metrics import peak_signal_noise_ratio
    ssim = [structural_similarity(x[i], y[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=1.0, channel_axis=0) for i in range(len(x))]
    psnr = [peak_signal_noise_ratio(x[i], y[i], data_range=1.0) for i in range(len(x))]
    ref["ssim"] = torch.tensor(ssim, dtype=torch.float64)
    ref["psnr"] = torch.tensor(psnr, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(FIX, "lpips_reference.safetensors"))
    print("lpips", d.tolist(), "ssim", ssim, "psnr", psnr)


# --- taming-transformers' layout -----------------------------------------------------------------
# Run as `python3 python/make_vq_fixtures.py taming`: a random diffusers VQModel with taming's
# GroupNorm(32) (widths 32 and 32, attention at the coarser level and in the middle, 2 ResNet
# blocks per level, latent 3, codes 4 wide, 24 codes, 16 px), its state dict under
# taming-transformers' names (encoder.down.i.block.j, .attn.j.{norm,q,k,v,proj_out} as 1x1
# convolutions, mid.block_1/attn_1/block_2, norm_out, nin_shortcut; the decoder's up.i indexed
# by resolution, finest first) plus a training-loss tensor that a VQModel does not hold, and
# diffusers' reconstruction of the fixture photos at 16 px.

def taming_name(name, levels):
    side, rest = name.split(".", 1)
    subs = [("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2."),
            ("mid_block.attentions.0.", "mid.attn_1."), ("conv_norm_out.", "norm_out.")]
    for a, b in subs:
        if rest.startswith(a):
            rest = b + rest[len(a):]
    parts = rest.split(".")
    if parts[0] in ("down_blocks", "up_blocks"):
        i = int(parts[1])
        level = i if parts[0] == "down_blocks" else levels - 1 - i
        head = ("down" if parts[0] == "down_blocks" else "up") + f".{level}."
        kind = parts[2]
        if kind == "resnets":
            rest = head + "block." + ".".join(parts[3:])
        elif kind == "attentions":
            rest = head + "attn." + ".".join(parts[3:])
        elif kind == "downsamplers":
            rest = head + "downsample." + ".".join(parts[4:])
        elif kind == "upsamplers":
            rest = head + "upsample." + ".".join(parts[4:])
    rest = (rest.replace("conv_shortcut", "nin_shortcut").replace("group_norm", "norm")
            .replace("to_q", "q").replace("to_k", "k").replace("to_v", "v").replace("to_out.0", "proj_out"))
    return f"{side}.{rest}"


def taming_fixtures():
    torch.manual_seed(3)
    model = VQModel(in_channels=3, out_channels=3,
                    down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
                    block_out_channels=(32, 32), layers_per_block=2, latent_channels=3,
                    num_vq_embeddings=24, norm_num_groups=32, vq_embed_dim=4, sample_size=16).eval()
    imgs = []
    for name in PHOTOS:
        img = Image.open(os.path.join(FIX, "images", name)).convert("RGB").resize((16, 16), Image.BICUBIC)
        imgs.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    x = torch.from_numpy(np.stack(imgs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.2)
        z = model.encode(x).latents.permute(0, 2, 3, 1).reshape(-1, 4)
        model.quantize.embedding.weight.copy_(z[torch.randperm(z.shape[0])[:24]] + 0.1 * torch.randn(24, 4))
        sample = model(x).sample
    sd = {}
    for name, t in model.state_dict().items():
        new = taming_name(name, 2)
        if new.split(".")[-2] in ("q", "k", "v", "proj_out") and new.endswith("weight"):
            t = t[:, :, None, None]
        sd[new] = t.detach().clone().contiguous()
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    save_file(sd, os.path.join(FIX, "taming-vq.safetensors"), metadata={"format": "pt"})
    save_file({"pixel_values": x.contiguous(), "sample": sample.contiguous()},
              os.path.join(FIX, "taming_reference.safetensors"))
    print(sorted(sd)[:6], len(sd))


def check(folder, images):
    import json
    import subprocess
    tuwen = os.environ.get("TUWEN", "tuwen")
    out = subprocess.run([tuwen, "reconstruct", "--model", folder, "--json", "--image", *images],
                         check=True, capture_output=True, text=True).stdout
    ours = json.loads(out)
    model = VQModel.from_pretrained(folder).eval()
    size = model.config.sample_size
    arrays = []
    for p in images:
        img = Image.open(p).convert("RGB")
        assert img.size == (size, size), f"{p}: {img.size}, the model takes {size}"
        a = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        if model.config.in_channels == 1:
            a = a.mean(axis=0, keepdims=True)
        arrays.append(a)
    x = torch.from_numpy(np.stack(arrays))
    with torch.no_grad():
        h = model.encode(x).latents
        b, d, gh, gw = h.shape
        flat = h.permute(0, 2, 3, 1).reshape(-1, d)
        codes = torch.argmin(torch.cdist(flat, model.quantize.embedding.weight), dim=1).view(b, -1)
        sample = model(x).sample.reshape(b, -1)
    same = codes.tolist() == ours["codes"]
    diff = float((sample - torch.tensor(ours["reconstructions"])).abs().max())
    print(f"{folder}: {len(images)} images, codes equal: {same}, reconstructions differ by {diff:.2e}")
    assert same and diff < 1e-4


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        check(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:] == ["lpips"]:
        lpips_fixtures()
    elif sys.argv[1:] == ["taming"]:
        taming_fixtures()
    else:
        main()
