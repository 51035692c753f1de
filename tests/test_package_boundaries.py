"""The components install and work independently, so their import graphs must stay separate:
t3-vllm and s3gen never import each other or the meta package, and s3gen never imports vLLM."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "chatterbox_t3": ROOT / "packages/t3-vllm",
    "chatterbox_s3gen": ROOT / "packages/s3gen",
    "chatterbox_vllm": ROOT / "packages/chatterbox-meta",
}
FORBIDDEN = {
    "chatterbox_t3": {"chatterbox_s3gen", "chatterbox_vllm", "chatterbox"},
    "chatterbox_s3gen": {"chatterbox_t3", "chatterbox_vllm", "vllm", "chatterbox"},
    "chatterbox_vllm": {"chatterbox"},  # the reference implementation is for tests/parity only
}


def _imported_top_level_modules(source_dir: Path) -> dict[str, set[Path]]:
    found: dict[str, set[Path]] = {}
    for path in source_dir.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path)
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_component_does_not_import_forbidden_packages(package: str) -> None:
    imports = _imported_top_level_modules(PACKAGES[package] / "src" / package)
    violations = {
        name: sorted(map(str, imports[name])) for name in FORBIDDEN[package] & set(imports)
    }
    assert not violations, f"{package} imports {violations}"


# Import name -> distribution name, where they differ.
DISTRIBUTION_OF = {
    "chatterbox_t3": "chatterbox-t3-vllm",
    "chatterbox_s3gen": "chatterbox-s3gen",
    "chatterbox_vllm": "chatterbox-vllm",
    "perth": "resemble-perth",
    "yaml": "pyyaml",
    "huggingface_hub": "huggingface-hub",
}


def _requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0].split("[")[0]
    for separator in "=<>!~ ":
        name = name.split(separator)[0]
    return name.strip().lower().replace("_", "-")


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_component_is_typed_and_declares_what_it_imports(package: str) -> None:
    root = PACKAGES[package]
    assert (root / "src" / package / "py.typed").is_file()
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    declared = {_requirement_name(r) for r in requirements}
    stdlib = set(sys.stdlib_module_names)
    imports = set(_imported_top_level_modules(root / "src" / package)) - stdlib - {package}
    undeclared = sorted(
        module
        for module in imports
        if DISTRIBUTION_OF.get(module, module).lower().replace("_", "-") not in declared
    )
    assert not undeclared, f"{package} imports {undeclared} without declaring them in pyproject"
