"""Imports run down the layers only (DESIGN.md): cli → methods → models → nn → ops →
kernels / fastnst._C, and no library module below the CLI, info and the benchmarks uses the
package facade (``import fastnst``).
Read from the source with ast, so lazy imports inside functions count too."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Higher numbers may import lower ones (and their own level only where noted).
LAYER = {
    "fastnst.cli": 8, "fastnst.__main__": 8, "fastnst.info": 7, "fastnst.bench": 7,
    "fastnst.methods": 6, "fastnst.data": 5, "fastnst.image": 5, "fastnst.models": 4, "fastnst.nn": 3,
    "fastnst.ops": 2,
    "fastnst.backend": 1, "fastnst.reference": 1, "fastnst._ext": 0, "fastnst._C": 0, "fastnst.kernels": 0,
    "fastnst._version": 0, "fastnst.ops.registry": 1,  # the spec table: a leaf the backend reads
    "fastnst.losses": 5,  # loss terms and the perceptual loss, just below the methods
    "fastnst.compat": 3,  # pytorch/examples' helpers over the ops, beside nn
    "fastnst.metrics": 1,  # PSNR / SSIM: torch only
    "fastnst.engine": 5.5,  # the training loop: over data, losses, image; under the methods
    "fastnst.cli_config": 8,
    "fastnst.runtime": 1,  # process settings (malloc)  # the CLI's options from the methods' configs
}
FACADE_FROM = 7  # cli, info and the benchmarks use the public API like any user
# Within fastnst.ops, siblings share only these modules (an op module never imports another).
OPS_SHARED = {"fastnst.ops._common", "fastnst.ops.registry", "fastnst.ops.autocast"}  # autocast: the rules table


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["fastnst", "kernels"] + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    parts = name.split(".")[1:]
    base = ROOT / ("kernels" if parts[:1] == ["kernels"] else "fastnst")
    rest = parts[1:] if parts[:1] == ["kernels"] else parts
    p = base.joinpath(*rest) if rest else base
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _layer(name: str) -> int | None:
    best = None
    for prefix, level in LAYER.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, level)
    return None if best is None else best[1]


def _imports(path: pathlib.Path, name: str):
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = base + ("." + node.module if node.module else "")
            else:
                mod = node.module or ""
            if mod == "fastnst":  # `from fastnst import ops` imports fastnst.ops
                for a in node.names:
                    yield node.lineno, f"fastnst.{a.name}"
            elif mod.startswith("fastnst.") and all(_is_module(f"{mod}.{a.name}") for a in node.names):
                for a in node.names:  # `from fastnst.ops import registry`: that submodule
                    yield node.lineno, f"{mod}.{a.name}"
            else:
                yield node.lineno, mod


def _sources():
    files = sorted((ROOT / "fastnst").rglob("*.py")) + sorted((ROOT / "kernels").glob("*.py"))
    return [f for f in files if f.name != "__init__.py" or f.parent.name != "fastnst"]


def test_imports_run_down_the_layers():
    bad = []
    for path in _sources():
        name = _module_name(path)
        level = _layer(name)
        assert level is not None, f"{name}: give it a layer in tests/test_layers.py"
        for line, mod in _imports(path, name):
            if not mod.startswith("fastnst"):
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {mod}"
            if mod == "fastnst":
                if level < FACADE_FROM:
                    bad.append(where + " (the package facade: import the layer's module instead)")
                continue
            target = _layer(mod)
            if target is None:
                bad.append(where + " (unknown module)")
            elif target > level:
                bad.append(where + f" (layer {target} above {level})")
            elif (name.startswith("fastnst.ops.") and mod.startswith("fastnst.ops.")
                  and mod not in OPS_SHARED and name not in OPS_SHARED and mod != name):
                bad.append(where + " (an op module imports a sibling op module)")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_violations(tmp_path):
    # The rule fires on what it must refuse.
    assert _layer("fastnst.models.vgg") < _layer("fastnst.image")
    assert _layer("fastnst.ops.norm") < _layer("fastnst.nn") < _layer("fastnst.models")
    src = tmp_path / "m.py"
    src.write_text("from fastnst import image\nimport fastnst\ndef f():\n    from fastnst.cli import main\n")
    found = [m for _, m in _imports(src, "fastnst.models.m")]
    assert found == ["fastnst.image", "fastnst", "fastnst.cli"]
