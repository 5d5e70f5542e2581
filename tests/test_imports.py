"""The import rules of ../shared/DESIGN.md, enforced on the source (AST, top-level imports)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "warmload"

# Layer of each top-level module or subpackage, refining DESIGN.md's rows into a strict order:
# a module imports only from layers above it (smaller numbers), so siblings never import each
# other. (config needs errors; tokenizer opens GGUF files through formats.)
LAYERS = {
    "errors": 0,
    "config": 1,
    "oscalls": 1,  # the guarded POSIX-only calls (stdlib only)
    "locks": 1.2,  # inter-process file locks (stdlib)
    "caches": 1.5,  # checked, locked, atomic cache entries: catalog, threads, tokenizer, pull
    "catalog": 2,
    "memstats": 2,
    "stopping": 2,
    "threads": 2,
    "verification": 2,  # SHA-256 checks and their records (pull, verify)
    "formats": 3,
    "kernels": 3.5,  # C kernels (torch tensors, or buffers for the quantizer): needs formats
    "tokenizer": 4,
    "chat": 4,
    "quant": 4,
    "models": 4,
    "loader": 5,
    "hf_vocab": 5,
    "hf_convert": 6,
    "sampling": 6,
    "sequence": 6.5,  # one sequence's generation (engine and batch share it)
    "prompt_cache": 6.5,  # sequence memory (KV state) of prompt prefixes on disk
    "engine": 7,
    "batch": 8,
    "server": 9,
    "cli": 9,
    "quantizer": 9,
    "pull": 9,
    "bench": 9,
}
TORCH_FREE = {
    "errors", "config", "oscalls", "locks", "verification", "catalog", "memstats", "stopping",
    "threads", "caches", "formats", "kernels", "tokenizer", "chat", "hf_vocab", "hf_convert",
}  # fmt: skip


def module_imports(path: Path) -> list[str]:
    """Top-level (not function-local) imported module names of a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_every_module_has_a_layer():
    owners = {owner(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert sorted(owners - set(LAYERS)) == []


def test_imports_point_up_the_layers():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = owner(path)
        if me in ("__init__", "__main__"):
            continue
        for name in module_imports(path):
            if me in TORCH_FREE and name.split(".")[0] == "torch":
                problems.append(f"{path.relative_to(PACKAGE)} imports torch at module level")
            if not name.startswith("warmload.") or name == "warmload":
                continue
            target = name.split(".")[1]
            if target == me:
                continue
            if LAYERS[target] >= LAYERS[me]:
                problems.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert problems == []


def test_import_warmload_cli_and_quantizer_do_not_import_torch():
    """A command-line start, and quantizing (1.8 s of torch import saved per run)."""
    code = (
        "import sys, warmload, warmload.cli, warmload.formats.open, warmload.tokenizer,"
        " warmload.kernels, warmload.quant.quantize;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
