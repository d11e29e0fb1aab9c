"""Data preparation: parallel corpora -> parallel JSONL, monolingual text -> JSONL / packed LM blocks,
Korean vocabulary expansion of a Llama tokenizer and model. Each script runs on its own
(``python data_prep/<script>.py --help``); shared reading and cleaning code lives in ``sources.py``."""
