"""Tiny random models and a tiny BPE tokenizer, built from a config in seconds (tests, CI, dry runs).

`model.source: tiny:llama` (or `tiny:qwen2`, `tiny:qwen3`, `tiny:mistral`) makes prepare_model write such a model.
The tokenizer is a byte-level BPE trained on the embedded calibration text, so everything works offline.
"""

from __future__ import annotations

import torch

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def tiny_config(family: str = "llama", *, layers: int = 6, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                intermediate: int = 128, vocab: int = 512, attn: str = "sdpa"):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}
    if family not in classes:
        raise ValueError(f"unknown tiny family {family!r}; allowed: {', '.join(FAMILIES)}")
    kwargs = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "qwen2":
        kwargs["use_sliding_window"] = False
    cfg = classes[family](**kwargs)
    cfg._attn_implementation = attn
    return cfg


def tiny_model(family: str = "llama", seed: int = 0, **kwargs) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kwargs), dtype=torch.float32)
    # random init with std 0.02 gives near-uniform outputs; widen it so layers matter and tests can tell them apart
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    return model.eval()


def tiny_tokenizer(vocab: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pipsteps.textdata import embedded_paragraphs

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(embedded_paragraphs("calibration"), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
