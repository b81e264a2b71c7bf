"""Parity fixtures for CLIP (both end-token rules) and SigLIP: tiny random-weight checkpoints with
tokenizers, and transformers' embeddings, logits and token ids on real photos and exact crops.

    .venv/bin/python python/make_clip_fixtures.py     # after python/make_fixtures.py (it makes the photos)
"""

import json
import re
import string
import subprocess
import tempfile
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
import sentencepiece as spm
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast, SiglipConfig, SiglipModel, SiglipTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
IMAGES = FIX / "images"

CORPUS = [
    "a photo of a cat", "a photo of a dog", "a photo of an astronaut", "a cup of coffee",
    "a rocket on the launch pad", "a black and white photo of a camera", "a galaxy far away",
    "a bad photo of the bird", "a sculpture of a horse", "a tattoo of the car", "the origami boat",
    "a rendering of a tree", "a close-up photo of a small tabby cat!", "itap of my coffee.",
    "art of the rocket", "a pixelated photo of the plane", "a drawing of a fish in the sea",
] * 4

TEXTS = [
    "a photo of a cat",
    "A Close-up PHOTO of an astronaut!!",
    "coffee",
    "a rocket on the launch pad, seen from far away at night with many bright lights around it",
    "zebra xylophone",
    "Ünïcode café ﬁne",
    "punctuation: (a)b-c! and\ttabs",
]


def load_like_transformers(path):
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def bpe_tokenizer(vocab_size, bos, eos, pad):
    """A small byte-level BPE in CLIP's style: lowercase, start and end tokens."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[pad, bos, eos] if pad not in (bos, eos) else [bos, eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
    )
    return tok


def unigram_tokenizer(vocab_size, eos, pad, unk):
    """A small unigram tokenizer in SigLIP's style: metaspace, an end token, no start token."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[pad, eos, unk], unk_token=unk)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))])
    return tok


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith("bias") or name.endswith("in_proj_bias"):
                p.copy_(0.1 * r)
            elif name in ("logit_scale",):
                p.fill_(np.log(10.0))
            elif name == "logit_bias":
                p.fill_(-2.0)
            elif name.endswith(("class_embedding", "probe")) or "position_embedding" in name or "token_embedding" in name:
                p.copy_(0.5 * r)
            elif p.dim() >= 2:
                p.copy_(r / np.sqrt(np.prod(p.shape[1:])))
            else:
                raise ValueError(f"no rule for {name}")


def canonicalize_siglip(text):
    """SiglipTokenizer.canonicalize_text with do_lower_case=True, restated."""
    text = text.lower()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = re.sub(r"\s+", " ", text)
    return text.strip()


