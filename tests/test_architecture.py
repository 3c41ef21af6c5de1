"""The house rules that keep the code readable, checked rather than hoped for (docs/architecture.md)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src" / "finetune_bert").glob("*.py"))


def test_imports_follow_the_stage_layers():
    """The import-linter contract in pyproject.toml: stages import only the stages below them, no cycles."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "1 kept, 0 broken" in done.stdout, done.stdout[-3000:]


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_over_60_lines_or_6_positional_parameters():
    long, wide = [], []
    for path in SOURCES:
        for fn in _functions(path):
            where = f"{path.name}:{fn.lineno} {fn.name}"
            if fn.end_lineno - fn.lineno + 1 > 60:
                long.append(f"{where} ({fn.end_lineno - fn.lineno + 1} lines)")
            positional = [a for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
            if len(positional) > 6:
                wide.append(f"{where} ({len(positional)} positional)")
    assert not long and not wide, long + wide


def test_no_file_over_400_lines():
    assert not [(p.name, n) for p in SOURCES if (n := len(p.read_text().splitlines())) > 400]


def test_no_utils_module():
    assert not [p.name for p in SOURCES if p.stem in ("utils", "util", "helpers", "misc", "common")]


def test_benchmarks_import_the_product_without_sys_path_edits():
    edit = re.compile(r"sys\.path\s*(\.(insert|append|extend)|\[|=|\+=)")
    edits = [p.name for p in (ROOT / "benchmarks").glob("*.py") if edit.search(p.read_text())]
    assert not edits
