"""Runs a trainer under a launcher, for tests/test_multinode.py:

    accelerate launch ... -m tests.node_worker train_full.py ARGS...

With ``KOEN_TEST_KILL=STEP:MARKER`` in the environment, the process of global rank 1 dies by SIGKILL (as a
node whose machine fails) just after writing its part of ``checkpoint-STEP``'s resume state, before any
folder of that checkpoint is complete, the first time only (``MARKER`` is created then). Dying at this
point, inside the save, leaves ``.tmp`` folders on both nodes; the restart must resume the checkpoint
before it and end like an uninterrupted run.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from accelerate import Accelerator


def die_in_save(step: int, marker: Path) -> None:
    save_state = Accelerator.save_state

    def save_state_then_die(self, output_dir=None, *args, **kwargs):
        out = save_state(self, output_dir, *args, **kwargs)
        if Path(output_dir).parent.name == f"checkpoint-{step}.tmp" and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    Accelerator.save_state = save_state_then_die


if __name__ == "__main__":
    kill = os.environ.get("KOEN_TEST_KILL")
    if kill and os.environ.get("RANK") == "1":
        step, marker = kill.split(":", 1)
        die_in_save(int(step), Path(marker))
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
