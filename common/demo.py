"""The embedded demo: a config per stage and a tiny saved model, loaded by the same code as a real run.

``data/demo/`` ships ``stage1.yaml``, ``stage2.yaml``, ``stage3.yaml`` (each script's default when it
is run with no argument), the model folder ``model/`` (a 4-layer random Llama and a tokenizer trained
on the demo pairs, written by ``build_demo_model``) and the demo data. A demo run is therefore just
``train_contrastive.py data/demo/stage1.yaml``: the model comes from ``--model_name_or_path``, the
data from ``--train_file``, as in any run. Tests build their own tiny models with the same helpers.

    python -m common.demo          # rewrite data/demo/model (deterministic)
"""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


def demo_config(stage: str) -> str:
    """The embedded demo's config of ``stage`` ("stage1", "stage2", "stage3")."""
    return str(DEMO_DIR / f"{stage}.yaml")


def train_demo_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A byte-fallback-free BPE tokenizer in the SentencePiece style (metaspace, BOS prepended),
    trained on ``texts``. Deterministic for the same texts."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def tiny_llama(vocab_size: int, hidden_size: int = 128, num_layers: int = 4, seed: int = 0,
               **overrides) -> LlamaForCausalLM:
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


def build_demo_model(out_dir: str | Path = DEMO_DIR / "model", seed: int = 42) -> Path:
    """Write the demo model folder: a tokenizer trained on the demo pairs (both languages) and a 4-layer,
    128-wide random Llama saved in bf16 safetensors (as released Llama checkpoints are; the trainers
    load it in float32). Deterministic: the same files every time."""
    import torch

    from common.data import iter_parallel_jsonl

    texts = [row[side] for row in iter_parallel_jsonl(str(DEMO_DIR / "train.jsonl")) for side in ("ko", "en")]
    tokenizer = train_demo_tokenizer(texts)
    model = tiny_llama(len(tokenizer), seed=seed).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


if __name__ == "__main__":
    print(f"wrote {build_demo_model()}")
