#!/usr/bin/env bash
# One CUDA GPU, one run: the trainers themselves on the Sheared-LLaMA-1.3B architecture (random weights, the
# Llama-2 tokenizer, bf16), each reporting its own logged pairs/s, tokens/s, MFU and peak memory:
#   first bench/check_padding.py (NaN from left padding on this device?); stage 1 at layer 17 (shared;
#   frozen English copy) and layer 24 (shared: the whole model, the peer's job) beside the
#   sentence-transformers peer (MultipleNegativesSymmetricRankingLoss) on the same model and pairs; compiled
#   layers; gradient caching at 1,024 pairs a step in chunks of 128; the frozen copy at 256-512 pairs;
#   stage 3 at 8 and 16 blocks of 1,024 tokens, and compiled; padding to a multiple of 64; packed sentences
#   (--pack_length, each side apart and both sides in one forward, compiled, at 128-1,024 pairs); and
#   bench_throughput on the trainer's first configuration, for the two MFUs to agree. Four runs also record two
#   steps with --profile_steps (OUT_DIR/profile_RUN.txt: where a step's time goes). Most important first:
#   whatever a time limit cuts is at the end. No checkpoints are written (--save_steps 0).
#
#   bash bench/gpu_stage1.sh DATA_DIR OUT_DIR
#   SMOKE=1 bash bench/gpu_stage1.sh DATA_DIR OUT_DIR    # the same commands on a CPU, 64 wide: flags and plumbing
#   ONLY="padding s1_l17_shared_b128 peer" bash bench/gpu_stage1.sh DATA_DIR OUT_DIR   # some runs only
# DATA_DIR holds pairs.jsonl, val.jsonl, ko.txt, en.txt and the Llama-2 tokenizer.model. Writes
# OUT_DIR/summary.txt (one line per run: the last logged window) and OUT_DIR/logs.txt (every run's log.jsonl).
set -uo pipefail
DATA=$1 OUT=$2
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# SMOKE=1: two steps a run, and bench_throughput's tiny model (8 layers)
QUICK=() BENCH=(--model_config sheared-1.3b --pool_layer 17 --steps 10)
# --profile_steps for runs of 20 and of 30 steps: two steps in the window before the one summarized (so the
# profiler's cost stays out of the figures), after compiling
P20=8-9 P30=18-19
[ "${SMOKE:-0}" = 1 ] && QUICK=(--max_steps 2 --logging_steps 1) BENCH=(--model_config tiny --pool_layer 4 --steps 2) \
  P20=2-2 P30=2-2
RUNS=/tmp/koen_runs  # each run's log.jsonl, removed after the run (no checkpoints are written)
SUMMARY=$OUT/summary.txt LOGS=$OUT/logs.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$SUMMARY"
python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)" | tee -a "$SUMMARY"

rm -rf /tmp/m13
python3 - "$DATA" "${SMOKE:-0}" <<'PY'
import shutil, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer
shutil.copytree(sys.argv[1], "/tmp/m13", ignore=lambda d, names: [n for n in names if n != "tokenizer.model"])
tok = LlamaTokenizer.from_pretrained("/tmp/m13", add_bos_token=True)
width = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4) \
    if sys.argv[2] == "1" else dict(hidden_size=2048, intermediate_size=5504, num_attention_heads=16, num_key_value_heads=16)
cfg = LlamaConfig(vocab_size=len(tok), num_hidden_layers=24, max_position_embeddings=4096,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **width)
with torch.device("cpu" if sys.argv[2] == "1" else "cuda"):
    LlamaForCausalLM(cfg).save_pretrained("/tmp/m13")
tok.save_pretrained("/tmp/m13")
PY

summarize() {  # name, script's output dir: the last logged training window and the peak memory
  local status=0
  python3 - "$1" "$2" >> "$SUMMARY" <<'PY' || status=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[2] + "/log.jsonl")]
last = [r for r in rows if "tokens_per_s" in r][-1]
keep = ("step", "pairs_per_s", "tokens_per_s", "padded_tokens_per_s", "mfu", "peak_memory_gib", "cl_loss", "loss")
print(sys.argv[1], {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items() if k in keep})
PY
  { echo "== $1"; cat "$2/log.jsonl"; } >> "$LOGS"
  for f in "$2"/profile/steps_*.txt; do  # --profile_steps: the table whole, its first lines in the summary
    [ -e "$f" ] || continue
    cp "$f" "$OUT/profile_$1.txt" && head -3 "$f" | sed "s/^/$1 profile: /" >> "$SUMMARY"
  done
  return $status  # the caller adds the run's log tail when the summary could not be read
}

