import subprocess
import sys

from conftest import REPO


def test_library_never_imports_ray():
    code = ("import sys, pkgutil, importlib, mvboost\n"
            "for m in pkgutil.walk_packages(mvboost.__path__, 'mvboost.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    src = [p for p in (REPO / "mvboost").rglob("*.py") if "import ray" in p.read_text()
           or "from ray" in p.read_text()]
    assert src == []


# ---- layering: arrows point down ---------------------------------------------------------------------
#: the package's layers, bottom first: a module may import its own layer and the layers below it
LAYERS = [
    {"mvboost", "config", "gaussians", "geometry"},  # plain data and the config loader
    {"render", "metrics"},                           # functional blocks on Gaussians and images
    {"models"},                                      # architectures, the checkpoint format, the resolver
    {"io"},                                          # codecs, the sample format, the output store, exports
    {"assets"},                                      # GSO-layout objects and the CPU mesh renderer
    {"prompts"},                                     # prompt banks
    {"stages"},                                      # the stage contract and the stages
    {"train"},                                       # the training loop
    {"infer"},                                       # image -> 3D
    {"eval"},                                        # the GSO evaluation
    {"pipeline"},                                    # the generation job's driver (plan, units, state)
]


def _module_graph() -> dict[str, set[str]]:
    """mvboost module -> the mvboost modules it imports (at any depth of the file, lazy imports included)."""
    import ast

    root = REPO / "mvboost"
    mods = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(REPO).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, p in mods.items():
        package = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    out.add(full if full in mods else target)
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
        graph[name] = {m for m in out if m in mods and m != name}
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "mvboost"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: its package {top!r} has no layer in LAYERS (add it)")


def test_imports_point_down_the_layers():
    graph = _module_graph()
    assert "mvboost.pipeline.units" in graph and "mvboost.stages.base" in graph  # the walk sees the package
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if _layer(b) > _layer(a))
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_the_module_graph_has_no_circle():
    graph = _module_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import circles:\n" + "\n".join(cycles)


def test_the_layer_checks_can_fail():
    """The graph walk sees relative, absolute and lazy imports (so the two checks above can fail)."""
    graph = _module_graph()
    assert "mvboost.models.checkpoint" in graph["mvboost.models.loading"]  # from .checkpoint import …
    assert "mvboost.models.hub" in graph["mvboost.models.loading"]  # a lazy import inside a function
    assert "mvboost.stages.base" in graph["mvboost.pipeline.units"]  # from ..stages.base import …
    assert _layer("mvboost.pipeline.units") > _layer("mvboost.stages.base") > _layer("mvboost.io.sample")


def test_install_hints_name_extras_that_exist():
    """``require`` tells users ``pip install 'mvboost[<extra>]'``: every extra it names is in pyproject."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from mvboost.stages.common import EXTRAS

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras), set(EXTRAS.values()) - set(extras)
    for module, extra in EXTRAS.items():  # and the extra does provide the module's distribution
        dist = {"skimage": "scikit-image", "pybullet": "pybullet"}.get(module, module)
        assert any(req.lower().startswith(dist) or req.startswith("ray[") and module == "ray"
                   for req in extras[extra]), (module, extra)
