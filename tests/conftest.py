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


@pytest.fixture(scope="session")
def tiny_pair_model(tmp_path_factory) -> Path:
    """A tiny random Llama (4 layers, 32 wide) saved as a Hugging Face folder, with a tokenizer trained on
    the shipped demo pairs: the model of the stage-1 tests that need a saved model but not the demo's."""
    from common.data import iter_parallel_jsonl
    from common.demo import tiny_llama, train_demo_tokenizer

    path = tmp_path_factory.mktemp("tiny_pair_model")
    train = str(ROOT / "data" / "demo" / "train.jsonl")
    tokenizer = train_demo_tokenizer([row[side] for row in iter_parallel_jsonl(train) for side in ("ko", "en")])
    tiny_llama(len(tokenizer), hidden_size=32, num_layers=4, seed=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
