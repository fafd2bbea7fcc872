"""What each stage is keyed on, without Prefect, MLflow or torch: one function per stage.

A plan names the stage's entry points (the ``module:function`` its task module imports and
calls, whose import closure is its code identity: :func:`tasks.core.code_identity`), its
task wrapper module, the spec its core function receives (hashed as its settings) and the
references of its inputs. The Prefect tasks build their :class:`~tasks.stage.StageSpec` from
these plans, and :func:`walk` yields each step's plans in order, which :mod:`flows.cached`
follows to decide, before importing anything heavy, that a run has nothing to compute.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from metapt_core.config import (
    InitMethod,
    MetaAlgorithm,
    PipelineConfig,
    SourceConfig,
    SourceFormat,
    to_dict,
)
from metapt_core.specs import (
    ClusterSpec,
    EmbedSpec,
    EvalSpec,
    MetaSpec,
    PoolSpec,
    PPTSpec,
    ReportSpec,
    TasksSpec,
)
from metapt_core.store import ArtifactRef

# Bump to invalidate every stored stage output at once (e.g. after a change of record format).
STORE_EPOCH = "1"

BACKBONE_LOADER = "metapt_core.lm:load_prompt_model"  # entry of every stage given the model
POOL_CORE = "metapt_core.data:ingest_pool"
TASKS_CORE = "metapt_core.data:ingest_tasks"
EMBED_CORE = "metapt_core.embedding:embed_pool"
CLUSTER_CORE = "metapt_core.clustering:cluster_pool"
PPT_CORE = "metapt_core.ppt:ppt_pretrain"
META_CORE = "metapt_core.meta.trainer:meta_pretrain"
OBJECTIVE_CORE = "metapt_core.pretraining.objective:meta_objective_check"
OBJECTIVE_PREFIX = "objective:"
CELLS_CORE = "metapt_core.fewshot.stage:evaluate_group"
REPORT_CORE = "metapt_core.report:build_report"
PROMPT_PREFIX = "prompt:"
GROUP_PREFIX = "group:"  # a report's upstream: its groups by position
GROUP_STAGE = "evaluate-cells"  # the evaluation groups' stage: one wave, run side by side


@dataclass(frozen=True)
class Outputs:
    """The references a run's steps have made so far: what the flows hand each other.

    Each field is filled by the step of :data:`PIPELINE` whose ``makes`` names it and read by
    those whose ``needs`` do; ``prompts`` maps (pre-trained init, pre-training seed) to its
    prompt folder, ``objectives`` a pre-training seed to its meta-objective check.
    """

    assets: ArtifactRef | None = None
    pool: ArtifactRef | None = None
    tasks: ArtifactRef | None = None
    embed: ArtifactRef | None = None
    shards: ArtifactRef | None = None
    prompts: Mapping[tuple[InitMethod, int], ArtifactRef] = field(default_factory=dict)
    objectives: Mapping[int, ArtifactRef] = field(default_factory=dict)
    report: ArtifactRef | None = None

    def need(self, name: str) -> ArtifactRef:
        """The reference ``name``, which an earlier step must have made.

        Raises:
            LookupError: no step has made it.
        """
        value = getattr(self, name)
        if not isinstance(value, ArtifactRef):
            raise LookupError(f"no step before this one made {name!r}")
        return value

    def prompt_refs(self) -> dict[str, ArtifactRef]:
        """Every pre-trained prompt by its key ``prompt:<init>@<seed>`` (:func:`prompt_key`)."""
        return {prompt_key(init, seed): ref for (init, seed), ref in self.prompts.items()}

    def to_dict(self) -> dict[str, dict[str, str]]:
        """Plain data: ``{"pool": {"path", "sha256"}, ..., "prompt:<init>@<seed>": ...,
        "objective:<seed>": ...}``, what an entry flow returns (and a deployment run stores)."""
        out = {
            name: ref.to_dict()
            for name in ("assets", "pool", "tasks", "embed", "shards", "report")
            if (ref := getattr(self, name)) is not None
        }
        out.update({key: ref.to_dict() for key, ref in self.prompt_refs().items()})
        out.update({objective_key(s): ref.to_dict() for s, ref in sorted(self.objectives.items())})
        return out


@dataclass(frozen=True)
class Step:
    """One step of the pipeline: a subflow, an entry flow with its deployment, and a
    ``--refresh`` name.

    ``stages`` are the stored computations it makes, in order (what ``--refresh <name>``
    forces); ``needs`` the fields of :class:`Outputs` it reads, ``makes`` those it fills;
    ``parts`` finer ``--refresh`` names inside the step.
    """

    name: str
    stages: tuple[str, ...]
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    parts: tuple[tuple[str, tuple[str, ...]], ...] = ()


# The pipeline, in order: the one place a step's name, order and stages are written. The
# flows, the deployments and the --refresh names are derived from it.
PIPELINE: tuple[Step, ...] = (
    Step("ingest", ("ingest-pool", "ingest-tasks"), makes=("assets", "pool", "tasks")),
    Step("embed", ("embed",), needs=("assets", "pool"), makes=("embed",)),
    Step("cluster", ("cluster",), needs=("pool", "embed"), makes=("shards",)),
    Step(
        "meta-pretrain",
        ("meta-pretrain", "ppt", "meta-objective"),
        needs=("assets", "shards"),
        makes=("prompts", "objectives"),
        parts=(
            ("meta", ("meta-pretrain", "meta-objective")),
            ("ppt", ("ppt", "meta-objective")),
            ("meta-objective", ("meta-objective",)),
        ),
    ),
    Step(
        "evaluate",
        (GROUP_STAGE, "report"),
        needs=("assets", "tasks", "prompts", "objectives", "pool", "shards"),
        makes=("report",),
        parts=(("report", ("report",)),),
    ),
)


def step(name: str) -> Step:
    """The step called ``name`` (KeyError when none is)."""
    for candidate in PIPELINE:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def refresh_groups() -> dict[str, tuple[str, ...]]:
    """``--refresh`` names -> the stored stages they force: each step, its parts, and ``all``."""
    groups: dict[str, tuple[str, ...]] = {}
    for each in PIPELINE:
        groups[each.name] = each.stages
        groups.update(each.parts)
    groups["all"] = tuple(stage for each in PIPELINE for stage in each.stages)
    return groups


# Sources read from the user's files: their content is part of the ingestion's key.
FILE_FORMATS = (SourceFormat.CSV, SourceFormat.JSON, SourceFormat.PARQUET, SourceFormat.DISK)


@dataclass(frozen=True)
class StagePlan:
    """One stage computation's identity: entry points, wrapper, spec, input references."""

    stage: str
    entries: tuple[str, ...]
    wrapper: str
    spec: Any  # the object the core function receives (None: the settings say it all)
    upstream: dict[str, ArtifactRef]
    extra: dict[str, Any] = field(default_factory=dict)  # further core arguments (shots, seed)

    @property
    def settings(self) -> dict[str, Any]:
        """The spec as plain data, with the extra core arguments: what the key hashes."""
        data = to_dict(self.spec) if self.spec is not None else {}
        return {**data, **self.extra}


