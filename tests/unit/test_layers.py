"""The layering: torch only in engine modules, a decoding core that runs without it, and `lmql-lite check` without numpy."""
import ast
import subprocess
import sys
from pathlib import Path

import lmql_lite

PACKAGE = Path(lmql_lite.__file__).parent
ENGINES = {"models/transformers.py", "models/nanogpt.py"}  # the modules allowed to import torch


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_engine_modules_import_torch():
    importers = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "torch" in imported_modules(p)}
    assert importers <= ENGINES


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_queries_decode_on_the_fake_model_without_torch():
    code = ("import sys, lmql_lite\nfrom lmql_lite.models.fake import FakeModel\n"
            "r = lmql_lite.run('sample(n=2, seed=1)\\n\"Pick [A]\" where A in [\"ab\", \"cd\"]\\n', model=FakeModel())\n"
            "assert all(x.variables['A'] in ('ab', 'cd') for x in r)\n"
            "print('torch' in sys.modules)")
    assert run_python(code) == "False"


def test_check_imports_neither_torch_nor_numpy(tmp_path):
    """No torch ever; numpy only to compile a hole's constraint (contradictions, regexes: the automata run uses)."""
    plain, constrained = tmp_path / "plain.lmq", tmp_path / "constrained.lmq"
    plain.write_text('sample(n=2)\nx = 3\n"Q: {x} [X]"\n')
    constrained.write_text('sample(n=2)\n"Q: [X]" where len(TOKENS(X)) < 3 and X in ["a", "b"]\n')
    for query, numpy in ((plain, False), (constrained, True)):
        code = (f"import sys\nfrom lmql_lite import cli\nassert cli.main(['check', {str(query)!r}]) == 0\n"
                "print('torch' in sys.modules, 'numpy' in sys.modules)")
        assert run_python(code).splitlines()[-1] == f"False {numpy}"
