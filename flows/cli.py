"""The ``metapt`` command.

    metapt run --profile smoke                       # the whole pipeline, cached stage by stage
    metapt run --profile smoke --set cluster.n_clusters=4 --refresh cluster
    metapt run --profile smoke --verify              # check every stored artifact's sha256
    metapt config --profile default                  # print the resolved configuration
    metapt assets                                    # prepare the embedded assets
    metapt report RUN_ID                             # reprint a run's report from MLflow
    metapt cache clear [STAGE]                       # drop stored stage outputs
    metapt cache export --out store.tar.gz [STAGE...]  # stored stages, to carry to another machine
    metapt cache import store.tar.gz                 # ... and into this machine's store
    metapt prompts export RUN_ID --out DIR           # a learned prompt as a peft adapter + card

Configuration errors print ``error: <message>`` and exit with status 2 before any work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows import env
from metapt_core.config import PipelineConfig, dump_yaml
from metapt_core.errors import MetaptError
from tasks.cache import VERIFY_ENV

EXIT_CONFIG = 2


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default="default", help="smoke, default, study, paper or control"
    )
    parser.add_argument("--config", default="", help="a YAML file merged over the profile")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. cluster.n_clusters=4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metapt", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the pipeline")
    _config_args(run)
    run.add_argument(
        "--refresh",
        action="append",
        default=[],
        metavar="STAGE",
        help=(
            "recompute a stage even if stored: ingest, embed, cluster, meta-pretrain, "
            "meta-objective, evaluate, all"
        ),
    )
    run.add_argument(
        "--verify",
        action="store_true",
        help="check the sha256 of every stored artifact, not only its size, time and inode",
    )
    config = commands.add_parser("config", help="print the resolved configuration")
    _config_args(config)
    assets = commands.add_parser("assets", help="prepare the embedded assets")
    _config_args(assets)
    report = commands.add_parser("report", help="reprint a run's report from MLflow")
    report.add_argument("run_id", help="MLflow run id or Prefect flow run id of a pipeline run")
    _config_args(report)
    prompts = commands.add_parser("prompts", help="learned prompts")
    prompt_commands = prompts.add_subparsers(dest="prompts_command", required=True)
    export = prompt_commands.add_parser(
        "export", help="write a learned prompt as a peft adapter folder with a model card"
    )
    export.add_argument("source", help="MLflow run id of a ppt/meta-pretrain stage, or its folder")
    export.add_argument("--out", required=True, help="the adapter folder to create")
    export.add_argument("--report", default="", help="a report folder (its results.csv)")
    _config_args(export)
    cache = commands.add_parser("cache", help="manage the stage cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    clear = cache_commands.add_parser("clear", help="remove stored stage outputs")
    clear.add_argument("stage", nargs="?", default=None)
    _config_args(clear)
    carry = cache_commands.add_parser(
        "export", help="write stored stages (and stopped stages' checkpoints) to a .tar.gz"
    )
    carry.add_argument("stages", nargs="*", metavar="STAGE", help="steps or stages; all if none")
    carry.add_argument("--out", required=True, help="the archive to write")
    _config_args(carry)
    load = cache_commands.add_parser("import", help="check and add an exported archive's stages")
    load.add_argument("archive")
    _config_args(load)
    return parser


def _resolve(args: argparse.Namespace) -> PipelineConfig:
    from flows.context import resolve_config

    return resolve_config(args.profile, args.config, args.overrides)


def _hints() -> str:
    return (
        "MLflow and Prefect UIs: `make serve` (servers on 127.0.0.1 and the deployments), "
        "then `make ui`; `make stop` stops them."
    )


def cmd_run(args: argparse.Namespace) -> int:
    from flows.context import check_run, ensure_work_dir
    from tasks.stage import expand_refresh

    cfg = _resolve(args)
    expand_refresh(args.refresh)  # unknown stage names fail here, before any work
    ensure_work_dir(cfg)
    if args.verify:
        os.environ[VERIFY_ENV] = "1"  # read by every store lookup, in this process and workers
    if not args.refresh and cached_rerun(cfg, args):
        return 0
    check_run(cfg)  # files, columns, labels, model, k and shots, a remote grid: before any work
    print("# resolved configuration\n" + dump_yaml(cfg), flush=True)
    env.use_ephemeral_prefect(cfg.work_path)
    from flows.context import RunRequest
    from flows.metapt import resolved_pipeline_flow
    from tasks.cache import StageOutcome  # noqa: F401  (import before the flow starts)

    request = RunRequest.of(args.profile, args.config, args.overrides, args.refresh)
    refs = resolved_pipeline_flow(request, cfg)
    report = Path(refs["report"]["path"])
    md = next(iter(sorted(report.rglob("report.md"))), None) if report.is_dir() else None
    print("\n# results\n" + (md.read_text("utf-8") if md else f"(report at {report})"))
    print(
        f"MLflow run: {refs['mlflow_run_id']['id']}  (reprint: metapt report {refs['mlflow_run_id']['id']})"
    )
    print(_hints())
    return 0


def cached_rerun(cfg: PipelineConfig, args: argparse.Namespace) -> bool:
    """Serve a run that is stored whole (checked before torch, Prefect or MLflow load); False
    if any stage needs computing."""
    from flows.cached import find_cached_run, record_cached_run
    from metapt_core.redact import check_no_secrets

    check_no_secrets(cfg)  # the configuration is printed and logged
    run = find_cached_run(cfg)
    if run is None:
        return False
    print("# resolved configuration\n" + dump_yaml(cfg), flush=True)
    run_id = record_cached_run(cfg, run, list(args.overrides), args.profile)
    print("\n# results\n" + run.report_markdown())
    print(
        f"every stage ({len(run.stages)}) was served from the store; the report was computed "
        f"by MLflow run {run.report.source_run_id}"
    )
    print(f"MLflow run: {run_id}  (reprint: metapt report {run_id})")
    print(_hints())
    return True


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_yaml(_resolve(args)), end="")
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    cfg = _resolve(args)
    from metapt_core.assets import prepare_assets

    def progress(done: int, total: int, message: str) -> None:
        print(f"assets: {done}/{total} {message}", flush=True)

    paths = prepare_assets(cfg.assets_path, progress=progress)
    print(f"assets ready under {cfg.assets_path}: {paths}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    cfg = _resolve(args)
    from tasks.tracking import FLOW_RUN_TAG, Tracker

    tracker = Tracker.open(cfg)
    client = tracker.client
    try:
        run = client.get_run(args.run_id)
    except Exception:
        found = client.search_runs(
            [tracker.experiment_id],
            f"tags.`{FLOW_RUN_TAG}` = '{args.run_id}' and tags.`metapt.kind` = 'pipeline'",
        )
        if not found:
            raise MetaptError(
                f"run_id={args.run_id!r}: no such MLflow run or Prefect flow run"
            ) from None
        run = found[0]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run.info.run_id, "results", tmp)
        except Exception:
            raise MetaptError(f"run_id={args.run_id!r}: this run has no results") from None
        reports = sorted(Path(local).rglob("report.md"))
        if not reports:
            raise MetaptError(f"run_id={args.run_id!r}: this run has no report.md")
        print(reports[0].read_text("utf-8"), end="")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    cfg = _resolve(args)
    from tasks.cache import clear
    from tasks.stage import REFRESH_GROUPS

    if args.cache_command == "export":
        return _cache_export(cfg, args.stages, args.out)
    if args.cache_command == "import":
        return _cache_import(cfg, args.archive)
    stages = list(REFRESH_GROUPS.get(args.stage, (args.stage,))) if args.stage else [None]
    removed = [path for stage in stages for path in clear(cfg.work_path, stage)]
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print("nothing to remove")
    return 0


def _cache_export(cfg: PipelineConfig, names: list[str], out: str) -> int:
    from tasks.cache_transfer import export_archive
    from tasks.stage import REFRESH_GROUPS

    stages = [stage for name in names for stage in REFRESH_GROUPS.get(name, (name,))]
    entries = export_archive(cfg.work_path, out, stages or None)
    for entry in entries:
        print(f"exported {entry.label} ({entry.kind})")
    print(f"wrote {out} ({len(entries)} entries, {Path(out).stat().st_size / 1e6:.1f} MB)")
    return 0


def _cache_import(cfg: PipelineConfig, archive: str) -> int:
    from tasks.cache_transfer import import_archive

    if not Path(archive).is_file():
        raise MetaptError(f"archive={archive!r}: no such file")
    imported, present = import_archive(cfg.work_path, archive)
    for entry in imported:
        print(
            f"imported {entry.label} ({entry.kind}{', computed ' + entry.created if entry.created else ''}"
            f"{' on ' + entry.machine if entry.machine else ''})"
        )
    for entry in present:
        print(f"already stored {entry.label}")
    print(f"{len(imported)} imported, {len(present)} already stored, into {cfg.work_path}")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from flows.prompts import export

    cfg = _resolve(args)
    folder = export(cfg, args.source, args.out, args.report)
    print(f"exported {folder} (peft adapter, prompt.json, README.md)")
    return 0


COMMANDS = {
    "run": cmd_run,
    "config": cmd_config,
    "assets": cmd_assets,
    "report": cmd_report,
    "prompts": cmd_prompts,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metapt`` console script."""
    args = build_parser().parse_args(argv)
    handler = cmd_cache if args.command == "cache" else COMMANDS[args.command]
    try:
        return handler(args)
    except MetaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