def assets_ref(cfg: PipelineConfig) -> ArtifactRef:
    """A fingerprint of the prepared assets: their manifests (which hold their content hashes)."""
    from metapt_core.store import stable_hash

    root = cfg.assets_path
    manifests = (
        {p.parent.name: p.read_text("utf-8") for p in sorted(root.glob("*/manifest.json"))}
        if root.is_dir()
        else {}
    )
    return ArtifactRef(path=str(root), sha256=stable_hash(manifests))


def source_refs(sources: Iterable[SourceConfig | None]) -> dict[str, ArtifactRef]:
    """Content fingerprints of the user's data files (builtin sources are in the assets' ref),
    and the resolved commit of each hub source.

    Editing a file in place then recomputes its ingestion and whatever follows from it; so does
    a hub dataset that moved on (``revision`` pins one).
    """
    from metapt_core.data.sources import hub_revision

    refs: dict[str, ArtifactRef] = {}
    for src in sources:
        if src is not None and SourceFormat(src.format) is SourceFormat.HUB:
            refs[f"hub:{src.name}:{src.path}"] = ArtifactRef(
                path=src.path, sha256=hub_revision(src)
            )
            continue
        if src is None or SourceFormat(src.format) not in FILE_FORMATS:
            continue
        path = Path(src.path).expanduser()
        if path.exists():  # a missing file fails in the core with its own message
            refs[f"source:{src.name}:{src.path}"] = ArtifactRef.of(path)
    return refs


