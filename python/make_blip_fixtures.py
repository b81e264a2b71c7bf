"""Parity fixtures for BLIP: a tiny random-weight BlipForConditionalGeneration and a
BlipForImageTextRetrieval of sizes no published model has, a WordPiece tokenizer with BLIP's
[DEC] token, and transformers' outputs on real photos: decoder logits, greedy and 3-beam
captions (with and without a prompt), ITM probabilities and ITC cosines.

    python python/make_blip_fixtures.py      # after python/make_fixtures.py (it makes the photos)
"""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertTokenizerFast,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
IMAGES = FIX / "images"

WORDS = (
    "a an the of on in with and photo picture cat dog astronaut coffee cup rocket camera "
    "man woman sitting standing small large black white red sky space table ##s ##ing ##ed"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PROMPT = "a picture of"
TEXTS = ["a photo of a cat", "an astronaut in space", "a cup of coffee on the table"]
PHOTOS = ["astronaut.png", "coffee_rgba.png", "camera_gray.png"]  # lossless: decoders agree exactly
SPREAD, SEP_BIAS = 6.0, 10.0


def wordpiece(folder: Path):
    """BERT's uncased WordPiece over a tiny vocabulary, with BLIP's [DEC] as the last id."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS + ["[DEC]"])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok, bos_token="[DEC]", model_max_length=40)
    fast.add_special_tokens({"bos_token": "[DEC]"})
    fast.save_pretrained(folder)
    return fast, vocab


def config(vocab) -> BlipConfig:
    return BlipConfig(
        vision_config=dict(
            hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
            image_size=48, patch_size=8, layer_norm_eps=1e-5,
        ),
        text_config=dict(
            vocab_size=len(vocab), hidden_size=36, intermediate_size=52, num_hidden_layers=2,
            num_attention_heads=3, max_position_embeddings=40, bos_token_id=vocab["[DEC]"],
            eos_token_id=vocab["[SEP]"], sep_token_id=vocab["[SEP]"], pad_token_id=0,
        ),
        image_text_hidden_size=24,
    )


def randomise(model, seed):
    """Weights large enough that the image and the words visibly change every output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in**0.5 if p.dim() > 1 else 0.3))


