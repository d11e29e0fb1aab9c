"""Data preparation: parallel corpora -> parallel JSONL, monolingual text -> JSONL / packed LM blocks,
Korean vocabulary expansion of a Llama tokenizer and model. Each script runs on its own from the
repository root (``python -m data_prep.<script> --help``, or ``python -m data_prep.<script> CONFIG.yaml
--flag value``); shared reading and cleaning code lives in ``sources.py``. Outputs go under ``runs/``
by default, never into the shipped ``data/`` folder."""