def task_sources(cfg: PipelineConfig) -> list[SourceConfig | None]:
    return [source for task in cfg.tasks for source in (task.train, task.test)]


def ingest_pool_plan(cfg: PipelineConfig, assets: ArtifactRef) -> StagePlan:
    upstream = {"assets": assets, **source_refs(cfg.pool.sources)}
    return StagePlan("ingest-pool", (POOL_CORE,), "tasks.ingest", PoolSpec.of(cfg), upstream)


def ingest_tasks_plan(cfg: PipelineConfig, assets: ArtifactRef, pool: ArtifactRef) -> StagePlan:
    upstream = {"assets": assets, "pool": pool, **source_refs(task_sources(cfg))}
    return StagePlan("ingest-tasks", (TASKS_CORE,), "tasks.ingest", TasksSpec.of(cfg), upstream)


def embed_plan(cfg: PipelineConfig, assets: ArtifactRef, pool: ArtifactRef) -> StagePlan:
    upstream = {"assets": assets, "pool": pool}
    return StagePlan("embed", (EMBED_CORE,), "tasks.embed", EmbedSpec.of(cfg), upstream)


def cluster_plan(cfg: PipelineConfig, pool: ArtifactRef, embedded: ArtifactRef) -> StagePlan:
    upstream = {"pool": pool, "embed": embedded}
    return StagePlan("cluster", (CLUSTER_CORE,), "tasks.cluster", ClusterSpec.of(cfg), upstream)


def ppt_plan(
    cfg: PipelineConfig, assets: ArtifactRef, shards: ArtifactRef, balanced: bool = False
) -> StagePlan:
    upstream = {"assets": assets, "shards": shards}
    entries = (PPT_CORE, BACKBONE_LOADER)
    extra = {"balanced": balanced}
    return StagePlan("ppt", entries, "tasks.pretrain", PPTSpec.of(cfg), upstream, extra)


def meta_pretrain_plan(
    cfg: PipelineConfig, algorithm: MetaAlgorithm, assets: ArtifactRef, shards: ArtifactRef
) -> StagePlan:
    upstream = {"assets": assets, "shards": shards}
    entries = (META_CORE, BACKBONE_LOADER)
    extra = {"algorithm": algorithm.value}
    return StagePlan("meta-pretrain", entries, "tasks.pretrain", MetaSpec.of(cfg), upstream, extra)


def pretrain_plan(
    cfg: PipelineConfig, init: InitMethod, seed: int, assets: ArtifactRef, shards: ArtifactRef
) -> StagePlan:
    """The stage that makes pre-trained initialisation ``init`` of pre-training seed ``seed``:
    PPT, class-balanced PPT or a MetaPT variant, reading ``cfg`` with ``meta.seed = seed``."""
    seeded = cfg.with_pretrain_seed(seed)
    algorithm = init.meta_algorithm
    if algorithm is None:
        return ppt_plan(seeded, assets, shards, balanced=init is InitMethod.PPT_BALANCED)
    return meta_pretrain_plan(seeded, algorithm, assets, shards)


