import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Nothing may come from the hub: anything missing must fail fast, not hang on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip cleanly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture
def reset_accelerate():
    """Scripts' main() run in this process each build an Accelerator; accelerate keeps process-wide
    state, so reset it before and after the test. The test calls the fixture's value between runs."""
    from accelerate.state import AcceleratorState, PartialState

    def reset():
        AcceleratorState._reset_state(True)
        PartialState._reset_state()

    reset()
    yield reset
    reset()
