"""The three trainers are written out in full (each reads top to bottom), so the copies they share are
kept in step here: shared argument fields, and the blocks marked ``# [shared: NAME]`` ... ``# [/shared]``.
Change a shared block in one trainer and this test says which others must change with it."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

import train_contrastive
import train_full
import train_lm_head

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = {"train_contrastive.py": train_contrastive, "train_lm_head.py": train_lm_head, "train_full.py": train_full}

# Fields that several trainers have but that legitimately differ, and why. Every other field that two
# trainers share must be the same field: type, default and help.
DIFFER = {
    "model_name_or_path": "each stage names the checkpoint it usually starts from",
    "train_file": "pairs in stage 1, text in stages 2 and 3",
    "validation_file": "pairs in stage 1, text in stages 2 and 3",
    "output_dir": "each stage its own default folder",
    "learning_rate": "a head alone takes a larger rate than the whole model",
    "per_device_train_batch_size": "pairs in stage 1, blocks in stages 2 and 3",
    "block_size": "stage 1's LM blocks are an auxiliary loss; stages 2 and 3 train on them",
    "num_train_epochs": "what an epoch passes over differs",
    "eval_steps": "alignment metrics in stage 1, perplexity in stages 2 and 3",
    "weight_decay": "which parameters the optimizer holds differs",
}
BLOCKS = ["setup", "output dir", "resume", "trackers", "write_log", "optimizer step", "pacing", "finish"]


def shared_blocks(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    blocks = {}
    for m in re.finditer(r"^[ \t]*# \[shared: ([\w ]+)\]\n(.*?)^[ \t]*# \[/shared\]", text, re.M | re.S):
        assert m.group(1) not in blocks, f"{path.name}: block {m.group(1)!r} twice"
        blocks[m.group(1)] = m.group(2)
    assert text.count("# [shared:") == len(blocks), f"{path.name}: a '# [shared: ...]' marker without its end"
    return blocks


def test_shared_argument_fields_are_the_same_field():
    fields = {name: {f.name: f for f in dataclasses.fields(m.Arguments)} for name, m in TRAINERS.items()}
    # the declared types: transformers' argument parser rewrites a field's ``type`` in place ("str | None" to
    # str) once a trainer has parsed its arguments, so after other tests the fields' own types disagree
    hints = {name: typing.get_type_hints(m.Arguments) for name, m in TRAINERS.items()}
    names = set().union(*fields.values())
    checked = []
    for field in sorted(names):
        holders = [script for script in TRAINERS if field in fields[script]]
        if len(holders) < 2 or field in DIFFER:
            continue
        first = fields[holders[0]][field]
        for script in holders[1:]:
            other = fields[script][field]
            assert (hints[script][field], other.default, other.metadata.get("help")) == \
                   (hints[holders[0]][field], first.default, first.metadata.get("help")), \
                f"--{field} differs between {holders[0]} and {script}: keep them in step or list it in DIFFER"
        checked.append(field)
    # the shared core of every trainer is compared, not only whatever happens to match
    assert {"seed", "bf16", "max_steps", "save_steps", "save_total_limit", "resume_from_checkpoint", "report_to",
            "logging_steps", "max_grad_norm", "warmup_ratio", "lr_scheduler_type"} <= set(checked)
    assert set(DIFFER) <= names, "DIFFER lists a field no trainer has"


@pytest.mark.parametrize("block", BLOCKS)
def test_shared_blocks_are_identical(block):
    texts = {script: shared_blocks(ROOT / script).get(block) for script in TRAINERS}
    missing = [script for script, text in texts.items() if text is None]
    assert not missing, f"block {block!r} is missing from {missing}"
    reference = texts["train_contrastive.py"]
    for script, text in texts.items():
        assert text == reference, f"block {block!r} of {script} differs from train_contrastive.py's"


def test_every_marked_block_is_checked():
    for script in TRAINERS:
        assert set(shared_blocks(ROOT / script)) <= set(BLOCKS), script