def meta_objective_plan(
    cfg: PipelineConfig,
    seed: int,
    assets: ArtifactRef,
    shards: ArtifactRef,
    prompts: Mapping[str, ArtifactRef],
) -> StagePlan:
    """The meta-objective check of pre-training seed ``seed``: its pre-trained prompts (init name
    -> prompt folder) and the initial prompt on held-out-cluster episodes."""
    seeded = cfg.with_pretrain_seed(seed)
    upstream = {"assets": assets, "shards": shards}
    upstream.update({f"{PROMPT_PREFIX}{name}": ref for name, ref in sorted(prompts.items())})
    entries = (OBJECTIVE_CORE, BACKBONE_LOADER)
    extra = {"pretrain_seed": seed, "level": cfg.grid.ci_level}
    spec = MetaSpec.of(seeded)
    return StagePlan("meta-objective", entries, "tasks.objective", spec, upstream, extra)


def seed_prompts(
    cfg: PipelineConfig, prompts: Mapping[tuple[InitMethod, int], ArtifactRef], seed: int
) -> dict[str, ArtifactRef]:
    """Each pre-trained init of the grid -> its prompt of pre-training seed ``seed``
    (``prompts``: :attr:`Outputs.prompts`)."""
    return {init.value: prompts[init, seed] for init in cfg.grid.inits if init.is_pretrained}


def pretrain_label(init: InitMethod, seed: int) -> str:
    """The label (and MLflow run name) of a pre-training stage: ``ppt-p0``, ``ppt_balanced-p0``,
    ``meta-pretrain-maml-p0``."""
    algorithm = init.meta_algorithm
    name = init.value if algorithm is None else f"meta-pretrain-{algorithm.value}"
    return f"{name}-p{seed}"


def objective_label(seed: int) -> str:
    """The label (and MLflow run name) of a pre-training seed's check: ``meta-objective-p0``."""
    return f"meta-objective-p{seed}"


def prompt_inputs(stage: StagePlan) -> dict[str, ArtifactRef]:
    """The pre-trained prompts a stage reads (init name -> prompt folder), from its upstream."""
    return {
        name.removeprefix(PROMPT_PREFIX): ref
        for name, ref in stage.upstream.items()
        if name.startswith(PROMPT_PREFIX)
    }


def objective_key(seed: int) -> str:
    """The refs key of a pre-training seed's meta-objective check: ``objective:<seed>``."""
    return f"{OBJECTIVE_PREFIX}{seed}"


def pretrain_runs(cfg: PipelineConfig) -> list[tuple[InitMethod, int]]:
    """Every (pre-trained init, pre-training seed) of the grid, seed-major."""
    return [
        (init, seed) for seed in cfg.pretrain_seeds for init in cfg.grid.inits if init.is_pretrained
    ]


def prompt_key(init: InitMethod | str, seed: int) -> str:
    """The refs key of a pre-trained prompt: ``prompt:<init>@<seed>``."""
    name = init.value if isinstance(init, InitMethod) else init
    return f"{PROMPT_PREFIX}{name}@{seed}"


def eval_group_plan(
    cfg: PipelineConfig,
    task: str,
    shots: int,
    seed: int,
    pretrain_seed: int,
    assets: ArtifactRef,
    tasks_ref: ArtifactRef,
    prompts: Mapping[str, ArtifactRef | None],
) -> StagePlan:
    """One group; ``prompts`` maps each init of the grid to its prompt of ``pretrain_seed``."""
    upstream: dict[str, ArtifactRef] = {"assets": assets, "tasks": tasks_ref}
    upstream.update({f"{PROMPT_PREFIX}{n}": ref for n, ref in prompts.items() if ref is not None})
    spec = EvalSpec.of(cfg, task, shots, seed, pretrain_seed)
    entries = (CELLS_CORE, BACKBONE_LOADER)
    extra = {"shots": shots, "cell_seed": seed}
    return StagePlan(GROUP_STAGE, entries, "tasks.evaluate", spec, upstream, extra)


