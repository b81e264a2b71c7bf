"""Reference values for tuwen's GPT-2 (VQGAN's prior) against transformers' GPT2LMHeadModel on
a random-weight model with sizes no published GPT-2 has (vocabulary 41, 20 positions, width
18, 3 heads, MLP 26, 2 blocks, no dropout):

    python3 python/make_gpt2_fixtures.py

writes tests/fixtures/gpt2-odd/ (config.json, model.safetensors as transformers saves it) and
tests/fixtures/gpt2_reference.safetensors: `ids` [2, 17], `logits`, `loss` (transformers'
shifted next-token cross-entropy with labels = ids) and `grad.<tensor>` for every parameter.
"""

import os

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")


def main():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=41, n_positions=20, n_embd=18, n_layer=2, n_head=3, n_inner=26,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=40,
                     eos_token_id=40, initializer_range=0.3)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.2)
    model.train()
    out_dir = os.path.join(FIX, "gpt2-odd")
    model.save_pretrained(out_dir)
    ids = torch.randint(0, 41, (2, 17))
    out = model(ids, labels=ids)
    out.loss.backward()
    ref = {"ids": ids.to(torch.int64), "logits": out.logits.detach(), "loss": out.loss.detach().reshape(1)}
    for n, p in model.named_parameters():
        ref[f"grad.{n}"] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(FIX, "gpt2_reference.safetensors"))
    print("loss", float(out.loss), "params", len(list(model.named_parameters())))
    print(sorted(k for k in ref if k.startswith("grad."))[:5])


if __name__ == "__main__":
    main()
