#!/usr/bin/env bash
# The research program of ../shared/RESEARCH.md on one GPU node, in order: the stage-1 experiments
# (configs/seed/stage1/), each evaluated as soon as it has trained; the base models; stage 2 (LM head) and
# stage 3 (full fine-tuning) from one stage-1 run; then one report across all of it (report.py).
#
#   MODEL=models/sheared-llama-1.3b-ko PAIRS=runs/data/parallel MONO_KO=runs/data/mono_ko MONO_EN=runs/data/mono_en \
#       bash configs/seed/run_program.sh
#   NUM_GPUS=8 ACCELERATE_CONFIG=ds_configs/accelerate_1node_8gpu_ddp.yaml MODEL=... bash configs/seed/run_program.sh
#   DRY_RUN=1 MODEL=m bash configs/seed/run_program.sh          # print the commands, run nothing
#
# Run it from the repository root. It can be stopped and started again: a finished step (marked by .done in
# its folder) is skipped, a stopped training run resumes from its latest checkpoint.
#
# Settings (environment variables):
#   MODEL              the Korean-expanded starting model (data_prep/expand_vocab.py output)       [required]
#   PAIRS              folder with the parallel train.jsonl and validation.jsonl   [runs/data/parallel]
#   MONO_KO, MONO_EN   folders with monolingual train.jsonl and validation.jsonl    [runs/data/mono_ko, mono_en]
#   BASELINES          base models evaluated beside the runs (space-separated)      [$MODEL]
#   ARC                folder with the ARC-Challenge EN/KO JSONL files              [../shared/data/arc_challenge_en_ko]
#   NUM_GPUS           processes; the global batch of pairs stays GLOBAL_BATCH      [1]
#   GLOBAL_BATCH       pairs per step over all processes                            [256]
#   ACCELERATE_CONFIG  accelerate config file                                       [ds_configs/accelerate_1gpu.yaml]
#   EXPERIMENTS        stage-1 configs to run, in order (names in configs/seed/stage1/)   [all of them, below]
#   STAGE2_FROM        the stage-1 experiment whose last checkpoint stages 2 and 3 continue   [exp4_shared_mixture]
#   OUT                where everything goes                                        [runs/seed]
#   DRY_RUN            1: print the commands without running them                   [0]
set -euo pipefail