def groups(cfg: PipelineConfig) -> list[tuple[str, int, int, int]]:
    """The grid's (task, shots, seed, pretrain_seed) groups, in the order the report gets them."""
    return [
        (task.name, shots, seed, pseed)
        for task in cfg.tasks
        for shots in cfg.fewshot.shots
        for seed in cfg.fewshot.seeds
        for pseed in cfg.pretrain_seeds
    ]


def group_label(task: str, shots: int, seed: int, pretrain_seed: int) -> str:
    """``evaluate-<task>-k<shots>-s<seed>-p<pretrain_seed>``: a group's run and label."""
    return f"evaluate-{task}-k{shots}-s{seed}-p{pretrain_seed}"


def group_prompts(
    cfg: PipelineConfig, prompts: Mapping[tuple[InitMethod, int], ArtifactRef], pretrain_seed: int
) -> dict[str, ArtifactRef | None]:
    """Each init of the grid -> its prompt of ``pretrain_seed`` (None for untrained inits)."""
    return {
        init.value: (prompts[init, pretrain_seed] if init.is_pretrained else None)
        for init in cfg.grid.inits
    }


def report_plan(
    cfg: PipelineConfig,
    group_refs: list[ArtifactRef],
    failed: list[str],
    objectives: Mapping[int, ArtifactRef] | None = None,
) -> StagePlan:
    """The report over the groups that completed (``failed``: the labels of those that did
    not) and each pre-training seed's check."""
    # by position, not by the groups' keys: a group recomputed to the same cells keeps the report
    upstream = {f"{GROUP_PREFIX}{index}": ref for index, ref in enumerate(group_refs)}
    upstream.update({objective_key(s): ref for s, ref in sorted((objectives or {}).items())})
    extra = {"failed": sorted(failed)}
    return StagePlan(
        "report", (REPORT_CORE,), "tasks.evaluate", ReportSpec.of(cfg), upstream, extra
    )


def report_inputs(stage: StagePlan) -> tuple[list[ArtifactRef], dict[int, ArtifactRef]]:
    """(the groups in their order, the checks by pre-training seed) a report plan reads."""
    groups = sorted(
        (int(name.removeprefix(GROUP_PREFIX)), ref)
        for name, ref in stage.upstream.items()
        if name.startswith(GROUP_PREFIX)
    )
    checks = {
        int(name.removeprefix(OBJECTIVE_PREFIX)): ref
        for name, ref in stage.upstream.items()
        if name.startswith(OBJECTIVE_PREFIX)
    }
    return [ref for _, ref in groups], checks


# --------------------------------------------------------------------------------------------
# The walk: each step's stage plans, in order, waves of plans that need only earlier waves

Wave = list[tuple[str, StagePlan]]  # (label, plan) of stages that may run side by side
# Each wave is answered with its references in order; None for an evaluation group that failed
# (the report is made over the others and names it), never for any other stage.
Walk = Generator[Wave, list[ArtifactRef | None], Outputs]


def _ingest_walk(cfg: PipelineConfig, outputs: Outputs) -> Walk:
    assets = outputs.assets or assets_ref(cfg)
    (pool,) = yield [("ingest-pool", ingest_pool_plan(cfg, assets))]
    (tasks,) = yield [("ingest-tasks", ingest_tasks_plan(cfg, assets, _made(pool)))]
    return replace(outputs, assets=assets, pool=_made(pool), tasks=_made(tasks))


def _embed_walk(cfg: PipelineConfig, outputs: Outputs) -> Walk:
    (embedded,) = yield [("embed", embed_plan(cfg, outputs.need("assets"), outputs.need("pool")))]
    return replace(outputs, embed=_made(embedded))


def _cluster_walk(cfg: PipelineConfig, outputs: Outputs) -> Walk:
    stage = cluster_plan(cfg, outputs.need("pool"), outputs.need("embed"))
    (shards,) = yield [("cluster", stage)]
    return replace(outputs, shards=_made(shards))


