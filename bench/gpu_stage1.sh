#!/usr/bin/env bash
# One CUDA GPU, one run: the trainers themselves on the Sheared-LLaMA-1.3B architecture (random weights, the
# Llama-2 tokenizer, bf16), each reporting its own logged pairs/s, tokens/s, MFU and peak memory:
#   stage 1 at layer 17 (shared; frozen English copy) and layer 24 (shared: the whole model, the peer's job),
#   stage 1 with gradient caching at 1,024 pairs a step, stage 3 at 8 blocks of 1,024 tokens,
#   and the sentence-transformers peer (MultipleNegativesSymmetricRankingLoss) on the same model and pairs.
#
#   bash bench/gpu_stage1.sh DATA_DIR OUT_DIR
# DATA_DIR holds pairs.jsonl, val.jsonl, ko.txt, en.txt and the Llama-2 tokenizer.model. Writes
# OUT_DIR/summary.txt (one line per run: the last logged window) and OUT_DIR/logs.txt (every run's log.jsonl).
set -uo pipefail
DATA=$1 OUT=$2
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUNS=/dev/shm/koen  # a 1.3B checkpoint is ~17 GB: written to memory and removed after each run
SUMMARY=$OUT/summary.txt LOGS=$OUT/logs.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$SUMMARY"
python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)" | tee -a "$SUMMARY"

python3 - "$DATA" <<'PY'
import shutil, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer
shutil.copytree(sys.argv[1], "/tmp/m13", ignore=lambda d, names: [n for n in names if n != "tokenizer.model"])
tok = LlamaTokenizer.from_pretrained("/tmp/m13", add_bos_token=True)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                  num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
with torch.device("cuda"):
    LlamaForCausalLM(cfg).save_pretrained("/tmp/m13")
tok.save_pretrained("/tmp/m13")
PY

summarize() {  # name, script's output dir: the last logged training window and the peak memory
  python3 - "$1" "$2" >> "$SUMMARY" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[2] + "/log.jsonl")]
last = [r for r in rows if "tokens_per_s" in r][-1]
keep = ("step", "pairs_per_s", "tokens_per_s", "padded_tokens_per_s", "mfu", "peak_memory_gib", "cl_loss", "loss")
print(sys.argv[1], {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items() if k in keep})
PY
  { echo "== $1"; cat "$2/log.jsonl"; } >> "$LOGS"
}

stage1() {  # name, flags
  local name=$1; shift
  timeout 240 python3 train_contrastive.py --model_name_or_path /tmp/m13 --train_file "$DATA/pairs.jsonl" \
    --validation_file "$DATA/val.jsonl" --bf16 --learning_rate 2e-5 --max_steps 30 --logging_steps 10 \
    --eval_steps 1000 --save_steps 1000 --report_to none --output_dir "$RUNS/$name" "$@" > "$OUT/run.log" 2>&1
  echo "$name: exit $?" | tee -a "$SUMMARY"
  summarize "$name" "$RUNS/$name" || tail -5 "$OUT/run.log" >> "$SUMMARY"
  rm -rf "$RUNS/$name"
}

stage1 s1_l17_shared_b128 --pool_layer 17 --per_device_train_batch_size 128
stage1 s1_l17_frozen_b128 --pool_layer 17 --english_encoder frozen --per_device_train_batch_size 128
stage1 s1_l24_shared_b64 --pool_layer 24 --per_device_train_batch_size 64
stage1 s1_l17_shared_b1024_cached --pool_layer 17 --per_device_train_batch_size 1024 --cl_chunk_size 128

timeout 240 python3 train_full.py --model_name_or_path /tmp/m13 --train_file "$DATA/ko.txt" --en_train_file \
  "$DATA/en.txt" --block_size 1024 --per_device_train_batch_size 8 --bf16 --max_steps 20 --logging_steps 10 \
  --eval_steps 1000 --save_steps 1000 --report_to none --output_dir "$RUNS/s3" > "$OUT/run.log" 2>&1
echo "s3_b8x1024: exit $?" | tee -a "$SUMMARY"
summarize s3_b8x1024 "$RUNS/s3" || tail -5 "$OUT/run.log" >> "$SUMMARY"
rm -rf "$RUNS/s3"

timeout 120 python3 -m bench.peer_mnsrl /tmp/m13 "$DATA/pairs.jsonl" --batch_size 64 --steps 20 2>"$OUT/run.log" \
  | tee -a "$SUMMARY" || tail -5 "$OUT/run.log" >> "$SUMMARY"
cat "$SUMMARY"
