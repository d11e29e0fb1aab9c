"""The evaluation behind eval_agreement.py, in parts that can be read and tested alone:

- ``models``: which models a call names, their labels in the results, loading them;
- ``tasks``: paired lm-eval tasks: finding, checking and joining the English and Korean items, running them;
- ``representation``: how a run pooled its sentence vectors, and the per-layer alignment metrics;
- ``render``: the tables and plots, shared by eval_agreement.py and report.py;
- ``watch``: following training runs, evaluating each new checkpoint once.

The statistics (intervals, paired comparisons, agreement) are pure and live in ``common.stats``.
"""

import re


class EvalError(ValueError):
    """Bad input (files, checkpoints, task pairs): the message says what and where. A ``ValueError``, so
    ``common.cli.run_main`` prints it as one line with exit status 2."""


STEP_RE = re.compile(r"(?:checkpoint|step|ckpt|iter)[-_]?(\d+)$")
