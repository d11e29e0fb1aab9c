"""The embedded demo: a tokenizer and a tiny random Llama built on the spot, so the trainers run with
no download and no arguments. Real runs pass ``--model_name_or_path`` instead."""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def train_demo_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A byte-fallback-free BPE tokenizer in the SentencePiece style (metaspace, BOS prepended),
    trained on ``texts``. Deterministic for the same texts."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def tiny_llama(vocab_size: int, hidden_size: int = 128, num_layers: int = 4, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A small random Llama with the target's architecture (RMSNorm, rotary, SwiGLU, untied head);
    ``overrides`` go to ``LlamaConfig``. Special ids match ``train_demo_tokenizer``."""
    import torch

    settings = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    config = LlamaConfig(**{**settings, **overrides})
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