stage1() {  # name, seconds allowed, flags
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 train_contrastive.py --model_name_or_path /tmp/m13 --train_file "$DATA/pairs.jsonl" \
    --bf16 --learning_rate 2e-5 --max_steps 20 --logging_steps 10 --save_steps 0 --report_to none \
    --output_dir "$RUNS/$name" "$@" "${QUICK[@]}" > "$OUT/run.log" 2>&1
  echo "$name: exit $?" | tee -a "$SUMMARY"
  summarize "$name" "$RUNS/$name" || tail -5 "$OUT/run.log" >> "$SUMMARY"
  rm -rf "$RUNS/$name"
}

stage3() {  # name, seconds allowed, flags
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 train_full.py --model_name_or_path /tmp/m13 --train_file "$DATA/ko.txt" \
    --en_train_file "$DATA/en.txt" --block_size 1024 --bf16 --max_steps 20 --logging_steps 10 --save_steps 0 \
    --report_to none --output_dir "$RUNS/$name" "$@" "${QUICK[@]}" > "$OUT/run.log" 2>&1
  echo "$name: exit $?" | tee -a "$SUMMARY"
  summarize "$name" "$RUNS/$name" || tail -5 "$OUT/run.log" >> "$SUMMARY"
  rm -rf "$RUNS/$name"
}

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }  # ONLY="name ...": just those runs

want padding && timeout 60 python3 -m bench.check_padding 2>"$OUT/run.log" | tee -a "$SUMMARY"
want s1_l17_shared_b128 && stage1 s1_l17_shared_b128 120 --pool_layer 17 --per_device_train_batch_size 128 \
  --profile_steps $P20
# packed sentences (--pack_length: no padding), each side apart, both sides in one forward, compiled, larger
# batches; then bench_throughput's layouts side by side in one process
want s1_l17_shared_b128_packed && stage1 s1_l17_shared_b128_packed 120 --pool_layer 17 \
  --per_device_train_batch_size 128 --pack_length 256
want s1_l17_shared_b128_joint_packed && stage1 s1_l17_shared_b128_joint_packed 120 --pool_layer 17 \
  --per_device_train_batch_size 128 --joint_forward --pack_length 256
want s1_l17_shared_b128_joint_packed_compile && stage1 s1_l17_shared_b128_joint_packed_compile 200 \
  --pool_layer 17 --per_device_train_batch_size 128 --joint_forward --pack_length 256 --torch_compile --max_steps 30 \
  --profile_steps $P30
want s1_l17_shared_b256_joint_packed_compile && stage1 s1_l17_shared_b256_joint_packed_compile 200 \
  --pool_layer 17 --per_device_train_batch_size 256 --joint_forward --pack_length 256 --torch_compile --max_steps 30
want s1_l17_frozen_b256_packed_compile && stage1 s1_l17_frozen_b256_packed_compile 200 --pool_layer 17 \
  --english_encoder frozen --per_device_train_batch_size 256 --pack_length 256 --torch_compile --max_steps 30 \
  --profile_steps $P30
want s1_l17_shared_b1024_cached256_joint_packed_compile && stage1 \
  s1_l17_shared_b1024_cached256_joint_packed_compile 240 --pool_layer 17 --per_device_train_batch_size 1024 \
  --cl_chunk_size 256 --joint_forward --pack_length 256 --torch_compile --max_steps 30
# the same runs without cuDNN's attention (--sdpa_backends flash,efficient,math): on the H200 its host-side
# planning took most of a step's CPU time while the GPU waited (profile_*.txt: aten::_cudnn_attention_*)
NOCUDNN=(--sdpa_backends flash,efficient,math)
want s1_l17_shared_b128_nocudnn && stage1 s1_l17_shared_b128_nocudnn 120 --pool_layer 17 \
  --per_device_train_batch_size 128 "${NOCUDNN[@]}" --profile_steps $P20
want s1_l17_shared_b256_joint_packed_compile_nocudnn && stage1 s1_l17_shared_b256_joint_packed_compile_nocudnn 200 \
  --pool_layer 17 --per_device_train_batch_size 256 --joint_forward --pack_length 256 --torch_compile --max_steps 30 \
  "${NOCUDNN[@]}" --profile_steps $P30
want s1_l17_frozen_b256_packed_compile_nocudnn && stage1 s1_l17_frozen_b256_packed_compile_nocudnn 200 \
  --pool_layer 17 --english_encoder frozen --per_device_train_batch_size 256 --pack_length 256 --torch_compile \
  --max_steps 30 "${NOCUDNN[@]}" --profile_steps $P30