def main():
    torch.manual_seed(0)
    cap_dir, itm_dir = FIX / "blip-caption-odd", FIX / "blip-itm-odd"
    for d in (cap_dir, itm_dir):
        d.mkdir(parents=True, exist_ok=True)
    tok, vocab = wordpiece(cap_dir)
    tok.save_pretrained(itm_dir)
    cfg = config(vocab)
    proc = BlipImageProcessorPil(size={"height": 48, "width": 48})
    proc.save_pretrained(cap_dir)
    proc.save_pretrained(itm_dir)

    cap = BlipForConditionalGeneration(cfg).eval()
    randomise(cap, 1)
    with torch.no_grad():
        # Varied captions: word embeddings of equal norm and no favourite word, and a [SEP]
        # that ends some captions early (so that stopping is tested too).
        words = cap.text_decoder.bert.embeddings.word_embeddings.weight
        words.mul_(SPREAD / words.norm(dim=1, keepdim=True))
        bias = cap.text_decoder.cls.predictions.bias
        bias.zero_()
        bias[vocab["[SEP]"]] = SEP_BIAS
        for special in ("[PAD]", "[UNK]", "[CLS]", "[MASK]"):
            bias[vocab[special]] = -5.0
    cap.save_pretrained(cap_dir)
    itm = BlipForImageTextRetrieval(cfg).eval()
    randomise(itm, 2)
    itm.save_pretrained(itm_dir)

    photos = [ImageOps.exif_transpose(Image.open(IMAGES / p)).convert("RGB") for p in PHOTOS]
    pixels = proc(photos, return_tensors="pt")["pixel_values"]
    ref = {"pixel_values": pixels.numpy()}
    captions = {"prompt": PROMPT, "texts": TEXTS}
    with torch.no_grad():
        image_embeds = cap.vision_model(pixel_values=pixels).last_hidden_state
        ref["caption_image_embeds"] = image_embeds.numpy()
        # Teacher-forced decoder logits on the prompt, as generate's first step sees it.
        ids = tok([PROMPT] * len(photos), return_tensors="pt")["input_ids"]
        ids[:, 0] = cfg.text_config.bos_token_id
        ids = ids[:, :-1]
        ref["prompt_ids"] = ids.numpy().astype(np.int64)
        out = cap(pixel_values=pixels, input_ids=ids)
        ref["decoder_logits"] = out.logits.numpy()
        for name, kwargs in [("greedy", {}), ("beam3", {"num_beams": 3})]:
            plain = cap.generate(pixel_values=pixels, max_new_tokens=12, **kwargs)
            ref[f"{name}_ids"] = pad(plain)
            prompt = tok([PROMPT] * len(photos), return_tensors="pt")["input_ids"]
            with_prompt = cap.generate(pixel_values=pixels, input_ids=prompt, max_new_tokens=12, **kwargs)
            ref[f"{name}_prompt_ids"] = pad(with_prompt)
            print(name, tok.batch_decode(plain, skip_special_tokens=True))
            captions[name] = tok.batch_decode(plain, skip_special_tokens=True)
            captions[f"{name}_prompt"] = tok.batch_decode(with_prompt, skip_special_tokens=True)

        # Decoding options the plain runs do not reach (tests/blip_parity.rs, EXTRA_DECODING).
        for name, kwargs in EXTRA_DECODING.items():
            ref[f"{name}_ids"] = pad(cap.generate(pixel_values=pixels, max_new_tokens=12, **kwargs))
            print(name, ref[f"{name}_ids"].tolist())

        enc = tok(TEXTS, padding="longest", return_tensors="pt")
        ref["texts_ids"] = enc["input_ids"].numpy().astype(np.int64)
        ref["texts_mask"] = enc["attention_mask"].numpy().astype(np.int64)
        itm_probs, itc = [], []
        for i in range(len(photos)):
            px = pixels[i : i + 1].expand(len(TEXTS), -1, -1, -1)
            s = itm(pixel_values=px, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            itm_probs.append(torch.softmax(s.itm_score, dim=1)[:, 1])
            c = itm(pixel_values=pixels[i : i + 1], input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"], use_itm_head=False)
            itc.append(c.itm_score[0])
        ref["itm_probs"] = torch.stack(itm_probs).numpy()
        ref["itc_scores"] = torch.stack(itc).numpy()
    print("itm", ref["itm_probs"], "itc", ref["itc_scores"], sep="\n")
    grads = gradients(cap, itm, tok, pixels, cfg)
    print({k: v for k, v in grads.items() if k.endswith("loss")})
    save_file({k: np.ascontiguousarray(v) for k, v in grads.items()}, FIX / "blip_grads.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, FIX / "blip_reference.safetensors")
    (FIX / "blip_captions.json").write_text(json.dumps(captions, indent=1) + "\n")


CAPTIONS = ["a picture of a cat", "a picture of an astronaut in space", "a picture of a cup"]
# The pairs of the matching loss: three positives, then each image with another's text and
# each text with another's image (fixed here; training draws them from the ITC similarities).
ITM_IMAGES = [0, 1, 2, 0, 1, 2, 1, 2, 0]
ITM_TEXTS = [0, 1, 2, 1, 2, 0, 0, 1, 2]
ITM_LABELS = [1, 1, 1, 0, 0, 0, 0, 0, 0]
TEMP, SMOOTHING = 0.07, 0.1
EXTRA_DECODING = {
    "beam3_lp05_early": dict(num_beams=3, length_penalty=0.5, early_stopping=True),
    "greedy_rep15_min4": dict(repetition_penalty=1.5, min_new_tokens=4),
    "beam2_min5_rep13_lp2": dict(num_beams=2, min_new_tokens=5, repetition_penalty=1.3, length_penalty=2.0),
}


def gradients(cap, itm, tok, pixels, cfg):
    """The three BLIP losses and every parameter's gradient, for tests/blip_grads.rs."""
    out = {}
    t = cfg.text_config
    enc = tok(CAPTIONS, padding="longest", return_tensors="pt")
    ids, mask = enc["input_ids"].clone(), enc["attention_mask"]
    ids[:, 0] = t.bos_token_id
    labels = ids.masked_fill(mask == 0, -100)
    prompt_len = len(tok(PROMPT)["input_ids"]) - 1
    labels[:, :prompt_len] = -100
    out["lm/input_ids"], out["lm/attention_mask"] = ids.numpy(), mask.numpy()
    out["lm/labels"] = labels.numpy()
    cap.zero_grad()
    logits = cap(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=-100, label_smoothing=SMOOTHING)
    loss.backward()
    out["lm/loss"] = loss.detach().reshape(1).numpy()
    for name, p in cap.named_parameters():
        out[f"lm/grad/{name}"] = p.grad.numpy()

    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    temp = torch.tensor([TEMP], requires_grad=True)
    itm.zero_grad()
    image = itm.vision_model(pixel_values=pixels).last_hidden_state
    img = torch.nn.functional.normalize(itm.vision_proj(image[:, 0]), dim=-1)
    text = itm.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    txt = torch.nn.functional.normalize(itm.text_proj(text[:, 0]), dim=-1)
    sim = img @ txt.t() / temp
    target = torch.arange(len(TEXTS))
    loss = (torch.nn.functional.cross_entropy(sim, target) + torch.nn.functional.cross_entropy(sim.t(), target)) / 2
    loss.backward()
    out["itc/loss"] = loss.detach().reshape(1).numpy()
    out["itc/grad/temp"] = temp.grad.numpy()
    for name, p in itm.named_parameters():
        if p.grad is not None:
            out[f"itc/grad/{name}"] = p.grad.numpy()

    itm.zero_grad()
    image = itm.vision_model(pixel_values=pixels).last_hidden_state
    h = itm.text_encoder(input_ids=ids[ITM_TEXTS], attention_mask=mask[ITM_TEXTS],
                         encoder_hidden_states=image[ITM_IMAGES],
                         encoder_attention_mask=torch.ones(image[ITM_IMAGES].shape[:2], dtype=torch.long)).last_hidden_state
    logits = itm.itm_head(h[:, 0])
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ITM_LABELS))
    loss.backward()
    out["itm/loss"] = loss.detach().reshape(1).numpy()
    for name, p in itm.named_parameters():
        if p.grad is not None:
            out[f"itm/grad/{name}"] = p.grad.numpy()
    return out


def pad(ids: torch.Tensor) -> np.ndarray:
    """Sequences as int64, -1 after their end (so that lengths survive a fixed-width array)."""
    return ids.numpy().astype(np.int64)


if __name__ == "__main__":
    main()
