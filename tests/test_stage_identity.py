"""A stage's code key is the import closure of what it runs, computed from the code.

The project is copied to a temporary folder; each module that a stage's core function reaches
(by the static closure, and by what Python actually imports when the entry module loads) is
edited there, and the stage's code identity must change; a module outside the closure must
leave it alone. A closure that was not followed (a stage that hashed only its entry module, or a
hand-kept list) fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metapt_core.config import MetaAlgorithm, load_config
from metapt_core.store import ArtifactRef
from tasks import core as identity
from tasks import plan

ROOT = Path(__file__).resolve().parent.parent


def _stages() -> dict[str, tuple[list[str], str]]:
    """stage: (entry points, task wrapper module), as the stage plans key them."""
    cfg = load_config("smoke")
    ref = ArtifactRef(path="x", sha256="0" * 64)
    plans = [
        plan.ingest_pool_plan(cfg, ref),
        plan.ingest_tasks_plan(cfg, ref, ref),
        plan.embed_plan(cfg, ref, ref),
        plan.cluster_plan(cfg, ref, ref),
        plan.ppt_plan(cfg, ref, ref),
        plan.meta_pretrain_plan(cfg, MetaAlgorithm.MAML, ref, ref),
        plan.meta_objective_plan(cfg, 0, ref, ref, {"ppt": ref}),
        plan.eval_group_plan(cfg, cfg.tasks[0].name, 2, 0, 0, ref, ref, {}),
        plan.report_plan(cfg, [ref], []),
    ]
    return {p.stage: (list(p.entries), p.wrapper) for p in plans}


STAGES = _stages()
PROBE = "\n\ndef _identity_probe() -> int:  # added by test_stage_identity\n    return 1\n"


@pytest.fixture(scope="module")
def copy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("metapt_core", "tasks"):
        shutil.copytree(ROOT / package, root / package, ignore=ignore)
    return root


def project_modules(root: Path) -> list[str]:
    names = []
    for file in sorted((root / "metapt_core").rglob("*.py")):
        parts = file.relative_to(root).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.fixture(scope="module")
def imported(copy_root: Path) -> dict[str, set[str]]:
    """Project modules Python loads when each entry module is imported (from the copy)."""
    entry_modules = sorted({e.split(":")[0] for entries, _ in STAGES.values() for e in entries})
    code = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(copy_root)!r})\n"
        "importlib.import_module(sys.argv[1])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'metapt_core')))\n"
    )
    loaded: dict[str, set[str]] = {}
    for module in entry_modules:
        out = subprocess.run(
            [sys.executable, "-c", code, module], capture_output=True, text=True, check=True,
            cwd=copy_root,
        )  # fmt: skip
        loaded[module] = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return loaded


def digest(stage: str, root: Path) -> str:
    entries, wrapper = STAGES[stage]
    return identity.code_identity(entries, wrapper, root).digest


def test_copy_has_the_same_identity(copy_root: Path) -> None:
    for stage in STAGES:
        assert digest(stage, copy_root) == digest(stage, ROOT), stage


def closures(stage: str, root: Path, imported: dict[str, set[str]]) -> tuple[set[str], set[str]]:
    """(the static closure of a stage, the project modules Python loads for its entries)."""
    entries, _ = STAGES[stage]
    static, _ = identity.module_closure(entries, root)
    return set(static), set().union(*(imported[e.split(":")[0]] for e in entries))


@pytest.mark.parametrize("stage", list(STAGES))
def test_static_closure_covers_what_python_imports(
    stage: str, copy_root: Path, imported: dict[str, set[str]]
) -> None:
    static, runtime = closures(stage, copy_root, imported)
    assert runtime, stage
    assert runtime <= static, sorted(runtime - static)


@pytest.mark.parametrize("stage", list(STAGES))
def test_editing_a_module_changes_exactly_the_stages_that_reach_it(
    stage: str, copy_root: Path, imported: dict[str, set[str]]
) -> None:
    wrapper = STAGES[stage][1]
    static, runtime = closures(stage, copy_root, imported)
    reached = static | runtime
    before = digest(stage, copy_root)
    outside = [m for m in project_modules(copy_root) if m not in reached]
    assert outside, "every stage leaves some module out"
    for module in sorted(reached) + outside + [wrapper]:
        file = identity.module_file(module, copy_root)
        assert file is not None, module
        original = file.read_bytes()
        try:
            file.write_bytes(original + PROBE.encode())
            after = digest(stage, copy_root)
        finally:
            file.write_bytes(original)
        if module in reached or module == wrapper:
            assert after != before, f"{stage}: editing {module} left the key unchanged"
        else:
            assert after == before, f"{stage}: editing {module} (not imported) changed the key"
    assert digest(stage, copy_root) == before


def test_known_dependencies_are_in_the_closure(copy_root: Path) -> None:
    """The cases a hand-kept list got wrong: PPT runs the meta loop, every model stage loads the
    backbone, clustering reads the pool through the embedding module, derived settings live in
    the config module."""

    def closure(stage: str) -> set[str]:
        return set(identity.module_closure(STAGES[stage][0], copy_root)[0])

    assert {"metapt_core.pretraining.episodes", "metapt_core.pretraining.checkpoint"} <= closure(
        "ppt"
    )
    for stage in ("ppt", "meta-pretrain", "evaluate-cells"):
        assert "metapt_core.backbone" in closure(stage)
    assert "metapt_core.embedding" in closure("cluster")
    assert all("metapt_core.config.pipeline" in closure(stage) for stage in STAGES)
    assert "metapt_core.report.stats" not in closure("embed")


def test_library_versions_are_keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    ppt = identity.code_identity(*STAGES["ppt"])
    report = identity.code_identity(*STAGES["report"])
    assert "torch" in ppt.libraries and "transformers" in ppt.libraries
    assert "scikit-learn" in identity.code_identity(*STAGES["cluster"]).libraries
    assert "torch" not in report.libraries
    real = identity.metadata.version
    monkeypatch.setattr(identity.metadata, "version", lambda d: "99.0" if d == "torch" else real(d))
    assert identity.code_identity(*STAGES["ppt"]).digest != ppt.digest
    assert identity.code_identity(*STAGES["report"]).digest == report.digest


def test_relative_imports_and_absent_libraries(tmp_path: Path) -> None:
    pkg = tmp_path / "metapt_core" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "metapt_core" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from ..b import g\n    import no_such_lib_xyz\n")
    (tmp_path / "metapt_core" / "b.py").write_text("import json\n")
    modules, libraries = identity.module_closure(["metapt_core.sub:f"], tmp_path)
    assert modules == ["metapt_core", "metapt_core.b", "metapt_core.sub", "metapt_core.sub.a"]
    assert libraries == ["no_such_lib_xyz"]  # json is the standard library
    assert identity.library_versions(libraries) == {"import:no_such_lib_xyz": "absent"}


def test_what_runs_is_what_is_keyed() -> None:
    """Each task module calls its core function by name; that function is the plan's entry
    point (same name, defined inside the entry's closure), so the key follows what runs."""
    import importlib

    calls = {
        "tasks.ingest": ["ingest_pool", "ingest_tasks"],
        "tasks.embed": ["embed_pool"],
        "tasks.cluster": ["cluster_pool"],
        "tasks.pretrain": ["ppt_pretrain", "meta_pretrain"],
        "tasks.evaluate": ["evaluate_group", "build_report"],
    }
    entries = {e.split(":")[1]: e for entries, _ in STAGES.values() for e in entries}
    for module_name, names in calls.items():
        module = importlib.import_module(module_name)
        for name in names:
            function = getattr(module, name)
            closure, _ = identity.module_closure([entries[name]])
            assert function.__name__ == name and function.__module__ in closure, name
            wrappers = {
                w for ents, w in STAGES.values() if any(e.endswith(f":{name}") for e in ents)
            }
            assert wrappers == {module_name}, name
