"""A tiny random Llama with the embedded model's tokenizer and chat template (no downloads, fp32)."""

import torch


def tiny_model(tokenizer, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=1)
    return LlamaForCausalLM(cfg)


def save_tiny(tokenizer, path, seed: int = 0):
    m = tiny_model(tokenizer, seed)
    m.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
