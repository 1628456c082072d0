"""The package's floors, read from the source with ast: ops/ never imports nn/ or models/ (layers are
built on the ops, not the other way round), tensor.py binds its ops once at import, no stage of the
model takes a ``debug`` argument (intermediates go through ``record_intermediates``), and the label
sentinels are defined once."""
import ast
import inspect
from pathlib import Path

import pytest

import minimaskrcnn

PACKAGE = Path(minimaskrcnn.__file__).parent


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, anywhere in the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_checks_see_imports(tmp_path):
    # the reader finds a function-level import and the "from package import module" form
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from minimaskrcnn import nn\n    import minimaskrcnn.models.rpn\n")
    names = _imported_modules(source)
    assert "minimaskrcnn.nn" in names and "minimaskrcnn.models.rpn" in names


@pytest.mark.parametrize("path", _modules("ops"), ids=lambda p: p.name)
def test_ops_import_neither_nn_nor_models(path):
    upward = {n for n in _imported_modules(path) if n.startswith(("minimaskrcnn.nn", "minimaskrcnn.models"))}
    assert not upward, f"ops/{path.name} imports {sorted(upward)}: ops sit below nn and models"


def _imports_inside_functions(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    return [node.lineno for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.Lambda))
            for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("path", [PACKAGE / "tensor.py", PACKAGE / "function.py"] + _modules("ops"),
                         ids=lambda p: p.name)
def test_the_engine_and_ops_bind_their_imports_once(path):
    # an import inside a function runs on every call (Tensor's operators, Function.apply)
    assert _imports_inside_functions(path) == [], f"imports inside {path.name}'s functions"


def test_tensor_binds_the_ops_modules():
    assert {"minimaskrcnn.ops.elementwise", "minimaskrcnn.ops.shape", "minimaskrcnn.ops.reduce"} <= _imported_modules(
        PACKAGE / "tensor.py")


@pytest.mark.parametrize("path", _modules("models"), ids=lambda p: p.name)
def test_no_debug_parameter_in_models(path):
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            found += [f"{node.name}({a.arg}=)" for a in args if a.arg in ("debug", "return_intermediates")]
    assert found == [], f"models/{path.name}: {found}"


def test_forwards_take_no_debug_argument():
    from minimaskrcnn import models

    for cls in (models.MaskRCNN, models.RegionProposalNetwork, models.RoIHeads, models.BackboneWithFPN):
        assert not {"debug", "return_intermediates"} & set(inspect.signature(cls.forward).parameters), cls
    assert not hasattr(models.MaskRCNN.from_config(models.get_config("r18-shapes")), "record_intermediates")


def test_label_sentinels_are_defined_once():
    defined = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and name.id in ("IGNORE", "BACKGROUND"):
                        defined.setdefault(name.id, []).append(str(path.relative_to(PACKAGE)))
    assert defined == {"IGNORE": ["ops/matcher.py"], "BACKGROUND": ["ops/matcher.py"]}
