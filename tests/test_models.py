"""common/models.py: a wrong --model_name_or_path is one line naming it, at once, in every script that loads a
model; a saved folder's weight files get the mode of the files beside them."""

import os
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import RepositoryNotFoundError

import train_contrastive
import train_full
import train_lm_head
from common.demo import tiny_llama
from common.models import HUB_TIMEOUT_S, check_model_path, match_file_modes
from data_prep import expand_vocab

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


@pytest.fixture
def hub(monkeypatch):
    """The hub as the check sees it: online or not, and every question asked of it (none answered)."""
    asked = []

    def model_info(name, timeout=None):
        asked.append((name, timeout))
        raise hub.answer

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: hub.offline)
    hub.asked, hub.offline, hub.answer = asked, True, ConnectionError("no network")
    return hub


def test_local_looking_paths_are_never_asked_of_the_hub(tmp_path, monkeypatch, hub):
    monkeypatch.chdir(tmp_path)
    hub.offline = False
    (tmp_path / "runs" / "s1" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "runs" / "s1" / "checkpoint-12").mkdir()
    for name, message in [
        ("runs/s1/checkpoint-5", r"^--model_name_or_path runs/s1/checkpoint-5: no such folder \(runs/s1 holds "
                                 r"checkpoint-4, checkpoint-12\)$"),
        ("runs/nope", r"^--model_name_or_path runs/nope: no such folder$"),  # runs/ is a folder here: local
        ("./model", r"^--model_name_or_path ./model: no such folder$"),
        (str(tmp_path / "model"), r": no such folder$"),
        ("~/surely-not-here", r": no such folder$"),
    ]:
        with pytest.raises(FileNotFoundError, match=message):
            check_model_path(name)
    assert hub.asked == []
    with pytest.raises(FileNotFoundError, match=r"^--model_name_or_path runs/s1: the folder has no config.json"):
        check_model_path("runs/s1")
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="w.safetensors: a file; give the model folder"):
        check_model_path("w.safetensors")
    (tmp_path / "runs" / "s1" / "checkpoint-4" / "config.json").write_text("{}")
    check_model_path("runs/s1/checkpoint-4")  # a model folder passes


def test_a_hub_id_is_looked_up_in_the_cache_then_asked_once_without_retries(tmp_path, monkeypatch, hub):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"^--model_name_or_path org/nope: no such folder, and no such model "
                                                r"in the Hugging Face cache \(HF_HUB_OFFLINE is set\)$"):
        check_model_path("org/nope")
    assert hub.asked == []  # offline: the cache only
    hub.offline = False
    with pytest.raises(FileNotFoundError, match=r"^--model_name_or_path org/nope: no such folder, and the Hugging "
                                                r"Face hub cannot be reached .* \(ConnectionError\)$"):
        check_model_path("org/nope")
    hub.answer = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
    with pytest.raises(FileNotFoundError, match=r"org/nope: no such folder, and no such model on the Hugging Face hub"):
        check_model_path("org/nope")
    assert hub.asked == [("org/nope", HUB_TIMEOUT_S)] * 2  # one question each time, with a timeout
    # a model in the hub cache passes without a question, online or not
    snapshot = tmp_path / "cache" / "models--org--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "cache" / "models--org--cached" / "refs").mkdir()
    (tmp_path / "cache" / "models--org--cached" / "refs" / "main").write_text("abc")
    check_model_path("org/cached")
    hub.offline = True
    check_model_path("org/cached")
    assert len(hub.asked) == 2


@pytest.mark.parametrize("script", [train_contrastive, train_lm_head, train_full])
def test_every_trainer_names_a_missing_model_before_loading_anything(script, tmp_path, hub, reset_accelerate):
    with pytest.raises(FileNotFoundError, match=r"^--model_name_or_path .*/missing-model: no such folder$"):
        script.main([script.DEMO_CONFIG, "--model_name_or_path", str(tmp_path / "missing-model"),
                     "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_a_copied_demo_config_whose_model_no_longer_resolves(tmp_path, monkeypatch, hub, reset_accelerate):
    """data/demo/stage1.yaml copied elsewhere: its `model` is neither beside it nor here, and not in the cache."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(DEMO / "stage1.yaml", tmp_path / "mine.yaml")
    with pytest.raises(FileNotFoundError, match=r"^--model_name_or_path model: no such folder, and no such model in "
                                                r"the Hugging Face cache"):
        train_contrastive.main([str(tmp_path / "mine.yaml")])


def test_expand_vocab_names_a_missing_model_or_tokenizer_before_training(tmp_path, hub):
    corpus = str(DEMO / "mono_ko_train.txt")
    with pytest.raises(FileNotFoundError, match=r"^--model_name_or_path .*/m: no such folder$"):
        expand_vocab.main(["--base_tokenizer", str(DEMO / "model"), "--ko_corpus", corpus,
                           "--model_name_or_path", str(tmp_path / "m"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match=r"^--base_tokenizer ./tok/tokenizer.model: no such file or folder$"):
        expand_vocab.main(["--base_tokenizer", "./tok/tokenizer.model", "--ko_corpus", corpus,
                           "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_saved_weights_get_the_mode_of_the_files_beside_them(tmp_path):
    umask = os.umask(0o022)
    try:
        tiny_llama(50, hidden_size=16, num_layers=1).save_pretrained(tmp_path)
    finally:
        os.umask(umask)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    assert weights.stat().st_mode & 0o777 == 0o600  # safetensors' temporary file, renamed: why this exists
    match_file_modes(tmp_path)
    assert weights.stat().st_mode & 0o777 == config.stat().st_mode & 0o777 == 0o644