want s1_l17_shared_b1024_cached256_joint_packed_compile_nocudnn && stage1 \
  s1_l17_shared_b1024_cached256_joint_packed_compile_nocudnn 240 --pool_layer 17 --per_device_train_batch_size 1024 \
  --cl_chunk_size 256 --joint_forward --pack_length 256 --torch_compile --max_steps 30 "${NOCUDNN[@]}"
want bench_layouts && { timeout 200 python3 -m bench.bench_throughput "${BENCH[@]}" --bf16 \
  --train_file "$DATA/pairs.jsonl" --tokenizer /tmp/m13 --scenarios stage1_shared \
  --layouts padded,joint,packed,joint_packed --batch_sizes 128 --output "$OUT/bench_layouts.json" \
  2>"$OUT/run.log" | tee -a "$SUMMARY" || tail -5 "$OUT/run.log" >> "$SUMMARY"; }
want s1_l17_frozen_b128 && stage1 s1_l17_frozen_b128 120 --pool_layer 17 --english_encoder frozen \
  --per_device_train_batch_size 128
want s1_l24_shared_b64 && stage1 s1_l24_shared_b64 120 --pool_layer 24 --per_device_train_batch_size 64
want peer && { timeout 120 python3 -m bench.peer_mnsrl /tmp/m13 "$DATA/pairs.jsonl" --batch_size 64 --steps 20 \
  2>"$OUT/run.log" | tee -a "$SUMMARY" || tail -5 "$OUT/run.log" >> "$SUMMARY"; }
want s1_l17_shared_b128_compile && stage1 s1_l17_shared_b128_compile 200 --pool_layer 17 \
  --per_device_train_batch_size 128 --torch_compile --max_steps 30
want s1_l17_shared_b1024_cached128 && stage1 s1_l17_shared_b1024_cached128 150 --pool_layer 17 \
  --per_device_train_batch_size 1024 --cl_chunk_size 128
want s1_l17_frozen_b512 && stage1 s1_l17_frozen_b512 120 --pool_layer 17 --english_encoder frozen \
  --per_device_train_batch_size 512
want s1_l17_frozen_b256_compile && stage1 s1_l17_frozen_b256_compile 200 --pool_layer 17 \
  --english_encoder frozen --per_device_train_batch_size 256 --torch_compile --max_steps 30
want s3_b8x1024 && stage3 s3_b8x1024 120 --per_device_train_batch_size 8
want s3_b16x1024 && stage3 s3_b16x1024 120 --per_device_train_batch_size 16
want s3_b16x1024_compile && stage3 s3_b16x1024_compile 200 --per_device_train_batch_size 16 --torch_compile \
  --max_steps 30 --profile_steps $P30
want s1_l17_shared_b128_pad64 && stage1 s1_l17_shared_b128_pad64 120 --pool_layer 17 \
  --per_device_train_batch_size 128 --pad_to_multiple_of 64
# the next levers for stage 1's MFU: compiled and chunked together, larger chunks, a larger batch compiled,
# both sides in one forward
want s1_l17_shared_b1024_cached256_compile && stage1 s1_l17_shared_b1024_cached256_compile 240 --pool_layer 17 \
  --per_device_train_batch_size 1024 --cl_chunk_size 256 --torch_compile --max_steps 30
want s1_l17_shared_b512_compile && stage1 s1_l17_shared_b512_compile 240 --pool_layer 17 \
  --per_device_train_batch_size 512 --torch_compile --max_steps 30
want s1_l17_shared_b128_joint && stage1 s1_l17_shared_b128_joint 120 --pool_layer 17 \
  --per_device_train_batch_size 128 --joint_forward
want s1_l17_shared_b128_joint_compile && stage1 s1_l17_shared_b128_joint_compile 200 --pool_layer 17 \
  --per_device_train_batch_size 128 --joint_forward --torch_compile --max_steps 30
want bench && { timeout 150 python3 -m bench.bench_throughput "${BENCH[@]}" --bf16 \
  --train_file "$DATA/pairs.jsonl" --tokenizer /tmp/m13 --scenarios stage1_shared \
  --batch_sizes 128 --output "$OUT/bench_throughput.json" 2>"$OUT/run.log" | tee -a "$SUMMARY" \
  || tail -5 "$OUT/run.log" >> "$SUMMARY"; }
cat "$SUMMARY"