def _meta_pretrain_walk(cfg: PipelineConfig, outputs: Outputs) -> Walk:
    assets, shards = outputs.need("assets"), outputs.need("shards")
    runs = pretrain_runs(cfg)
    made = yield [
        (pretrain_label(init, seed), pretrain_plan(cfg, init, seed, assets, shards))
        for init, seed in runs
    ]
    prompts = {run: _made(ref) for run, ref in zip(runs, made, strict=True)}
    checked = [
        seed
        for seed in (cfg.pretrain_seeds if cfg.meta.check_episodes > 0 else [])
        if seed_prompts(cfg, prompts, seed)
    ]
    checks = yield [
        (
            objective_label(seed),
            meta_objective_plan(cfg, seed, assets, shards, seed_prompts(cfg, prompts, seed)),
        )
        for seed in checked
    ]
    objectives = {seed: _made(ref) for seed, ref in zip(checked, checks, strict=True)}
    return replace(outputs, prompts=prompts, objectives=objectives)


def _evaluate_walk(cfg: PipelineConfig, outputs: Outputs) -> Walk:
    assets, tasks = outputs.need("assets"), outputs.need("tasks")
    wave = [
        (
            group_label(task, shots, seed, pseed),
            eval_group_plan(
                cfg,
                task,
                shots,
                seed,
                pseed,
                assets,
                tasks,
                group_prompts(cfg, outputs.prompts, pseed),
            ),
        )
        for task, shots, seed, pseed in groups(cfg)
    ]
    made = yield wave
    done = [ref for ref in made if ref is not None]
    failed = [label for (label, _), ref in zip(wave, made, strict=True) if ref is None]
    (report,) = yield [("report", report_plan(cfg, done, failed, outputs.objectives))]
    return replace(outputs, report=_made(report))


def _made(ref: ArtifactRef | None) -> ArtifactRef:
    """A stage's reference: only an evaluation group may come back None (failed)."""
    if ref is None:
        raise LookupError("a stage other than an evaluation group came back without an output")
    return ref


_WALKS: dict[str, Callable[[PipelineConfig, Outputs], Walk]] = {
    "ingest": _ingest_walk,
    "embed": _embed_walk,
    "cluster": _cluster_walk,
    "meta-pretrain": _meta_pretrain_walk,
    "evaluate": _evaluate_walk,
}


def walk(step_name: str, cfg: PipelineConfig, outputs: Outputs) -> Walk:
    """The stage plans of step ``step_name``, wave by wave, given the references made before it.

    Send each wave's references back (in the wave's order); the generator returns ``outputs``
    with the step's ``makes`` filled. :func:`follow` drives it.
    """
    return _WALKS[step_name](cfg, outputs)


def follow_step(
    step_name: str,
    cfg: PipelineConfig,
    outputs: Outputs,
    serve: Callable[[Wave], list[ArtifactRef | None] | None],
) -> Outputs | None:
    """Walk one step, ``serve`` answering each wave with its references (what the step's flow
    and the cached rerun both do); the step's :class:`Outputs`, or None as soon as ``serve``
    answers None (a wave it cannot serve)."""
    steps = walk(step_name, cfg, outputs)
    try:
        wave = next(steps)
        while True:
            refs = serve(wave)
            if refs is None:
                return None
            wave = steps.send(refs)
    except StopIteration as done:
        return done.value


def follow(
    cfg: PipelineConfig, serve: Callable[[Wave], list[ArtifactRef | None] | None]
) -> Outputs | None:
    """Walk every step of :data:`PIPELINE` in order (:func:`follow_step`); None as soon as
    ``serve`` answers None."""
    outputs = Outputs()
    for each in PIPELINE:
        made = follow_step(each.name, cfg, outputs, serve)
        if made is None:
            return None
        outputs = made
    return outputs
