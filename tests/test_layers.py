"""The layout's rules: the layer contracts of pyproject.toml, no import circles, and a dashboard
that never loads torch.

The contracts are also checked by `lint-imports` in `make lint`; here they run in the suite so a
broken layer fails the tests too. Each check was broken once on purpose to see it fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The torch-free modules the pages import (and everything they import at module level).
DASHBOARD_MODULES = [
    "core.views.workspaces",
    "core.views.jobs",
    "core.views.stages",
    "core.views.datasets",
    "core.views.affinity",
    "core.views.groups",
    "core.views.training",
    "core.report.export",
    "core.report.frames",
    "core.validate.trust",
    "core.data.upload",
    "core.estimate.whatif",
    "core.grouping.partition",
    "core.pipeline",
    "core.jobs",
]


def test_layer_contracts_hold():
    # in a child: import-linter configures logging, which would silence this process's loggers
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def _circles(graph) -> list[tuple[str, ...]]:
    found = {}
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                back = graph.find_shortest_chain(importer=imported, imported=module)
                found.setdefault(frozenset(back), (module, *back))
    return sorted(found.values())


def test_the_engine_has_no_import_circles(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    circles = _circles(grimp.build_graph("core", cache_dir=None))
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("module", DASHBOARD_MODULES)
def test_dashboard_modules_import_without_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"


MAX_LINES = 400  # a module past this is doing more than one job: split it by what it does


def test_no_engine_or_page_module_is_over_400_lines():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for folder in ("core", "pages")
        for p in sorted((ROOT / folder).rglob("*.py"))
    }
    assert len(sizes) > 50  # the walk found the engine
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
