"""The house rules of shared/DESIGN.md, checked on the source: imports run one way
(convert <- data <- training <- tools), no import circle, pipelines/ never imports torch and convert/
never imports DALI, only training/ and tools/ parse arguments, and no module grows past ~500 lines
without a reason written down here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "i2e_dali"

# Lower numbers are lower layers; a module may import its own layer and the layers below it.
LAYERS = {
    "i2e_dali.errors": 0, "i2e_dali.fsio": 0, "i2e_dali.placement": 0,
    "i2e_dali.convert": 1,
    "i2e_dali.data": 2,
    "i2e_dali.models": 3, "i2e_dali.zoo": 3, "i2e_dali.energy": 3,
    "i2e_dali.training": 4,
    "i2e_dali.tools": 5,
    # the package's front door re-exports from above
    "i2e_dali": 6,
}
# Modules allowed past the size limit, with the reason.
LONG_MODULES = {
    "i2e_dali.data.dvs": "AEDAT parsing, framing, the cache and the data set: one format, kept together",
}
MAX_LINES = 550


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module imported anywhere in the file (function-level imports included), absolute."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((mod, node.lineno))
            # `from pkg import submodule` imports the submodule
            found += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return found


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


MODULES = _modules()


def test_every_module_has_a_layer():
    assert [m for m in MODULES if _layer(m) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_one_way(name):
    mine = _layer(name)
    bad = []
    for mod, line in _imports(name, MODULES[name]):
        if not mod.startswith("i2e_dali") or name.startswith(mod + "."):
            continue  # (a parent package is imported whatever a module does)
        other = _layer(mod)
        if other is not None and other > mine:
            bad.append(f"line {line}: imports {mod} (layer {other}) from layer {mine}")
    assert bad == [], f"{name} imports upward:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {name: {m for m, _ in _imports(name, path) if m in MODULES and m != name}
             for name, path in MODULES.items()}
    # a package's __init__ importing its own submodules is not a cycle of the code's design
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m.startswith(name + "."))}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_pipelines_never_import_torch_and_convert_never_imports_dali():
    for path in (ROOT / "pipelines").rglob("*.py"):
        mods = [m for m, _ in _imports("pipelines." + path.stem, path)]
        assert not [m for m in mods if m.split(".")[0] in ("torch", "i2e_dali")], path
    for name, path in MODULES.items():
        if name.startswith("i2e_dali.convert"):
            assert not [m for m, _ in _imports(name, path) if m.startswith("nvidia")], name


def test_only_training_and_tools_parse_arguments():
    parsers = [name for name, path in MODULES.items()
               if any(m == "argparse" for m, _ in _imports(name, path))
               and not name.startswith(("i2e_dali.training", "i2e_dali.tools"))]
    assert parsers == []


def test_modules_stay_readable_in_size():
    long = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()
            if len(path.read_text().splitlines()) > MAX_LINES and name not in LONG_MODULES}
    assert long == {}, f"split these modules or give the reason in LONG_MODULES: {long}"


def test_user_facing_errors_share_one_base():
    from i2e_dali import errors

    classes = [getattr(errors, n) for n in errors.__all__]
    assert all(issubclass(c, errors.I2EError) for c in classes)


def test_front_door_is_light_and_old_paths_are_gone():
    """``import i2e_dali`` loads neither DALI nor the drop-ins' libraries; the front-door names resolve on
    first use; the flat layout's module paths (removed with the old-path finder) no longer import."""
    import subprocess
    import sys

    code = ("import sys, i2e_dali; heavy = [m for m in ('nvidia.dali', 'torchvision', 'spikingjelly', 'tonic', "
            "'lightning') if m in sys.modules]; assert not heavy, heavy; "
            "from i2e_dali import make_loader, Batch, Conversion, DaliOptions, I2ETransform, I2EEncoder, ToTonicEvents; "
            "import importlib.util as u; "
            "gone = [m for m in ('i2e_dali.datasets', 'i2e_dali.loader', 'i2e_dali.npz', 'i2e_dali.bench') "
            "if u.find_spec(m) is not None]; assert not gone, gone")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