def main():
    ref = {}
    names = sorted(p.name for p in IMAGES.iterdir())

    # CLIP, current end-token rule; quick_gelu; CLIP's processor (shortest edge, crop, bicubic).
    bos, eos, pad = "<|startoftext|>", "<|endoftext|>", "<|endoftext|>"
    tok = bpe_tokenizer(300, bos, eos, pad)
    vocab = tok.get_vocab_size()
    clip_cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu",
                         bos_token_id=tok.token_to_id(bos), eos_token_id=tok.token_to_id(eos),
                         pad_token_id=tok.token_to_id(pad)),
        vision_config=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                           image_size=40, patch_size=10, hidden_act="quick_gelu"),
        projection_dim=24,
    )
    clip_proc = CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40})

    # CLIP with the legacy rule (eos_token_id == 2: pool at the largest token id), gelu, and a
    # tokenizer whose end token is NOT the largest id, so the two rules pool different positions.
    legacy_tok = bpe_tokenizer(260, "<|endoftext|>", "<|startoftext|>", "<|startoftext|>")
    legacy_cfg = CLIPConfig(
        text_config=dict(vocab_size=legacy_tok.get_vocab_size(), hidden_size=32, intermediate_size=48,
                         num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=12,
                         hidden_act="gelu", eos_token_id=2, bos_token_id=0, pad_token_id=1),
        vision_config=dict(hidden_size=36, intermediate_size=64, num_hidden_layers=1, num_attention_heads=3,
                           image_size=30, patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6),
        projection_dim=20,
    )
    legacy_proc = CLIPImageProcessorPil(size={"shortest_edge": 34}, crop_size={"height": 30, "width": 30})

    # SigLIP: attention-pooling head, last-position text pooling, logit bias, texts padded to
    # max_position_embeddings, canonicalised text.
    sig_tok = unigram_tokenizer(200, "</s>", "<pad>", "<unk>")
    sig_cfg = SiglipConfig(
        text_config=dict(vocab_size=sig_tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=14,
                         hidden_act="gelu_pytorch_tanh", pad_token_id=sig_tok.token_to_id("<pad>"),
                         eos_token_id=sig_tok.token_to_id("</s>"), projection_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="gelu_pytorch_tanh"),
    )
    sig_proc = SiglipImageProcessorPil(size={"height": 32, "width": 32})

    # SigLIP as published in v1: a SentencePiece spiece.model and no tokenizer.json.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "corpus.txt").write_text("\n".join(CORPUS))
        spm.SentencePieceTrainer.train(
            input=str(Path(tmp) / "corpus.txt"), model_prefix=str(Path(tmp) / "sp"), vocab_size=64,
            model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
            eos_piece="</s>", unk_piece="<unk>", normalization_rule_name="nmt_nfkc", minloglevel=2)
        sp_tok = SiglipTokenizer(str(Path(tmp) / "sp.model"), model_max_length=12)
        sp_tok.save_pretrained(FIX / "siglip-spiece")
    sp_cfg = SiglipConfig(
        text_config=dict(vocab_size=64, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=12, hidden_act="gelu_pytorch_tanh",
                         pad_token_id=1, eos_token_id=1, projection_size=20),
        vision_config=dict(hidden_size=20, intermediate_size=36, num_hidden_layers=1, num_attention_heads=2,
                           image_size=24, patch_size=6, hidden_act="gelu_pytorch_tanh"),
    )
    sp_proc = SiglipImageProcessorPil(size={"height": 24, "width": 24}, resample=2)

    specs = [
        ("clip-tiny", CLIPModel(clip_cfg), clip_proc, tok, dict(bos_token=bos, eos_token=eos, pad_token=pad,
         model_max_length=16, tokenizer_class="CLIPTokenizer"), 5),
        ("clip-legacy", CLIPModel(legacy_cfg), legacy_proc, legacy_tok, dict(bos_token="<|endoftext|>",
         eos_token="<|startoftext|>", pad_token="<|startoftext|>", model_max_length=12,
         tokenizer_class="CLIPTokenizer"), 6),
        ("siglip-tiny", SiglipModel(sig_cfg), sig_proc, sig_tok, dict(eos_token="</s>", pad_token="<pad>",
         unk_token="<unk>", model_max_length=14, tokenizer_class="SiglipTokenizer"), 7),
        ("siglip-spiece", SiglipModel(sp_cfg), sp_proc, sp_tok, None, 8),
    ]
    for tag, model, proc, tk, tk_kwargs, seed in specs:
        model.eval()
        randomize(model, seed)
        out = FIX / tag
        model.save_pretrained(out)
        proc.save_pretrained(out)
        if tk_kwargs is None:
            fast = tk  # the slow SentencePiece tokenizer, saved above
        else:
            fast = PreTrainedTokenizerFast(tokenizer_object=tk, **tk_kwargs)
            fast.save_pretrained(out)
            # Keep the class name a user's checkpoint would carry.
            cfg_path = out / "tokenizer_config.json"
            tcfg = json.loads(cfg_path.read_text())
            tcfg["tokenizer_class"] = tk_kwargs["tokenizer_class"]
            cfg_path.write_text(json.dumps(tcfg, indent=2))

        siglip = tag.startswith("siglip")
        max_len = model.config.text_config.max_position_embeddings
        if tk_kwargs is None:
            # SiglipTokenizer canonicalises by itself.
            enc = fast(TEXTS, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        elif siglip:
            enc = fast([canonicalize_siglip(t) for t in TEXTS], padding="max_length", max_length=max_len,
                       truncation=True, return_tensors="pt")
        else:
            enc = fast(TEXTS, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        ids = enc["input_ids"]
        ref[f"{tag}/input_ids"] = ids.numpy().astype(np.int64)
        with torch.no_grad():
            kwargs = {} if siglip else {"attention_mask": enc["attention_mask"]}
            text_embeds = model.get_text_features(input_ids=ids, **kwargs).pooler_output
            text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        ref[f"{tag}/text_embeds"] = text_embeds.numpy()

        image_rows = []
        for n in names:
            px = proc(images=load_like_transformers(IMAGES / n), return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                e = model.get_image_features(pixel_values=px).pooler_output
            image_rows.append(e[0] / e[0].norm())
        image_embeds = torch.stack(image_rows)
        ref[f"{tag}/image_embeds"] = image_embeds.numpy()
        scale = model.logit_scale.exp()
        logits_per_image = image_embeds @ text_embeds.t() * scale
        if siglip:
            logits_per_image = logits_per_image + model.logit_bias
        ref[f"{tag}/logits_per_image"] = logits_per_image.detach().numpy()
        spread = image_embeds.std(dim=0).mean().item()
        print(f"{tag}: image-embedding spread {spread:.3f}; ids {tuple(ids.shape)}")
        assert spread > 0.04

    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, FIX / "clip_reference.safetensors")
    (FIX / "clip_texts.json").write_text(json.dumps(TEXTS, indent=1))
    print(f"wrote {len(ref)} arrays")
    for tag, model, proc, *_ in specs:
        prove_saved_folder_loads(tag, model, proc)


def prove_saved_folder_loads(tag, model, proc):
    """tuwen re-saves the checkpoint; transformers must load it with every weight and give the
    same embeddings."""
    cls = type(model)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "resaved"
        subprocess.run(["cargo", "run", "-q", "--", "convert", "--model", str(FIX / tag), "--out", str(out)],
                       cwd=ROOT, check=True)
        again, info = cls.from_pretrained(out, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"{tag}: transformers reports {problems}"
        px = proc(images=load_like_transformers(IMAGES / "astronaut.png"), return_tensors="pt")["pixel_values"]
        ids = torch.tensor([[3, 4, 5, 6]])
        with torch.no_grad():
            a = model.get_image_features(pixel_values=px).pooler_output
            b = again.eval().get_image_features(pixel_values=px).pooler_output
            c = model.get_text_features(input_ids=ids).pooler_output
            d = again.get_text_features(input_ids=ids).pooler_output
        diff = max((a - b).abs().max().item(), (c - d).abs().max().item(),
                   (model.logit_scale - again.logit_scale).abs().max().item())
        print(f"{tag}: tuwen-saved folder reloaded in transformers, max difference {diff:.2e}")
        assert diff < 1e-5, diff


if __name__ == "__main__":
    sys.exit(main())
