"""Shape figures of a checkout: the longest function per script, lines over 120 characters, sys.path
manipulations, `# noqa: E402` imports, and lines the three trainers repeat.

    python -m bench.code_shape [ROOT]          # default: this checkout

"Repeated lines": stripped lines of 20 characters or more (comments and blank lines excluded) that occur in
all three trainers; a test (tests/test_script_consistency.py) keeps the marked shared blocks in step.
"""

import ast
import sys
from pathlib import Path

SCRIPTS = ["train_contrastive.py", "train_lm_head.py", "train_full.py", "eval_agreement.py", "report.py",
           "data_prep/prepare_parallel.py", "data_prep/prepare_mono.py", "data_prep/expand_vocab.py"]
TRAINERS = ["train_contrastive.py", "train_lm_head.py", "train_full.py"]


def longest_function(path: Path) -> tuple[str, int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    best = ("-", 0)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > best[1]:
                best = (node.name, length)
    return best


def main(root: Path) -> None:
    files = [p for p in root.rglob("*.py")
             if ".venv" not in p.parts and ".cache" not in p.parts and p.name != "code_shape.py"]
    print(f"{root}")
    for name in SCRIPTS:
        path = root / name
        if path.is_file():
            func, length = longest_function(path)
            over = sum(len(line) > 120 for line in path.read_text(encoding="utf-8").splitlines())
            print(f"  {name:<32} longest function {func} ({length} lines), lines over 120 characters: {over}")
    over = sum(len(line) > 120 for p in files for line in p.read_text(encoding="utf-8").splitlines())
    hacks = sum(line.strip().startswith("sys.path.insert") for p in files
                for line in p.read_text(encoding="utf-8").splitlines())
    noqa = sum("noqa: E402" in p.read_text(encoding="utf-8") for p in files)
    noqa_lines = sum(p.read_text(encoding="utf-8").count("noqa: E402") for p in files)
    sets = []
    for name in TRAINERS:
        lines = (line.strip() for line in (root / name).read_text(encoding="utf-8").splitlines())
        sets.append({line for line in lines if len(line) >= 20 and not line.startswith("#")})
    print(f"  all .py files: lines over 120 characters {over}, sys.path.insert {hacks}, "
          f"'# noqa: E402' {noqa_lines} (in {noqa} files)")
    print(f"  lines all three trainers repeat: {len(set.intersection(*sets))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
