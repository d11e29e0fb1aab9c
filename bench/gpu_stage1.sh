#!/usr/bin/env bash
# Stage 1 on one CUDA GPU, all in one go: the embedded demo, the truncated/full benchmark on the
# Sheared-LLaMA-1.3B architecture (random weights), and 20 steps of train_contrastive.py on that
# model with a frozen English copy in bf16, checkpoint export included.
#
#   bash bench/gpu_stage1.sh PAIRS.jsonl TOKENIZER_DIR OUT_DIR
set -uo pipefail
PAIRS=$1 TOK=$2 OUT=$3
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)" | tee -a "$OUT/gpu.txt"

echo "== 1. embedded demo on the GPU"
time timeout 180 accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  train_contrastive.py data/demo/stage1.yaml --output_dir /tmp/demo_gpu --report_to none > "$OUT/demo.log" 2>&1
grep "eval:" "$OUT/demo.log" | sed 's/.*INFO //'

echo "== 2. truncated vs full forward, 1.3B, bf16"
time timeout 240 python3 -m bench.bench_contrastive --model_config sheared-1.3b --bf16 --batch_size 64 --steps 10 \
  --train_file "$PAIRS" --tokenizer "$TOK" --output "$OUT/bench_1.3b.json" 2>&1 | grep -v Warning | tail -6

echo "== 3. train_contrastive.py on a random 1.3B, frozen English copy, bf16"
python3 - "$TOK" <<'PY'
import sys, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
tok = AutoTokenizer.from_pretrained(sys.argv[1])
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                  num_key_value_heads=16, max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg)
model.save_pretrained("/tmp/m13")
tok.save_pretrained("/tmp/m13")
PY
head -256 "$PAIRS" > /tmp/val.jsonl
time timeout 300 accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  train_contrastive.py --model_name_or_path /tmp/m13 --train_file "$PAIRS" --validation_file /tmp/val.jsonl \
  --pool_layer 12 --english_encoder frozen --bf16 --per_device_train_batch_size 64 --learning_rate 2e-5 \
  --max_steps 20 --logging_steps 5 --eval_steps 20 --save_steps 20 --report_to none --output_dir /tmp/s1 > "$OUT/stage1_1.3b.log" 2>&1
echo "exit $?"
cp /tmp/s1/log.jsonl "$OUT/stage1_1.3b_log.jsonl" 2>/dev/null
grep -E "step [0-9]+ (cl_loss|eval)|Error|error" "$OUT/stage1_1.3b.log" | sed 's/.*INFO //' | tail -12
ls /tmp/s1/checkpoint-20 2>&1 | tr '\n' ' '
