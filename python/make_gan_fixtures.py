"""Reference values for tuwen's gradient penalty: tiny MLP and convolutional critics in PyTorch,
the penalty through `torch.autograd.grad(create_graph=True)` and its gradient with respect to
every critic parameter.

    python3 python/make_gan_fixtures.py

writes tests/fixtures/gan-gp-{mlp,conv}/ (config.json, model.safetensors with the critic's
tensors under tuwen's names) and tests/fixtures/gan_gp_reference.safetensors:
`{mlp,conv}.x` (the points the penalty is taken at), `.out` (D(x)), `.input_grad` (∇ₓ ΣD),
`.penalty` (mean((‖∇ₓD‖₂ − 1)²)), `.r1` (mean(‖∇ₓD‖₂²)), `.grad.<tensor>` (d penalty / d tensor)
and `.loss_grad.<tensor>` for the whole WGAN-GP critic loss
`mean D(fake) − mean D(real) + 10 · penalty` with `.real`, `.fake`, `.eps` (the interpolation).
Also tests/fixtures/fid_reference.safetensors: two feature sets `a`, `b` and their Fréchet
distance `fid` by scipy.linalg.sqrtm, as pytorch-fid computes it.
"""

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
SLOPE = 0.2
EPS = 1e-5


class MlpCritic(nn.Module):
    def __init__(self, d, h, layers):
        super().__init__()
        dims = [d] + [h] * layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(h, eps=EPS) for _ in range(layers))
        self.head = nn.Linear(h, 1)

    def forward(self, x):
        for lin, norm in zip(self.layers, self.norms):
            x = F.leaky_relu(norm(lin(x)), SLOPE)
        return self.head(x)


class ChannelLayerNorm(nn.Module):
    """Layer norm over (C, H, W) of each sample, with a scale and offset per channel."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        x = F.layer_norm(x, x.shape[1:], eps=EPS)
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class Block(nn.Module):
    def __init__(self, i, o, norm):
        super().__init__()
        self.conv = nn.Conv2d(i, o, 4, 2, 1)
        self.layer_norm = ChannelLayerNorm(o) if norm else None

    def forward(self, x):
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.leaky_relu(x, SLOPE)


class ConvCritic(nn.Module):
    def __init__(self, c, size, width):
        super().__init__()
        stages = (size // 4).bit_length() - 1
        chans = [c] + [width << k for k in range(stages)]
        self.shape = (c, size, size)
        self.blocks = nn.ModuleList(Block(a, b, k > 0) for k, (a, b) in enumerate(zip(chans, chans[1:])))
        self.head = nn.Linear(chans[-1] * 16, 1)

    def forward(self, x):
        x = x.reshape(-1, *self.shape)
        for b in self.blocks:
            x = b(x)
        return self.head(x.flatten(1))


def perturb(model, scale):
    """Weights large enough that inputs visibly change outputs, and non-trivial norm scales."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "norm" in name:
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))


def reference(prefix, model, features, n, out):
    real = torch.randn(n, features)
    fake = torch.randn(n, features) * 0.7 + 0.3
    eps = torch.rand(n, 1)
    x = (eps * real + (1 - eps) * fake).requires_grad_(True)
    d = model(x)
    (g,) = torch.autograd.grad(d.sum(), x, create_graph=True)
    norms = g.norm(2, dim=1)
    penalty = ((norms - 1) ** 2).mean()
    r1 = (g ** 2).sum(1).mean()
    params = list(model.parameters())
    grads = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
    # The output bias does not reach the input gradient: its gradient is zero.
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    names = [k for k, _ in model.named_parameters()]
    out[f"{prefix}.x"] = x.detach()
    out[f"{prefix}.out"] = d.detach()
    out[f"{prefix}.input_grad"] = g.detach()
    out[f"{prefix}.penalty"] = penalty.detach().reshape(1)
    out[f"{prefix}.r1"] = r1.detach().reshape(1)
    for k, gr in zip(names, grads):
        out[f"{prefix}.grad.discriminator.{k}"] = gr.detach().contiguous()
    # The whole WGAN-GP critic loss, as a training step computes it.
    x2 = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g2,) = torch.autograd.grad(model(x2).sum(), x2, create_graph=True)
    gp = ((g2.norm(2, dim=1) - 1) ** 2).mean()
    loss = model(fake).mean() - model(real).mean() + 10.0 * gp
    grads = torch.autograd.grad(loss, list(model.parameters()))
    out[f"{prefix}.real"] = real
    out[f"{prefix}.fake"] = fake
    out[f"{prefix}.eps"] = eps
    out[f"{prefix}.loss"] = loss.detach().reshape(1)
    for k, gr in zip(names, grads):
        out[f"{prefix}.loss_grad.discriminator.{k}"] = gr.detach().contiguous()


def save_folder(name, config, model):
    folder = os.path.join(FIX, name)
    os.makedirs(folder, exist_ok=True)
    tensors = {f"discriminator.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def main():
    torch.manual_seed(13)
    out = {}
    # Sizes no published model has: 3-D data, 7 wide, 2 hidden layers.
    mlp = MlpCritic(3, 7, 2)
    perturb(mlp, 0.6)
    save_folder("gan-gp-mlp", {
        "model_type": "tuwen_gan_mlp", "data_dim": 3, "latent_dim": 2, "hidden_size": 7,
        "num_hidden_layers": 2, "critic_activation": "leaky_relu", "leaky_slope": SLOPE,
        "critic_norm": "layer", "norm_eps": EPS, "spectral_norm": False}, mlp)
    reference("mlp", mlp, 3, 6, out)
    # 2 channels of 16x16, widths 3 and 6.
    conv = ConvCritic(2, 16, 3)
    perturb(conv, 0.25)
    save_folder("gan-gp-conv", {
        "model_type": "tuwen_dcgan", "image_size": 16, "num_channels": 2, "latent_dim": 5,
        "generator_width": 4, "critic_width": 3, "critic_activation": "leaky_relu",
        "leaky_slope": SLOPE, "critic_norm": "layer", "norm_eps": EPS, "spectral_norm": False}, conv)
    reference("conv", conv, 2 * 16 * 16, 5, out)
    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(FIX, "gan_gp_reference.safetensors"))
    print({k: tuple(v.shape) for k, v in out.items() if not k.split(".")[1].startswith(("grad", "loss_grad"))})
    print("penalties", out["mlp.penalty"].item(), out["conv.penalty"].item())


def fid_reference():
    """Two feature sets with different means and covariances, and their Fréchet distance as
    pytorch-fid computes it (scipy.linalg.sqrtm of the covariance product)."""
    import numpy as np
    from scipy import linalg

    rng = np.random.default_rng(5)
    a = (rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))).astype(np.float32)
    b = (rng.standard_normal((150, 6)) @ rng.standard_normal((6, 6)) + 0.7).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    m1, m2 = a64.mean(0), b64.mean(0)
    s1, s2 = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    fid = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    save_file({"a": torch.from_numpy(a), "b": torch.from_numpy(b),
               "fid": torch.tensor([fid], dtype=torch.float32)},
              os.path.join(FIX, "fid_reference.safetensors"))
    print("fid", fid)


if __name__ == "__main__":
    main()
    fid_reference()
