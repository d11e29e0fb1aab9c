#!/usr/bin/env bash
# One node's launcher of a several-node run: srun starts this once per node (configs/slurm/stage*.sbatch).
#
#   MAIN_HOST=node001 bash configs/slurm/launch_node.sh train_contrastive.py CONFIG.yaml --output_dir DIR ...
#
# It runs `accelerate launch` with one process per GPU of this node, the first node of the allocation as the
# c10d rendezvous (every node names the same MAIN_HOST:PORT; the node that hosts it starts the store) and
# --max_restarts: when a worker dies, the launchers of every node start all workers again with the same
# command, and the trainer's `--resume_from_checkpoint latest` resumes the newest checkpoint every node holds
# (or starts afresh when there is none yet). The rank of this node comes from SLURM.
#
# Environment (SLURM sets the first three on each node):
#   SLURM_NNODES, SLURM_NODEID   nodes in the job, this node's index
#   MAIN_HOST                    the rendezvous host: the first node's name            [required]
#   PORT                         the rendezvous port                                   [29500]
#   GPUS_PER_NODE                processes per node                                    [8]
#   MAX_RESTARTS                 restarts after a failed worker, every node together   [3]
#   RDZV_BACKEND                 torch elastic rendezvous                              [c10d]
#   PYTHON                       the interpreter with the project installed            [python]
#   ACCELERATE_CONFIG            an accelerate config file (e.g. DeepSpeed); its node count, rank and
#                                address are overridden by the flags here              [none: DDP]
# On CPU (the tests, both "nodes" on one host) set ACCELERATE_USE_CPU=1 and GPUS_PER_NODE=1.
set -euo pipefail

: "${MAIN_HOST:?set MAIN_HOST to the first node of the job (the rendezvous)}"
NNODES=${SLURM_NNODES:-1}
NODE_RANK=${SLURM_NODEID:-0}
PORT=${PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAX_RESTARTS=${MAX_RESTARTS:-3}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}

config=()
if [ -n "${ACCELERATE_CONFIG:-}" ]; then
    config=(--config_file "$ACCELERATE_CONFIG")
else
    config=(--multi_gpu --mixed_precision no --dynamo_backend no)
fi
exec "${PYTHON:-python}" -m accelerate.commands.launch "${config[@]}" \
    --num_machines "$NNODES" --num_processes $((NNODES * GPUS_PER_NODE)) --machine_rank "$NODE_RANK" \
    --main_process_ip "$MAIN_HOST" --main_process_port "$PORT" \
    --rdzv_backend "$RDZV_BACKEND" --max_restarts "$MAX_RESTARTS" "$@"
