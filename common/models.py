"""Model folders: checking where a model comes from before anything loads it, and the files a save leaves.

``check_model_path`` turns a wrong ``--model_name_or_path`` into one line naming it, at once. Without it,
``from_pretrained`` takes any name it cannot find as a Hugging Face hub id and asks the hub, five times with
back-off when the network is down (about 30 s), then fails with two chained tracebacks that never name
the flag. A name that cannot be a hub id (``runs/stage1/checkpoint-500``, ``./model``, ``/abs/path``, or
``models/x`` while ``models/`` is a local folder) is a local path, and a missing one is an error without
asking anyone. A name that can be a hub id is looked for in the local hub cache, then, unless offline,
asked once of the hub, without retries.

``match_file_modes`` gives the weight files of a saved folder the mode of its other files.
"""

import os
from pathlib import Path

# How long the one question to the hub may take before the name is reported as not found.
HUB_TIMEOUT_S = 10.0


def _could_be_hub_id(name: str) -> bool:
    """Whether ``name`` is written as a hub id ("name" or "org/name") and not as a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    # "runs/x" while runs/ is a folder here: the user meant that folder
    return not ("/" in name and Path(name.split("/")[0]).is_dir())


def check_model_path(name: str, flag: str = "--model_name_or_path", file: str = "config.json",
                     what: str = "folder") -> None:
    """Raise ``FileNotFoundError`` (one line naming ``flag`` and ``name``) unless ``name`` is a model folder
    (holding ``file``), a hub id whose ``file`` is in the local cache, or, online, a model the hub knows.
    ``what`` names what a local ``name`` should be in the messages."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / file).is_file():
            raise FileNotFoundError(f"{flag} {name}: the folder has no {file} (not a saved model folder)")
        return
    if path.exists():
        raise NotADirectoryError(f"{flag} {name}: a file; give the model folder that holds it")
    if not _could_be_hub_id(name):
        hint = ""
        parent = path.parent
        if path.name.startswith("checkpoint-") and parent.is_dir():
            found = sorted((p.name for p in parent.glob("checkpoint-*") if p.is_dir()), key=lambda n: (len(n), n))[-3:]
            hint = f" ({parent} holds {', '.join(found)})" if found else f" ({parent} holds no checkpoint)"
        raise FileNotFoundError(f"{flag} {name}: no such {what}{hint}")

    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(huggingface_hub.try_to_load_from_cache(name, file), str):
        return
    if huggingface_hub.is_offline_mode():
        raise FileNotFoundError(f"{flag} {name}: no such {what}, and no such model in the Hugging Face cache "
                                "(HF_HUB_OFFLINE is set)")
    try:
        huggingface_hub.model_info(name, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{flag} {name}: no such {what}, and no such model on the Hugging Face hub (a "
                                "private or gated one needs `hf auth login`)") from None
    except Exception as e:  # no network, a proxy, a timeout: the name cannot be confirmed
        raise FileNotFoundError(f"{flag} {name}: no such {what}, and the Hugging Face hub cannot be reached to "
                                f"look for a model of that name ({type(e).__name__})") from None


def match_file_modes(folder: str | Path, reference: str = "config.json", pattern: str = "*.safetensors") -> None:
    """Give the ``pattern`` files of ``folder`` the permission bits of ``reference``.

    safetensors writes each file to a temporary file, created 0600 whatever the umask, and renames it into
    place; the config, tokenizer and JSON files beside it are opened normally (0644 under the usual umask)."""
    folder = Path(folder)
    mode = (folder / reference).stat().st_mode & 0o777
    for path in folder.glob(pattern):
        path.chmod(mode)