: "${MODEL:?set MODEL to the Korean-expanded starting model folder}"
PAIRS=${PAIRS:-runs/data/parallel}
MONO_KO=${MONO_KO:-runs/data/mono_ko}
MONO_EN=${MONO_EN:-runs/data/mono_en}
BASELINES=${BASELINES:-$MODEL}
ARC=${ARC:-../shared/data/arc_challenge_en_ko}
NUM_GPUS=${NUM_GPUS:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-ds_configs/accelerate_1gpu.yaml}
EXPERIMENTS=${EXPERIMENTS:-"exp0_contrastive layer1 layer17 exp2_frozen_cl_lm exp3_frozen_mixture exp4_shared_mixture
    embeddings_only no_cl_control exp4_pcgrad"}
STAGE2_FROM=${STAGE2_FROM:-exp4_shared_mixture}
OUT=${OUT:-runs/seed}
DRY_RUN=${DRY_RUN:-0}
CONFIGS=$(dirname "$0")
SEED=42            # the trainers' default seed: eval_agreement samples the same validation pairs with it
EVAL_PAIRS=2000    # the configs' max_eval_pairs: eval_agreement's "representation" equals the training log's eval

if (( GLOBAL_BATCH % NUM_GPUS )); then
    echo "GLOBAL_BATCH $GLOBAL_BATCH is not divisible by NUM_GPUS $NUM_GPUS" >&2
    exit 2
fi
PER_DEVICE=$(( GLOBAL_BATCH / NUM_GPUS ))
LAUNCH=(accelerate launch -q --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS")
EVAL_DATA=(--en_data "$ARC/ai2_arc-ARC-Challenge-test.jsonl" --ko_data "$ARC/ko_ai2_arc-ARC-Challenge-test.jsonl"
           --parallel_file "$PAIRS/validation.jsonl" --max_pairs "$EVAL_PAIRS" --seed "$SEED")

run() {  # print a command, then run it (unless DRY_RUN=1)
    echo "+ $*"
    if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

done_marker() {  # mark a finished step, so a second start of the program skips it
    if [[ "$DRY_RUN" != 1 ]]; then touch "$1/.done"; fi
}

resume_flag() {  # --resume_from_checkpoint latest when an earlier start left checkpoints in the folder
    if compgen -G "$1/checkpoint-*[0-9]" > /dev/null; then echo "--resume_from_checkpoint latest"; fi
}

last_checkpoint() {  # the newest complete checkpoint of a run (a placeholder when dry-running)
    local found
    found=$(find "$1" -maxdepth 2 -name trainer_state.json -path "*/checkpoint-*" 2>/dev/null \
            | grep -E '/checkpoint-[0-9]+/trainer_state.json$' | sed 's|/trainer_state.json$||' | sort -V | tail -n 1)
    if [[ -n "$found" ]]; then echo "$found"
    elif [[ "$DRY_RUN" == 1 ]]; then echo "$1/checkpoint-LAST"
    else echo "no complete checkpoint in $1" >&2; exit 1
    fi
}

evaluate() {  # every checkpoint of a run: tasks, per-layer metrics and the representation as trained
    local run_dir=$1 name=$2
    [[ -f "$OUT/eval/$name/.done" ]] && return 0
    run python eval_agreement.py --watch "$run_dir" "${EVAL_DATA[@]}" --output_dir "$OUT/eval/$name" --no_plots
    done_marker "$OUT/eval/$name"
}

# Stage 1: the experiments, each evaluated once it has trained
for name in $EXPERIMENTS; do
    dir="$OUT/stage1/$name"
    if [[ ! -f "$dir/.done" ]]; then
        # shellcheck disable=SC2046
        run "${LAUNCH[@]}" train_contrastive.py "$CONFIGS/stage1/$name.yaml" \
            --model_name_or_path "$MODEL" \
            --train_file "$PAIRS/train.jsonl" --validation_file "$PAIRS/validation.jsonl" \
            --lm_train_file "$MONO_KO/train.jsonl" --lm_en_train_file "$MONO_EN/train.jsonl" \
            --per_device_train_batch_size "$PER_DEVICE" --seed "$SEED" --output_dir "$dir" $(resume_flag "$dir")
        done_marker "$dir"
    fi
    evaluate "$dir" "$name"
done

# The base models, pooled as each stage-1 run pools (its layer or mixture at step 0) for the report's base rows
if [[ ! -f "$OUT/eval/base/.done" ]]; then
    pool_like=()
    for name in $EXPERIMENTS; do pool_like+=("$OUT/stage1/$name"); done
    # shellcheck disable=SC2086
    run python eval_agreement.py --baseline $BASELINES --pool_like "${pool_like[@]}" "${EVAL_DATA[@]}" \
        --output_dir "$OUT/eval/base" --no_plots
    done_marker "$OUT/eval/base"
fi

# Stage 2: the LM head on Korean text, from the last checkpoint of STAGE2_FROM
dir="$OUT/stage2/lm_head_ko"
if [[ ! -f "$dir/.done" ]]; then
    start=$(last_checkpoint "$OUT/stage1/$STAGE2_FROM")
    # shellcheck disable=SC2046
    run "${LAUNCH[@]}" train_lm_head.py "$CONFIGS/stage2/lm_head_ko.yaml" \
        --model_name_or_path "$start" \
        --train_file "$MONO_KO/train.jsonl" --validation_file "$MONO_KO/validation.jsonl" \
        --en_validation_file "$MONO_EN/validation.jsonl" --seed "$SEED" --output_dir "$dir" $(resume_flag "$dir")
    done_marker "$dir"
fi
evaluate "$dir" stage2_lm_head_ko

# Stage 3: full fine-tuning on Korean and English text, from the last stage-2 checkpoint
dir="$OUT/stage3/full_ko_en"
if [[ ! -f "$dir/.done" ]]; then
    start=$(last_checkpoint "$OUT/stage2/lm_head_ko")
    # shellcheck disable=SC2046
    run "${LAUNCH[@]}" train_full.py "$CONFIGS/stage3/full_ko_en.yaml" \
        --model_name_or_path "$start" \
        --train_file "$MONO_KO/train.jsonl" --en_train_file "$MONO_EN/train.jsonl" \
        --validation_file "$MONO_KO/validation.jsonl" --en_validation_file "$MONO_EN/validation.jsonl" \
        --seed "$SEED" --output_dir "$dir" $(resume_flag "$dir")
    done_marker "$dir"
fi
evaluate "$dir" stage3_full_ko_en

# One report: the research's tables (per run and checkpoint, base models as rows), plots, training curves
run python report.py "$OUT"/stage1/* "$OUT"/stage2/* "$OUT"/stage3/* "$OUT"/eval/* --output_dir "$OUT/report"
