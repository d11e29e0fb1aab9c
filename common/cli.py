"""Entry points: expected bad input ends in one line on stderr and a non-zero exit, not a traceback.

    if __name__ == "__main__":
        run_main(main)

Expected errors are what a user can fix from the message alone: bad data (``DataError``, which names
the file and line), bad arguments (``ValueError``), a missing input (``FileNotFoundError``), an output
folder that a run refuses to touch (``FileExistsError``), a loss that went NaN (``FloatingPointError``,
which names the step). They print ``script.py: error: message``
and exit with status 2; anything else is a bug and keeps its traceback. ``KOEN_ALIGN_DEBUG=1`` keeps
the traceback of expected errors too.

Under several processes every rank meets the same bad input; only rank 0 prints. Under ``accelerate
launch`` the launcher adds its own traceback after the child's line unless given ``-q`` (single
process and DeepSpeed launches), so the README's commands for bad-input checks use ``accelerate launch -q``.
"""

import os
import sys

EXPECTED = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            FloatingPointError)


def run_main(main, argv: list[str] | None = None, prog: str | None = None) -> None:
    """Call ``main(argv)``; turn an expected error into one line and exit status 2."""
    prog = prog or os.path.basename(sys.argv[0])
    try:
        main(argv) if argv is not None else main()
    except EXPECTED as e:
        if os.environ.get("KOEN_ALIGN_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
