"""The package arrows of the design hold: encoders/, data/ and eval/ are leaves.

The three leaves sit beside multimodal/ in the repository and are imported as
``multimodal.encoders``, ``multimodal.data`` and ``multimodal.eval``.

Imports are read from the source (ast), so a violation is caught even on a code
path the other tests do not execute.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = ("encoders", "data", "eval")
PACKAGES = (*LEAVES, "multimodal")
# Which of the project's packages each one may import.
ALLOWED = {
    "encoders": set(),
    "data": set(),
    "eval": set(),
    "multimodal": {"encoders", "data", "eval"},
}
# Only the training script and the distributed parts of multimodal/ may import accelerate.
ACCELERATE_ALLOWED = {"multimodal/training/trainer.py", "multimodal/apps/embedding.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def package_of(module: str) -> str | None:
    """The folder of this project that ``module`` lives in, or None for other libraries."""
    parts = module.split(".")
    if parts[0] != "multimodal":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LEAVES else "multimodal"


def source_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_design_allows(package):
    offences = []
    for path in source_files(package):
        for module in imported_modules(path):
            owner = package_of(module)
            if owner is not None and owner != package and owner not in ALLOWED[package]:
                offences.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offences, "\n".join(offences)


def test_no_module_imports_a_leaf_by_its_bare_name():
    """``import data`` would pick up a user's own data.py from the working directory."""
    files = [path for package in PACKAGES for path in source_files(package)]
    files += [ROOT / "train.py", *sorted((ROOT / "bench").glob("*.py")), *sorted((ROOT / "tests").rglob("*.py"))]
    offences = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module in imported_modules(path)
        if module.split(".")[0] in (*LEAVES, "train")
    ]
    assert not offences, "\n".join(offences)


def test_accelerate_stays_out_of_the_libraries():
    offences = []
    for package in PACKAGES:
        for path in source_files(package):
            relative = str(path.relative_to(ROOT))
            if relative in ACCELERATE_ALLOWED:
                continue
            if any(m.split(".")[0] == "accelerate" for m in imported_modules(path)):
                offences.append(relative)
    assert not offences, f"accelerate imported by {offences}"


def test_encoders_know_nothing_of_devices_or_files():
    forbidden = (".cuda(", "open(", "print(")
    offences = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in source_files("encoders")
        for needle in forbidden
        if needle in path.read_text()
    ]
    assert not offences, offences


# Inside the packages: the model core, the converters and the applications never reach into the
# trainer or the command line, the trainer never into the command line; in data/, only the
# demo's own folder imports the demo. (``multimodal/__init__.py`` loads the API lazily and
# ``__main__.py`` runs the command line: both are entry points, not the core.)
SUBPACKAGE_FORBIDDEN = {
    "multimodal/apps/": ("multimodal.training", "multimodal.cli"),
    "multimodal/interop/": ("multimodal.training", "multimodal.apps", "multimodal.cli"),
    "multimodal/training/": ("multimodal.cli",),
    "multimodal/": ("multimodal.training", "multimodal.apps", "multimodal.cli"),  # the model core: its top only
    "data/": ("multimodal.data.demo",),
}
ENTRY_POINTS = {"multimodal/__init__.py", "multimodal/__main__.py"}


def _imported_names(path: Path) -> set[str]:
    """Modules imported, with ``from package import module`` read as ``package.module``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _rule_for(relative: str):
    if relative in ENTRY_POINTS or relative.startswith("data/demo/"):
        return None
    for prefix in ("multimodal/apps/", "multimodal/interop/", "multimodal/training/", "data/"):
        if relative.startswith(prefix):
            return SUBPACKAGE_FORBIDDEN[prefix]
    if relative.startswith("multimodal/") and relative.count("/") == 1:
        return SUBPACKAGE_FORBIDDEN["multimodal/"]
    return None


def test_sub_packages_import_only_downwards():
    offences = []
    for package in ("multimodal", "data"):
        for path in source_files(package):
            relative = str(path.relative_to(ROOT))
            forbidden = _rule_for(relative)
            if forbidden is None:
                continue
            offences += [f"{relative} imports {name}" for name in sorted(_imported_names(path))
                         if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert not offences, "\n".join(offences)
