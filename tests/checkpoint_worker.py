"""Two-process checkpoint writer for tests/test_runs.py, where rank 1 lags behind rank 0.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m tests.checkpoint_worker OUT_DIR

Each process trains a tiny Llama for 3 steps and saves after each through ``common.checkpoint``; rank 1
sleeps before writing its resume state, so a save that renamed the folder without waiting for every
process would leave checkpoints without ``random_states_1.pkl``.
"""

import sys
import time

import torch
from accelerate import Accelerator

from common.checkpoint import register_weights_in_export, save_checkpoint
from common.demo import tiny_llama, train_demo_tokenizer


def main(out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    tokenizer = train_demo_tokenizer(["가 나 다 라", "a b c d"], vocab_size=40)
    model = tiny_llama(len(tokenizer), hidden_size=16, num_layers=1, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    register_weights_in_export(accelerator)
    save_state = accelerator.save_state

    def lagging_save_state(*args, **kwargs):
        if accelerator.process_index == 1:
            time.sleep(1.0)
        return save_state(*args, **kwargs)

    accelerator.save_state = lagging_save_state
    ids = torch.randint(4, len(tokenizer), (2, 8), generator=torch.Generator().manual_seed(accelerator.process_index))
    for step in range(1, 4):
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        save_checkpoint(accelerator, model, tokenizer, out_dir, step, {"step": step}, save_state_limit=0)


if __name__ == "__main__":
    main(sys.argv[1])
