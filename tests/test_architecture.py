"""The house rules that keep the code readable, checked rather than hoped for (docs/architecture.md)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "finetune_bert"
SOURCES = sorted(PACKAGE.rglob("*.py"))
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


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
            where = f"{path.relative_to(PACKAGE)}:{fn.lineno} {fn.name}"
            if fn.end_lineno - fn.lineno + 1 > 60:
                long.append(f"{where} ({fn.end_lineno - fn.lineno + 1} lines)")
            positional = [a for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
            if len(positional) > 6:
                wide.append(f"{where} ({len(positional)} positional)")
    assert not long and not wide, long + wide


def test_no_file_over_400_lines():
    assert not [(str(p.relative_to(PACKAGE)), n) for p in SOURCES if (n := len(p.read_text().splitlines())) > 400]


def test_no_utils_module():
    assert not [str(p.relative_to(PACKAGE)) for p in SOURCES
                if p.stem in ("utils", "util", "helpers", "misc", "common")]


def test_benchmarks_import_the_product_without_sys_path_edits():
    edit = re.compile(r"sys\.path\s*(\.(insert|append|extend)|\[|=|\+=)")
    edits = [p.name for p in (ROOT / "benchmarks").glob("*.py") if edit.search(p.read_text())]
    assert not edits


def test_no_import_circle_of_any_kind():
    """No module imports another that imports it back, through any path: type-only and function-local
    imports included (the layers contract sees only arrows between subpackages)."""
    import grimp

    graph = grimp.build_graph("finetune_bert", exclude_type_checking_imports=False, cache_dir=None)
    modules = sorted(graph.modules)
    circles = []
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(imported, module):
                circles.append(" -> ".join(graph.find_shortest_chain(imported, module) or ()) + f" -> {imported}")
    assert not circles, circles


def test_every_subpackage_has_its_tests_folder():
    """Tests mirror the subpackages: tests/<subpackage>/ for each one."""
    assert not [name for name in SUBPACKAGES if not (ROOT / "tests" / name).is_dir()]


def test_the_architecture_doc_names_every_module_and_copies_the_contract():
    """docs/architecture.md cannot drift: every module is named by its path in its subpackage, and its layer
    diagram is the import-linter contract in pyproject.toml, line for line."""
    import tomllib

    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = {(sub, mod) for sub, mod in re.findall(r"^\| ?(\w+)? ?\| `([\w_]+\.py)` \|", doc, re.M)}
    named, sub = set(), "core"
    for row_sub, module in re.findall(r"^\| ?(\w*) ?\| `([\w_]+\.py)` \|", doc, re.M):
        sub = row_sub or sub
        named.add(module if sub == "core" else f"{sub}/{module}")
    modules = {str(p.relative_to(PACKAGE)) for p in SOURCES if p.name != "__init__.py"} - {"__main__.py"}
    assert rows and not modules - named, sorted(modules - named)
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    block = doc.split("## Who may import whom", 1)[1].split("```")[1].strip().splitlines()
    assert block == contract["layers"]
