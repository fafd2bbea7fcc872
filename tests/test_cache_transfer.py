"""Stored stages carried between machines (``metapt cache export`` / ``import``).

Built on real store folders (``PendingStage.commit``, the path every stage takes); the whole
pipeline's store is carried in ``test_cache_integrity`` (a real smoke run's store, imported into
an empty work dir, serves the whole run).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from flows.cli import main
from metapt_core.errors import MetaptError
from metapt_core.store import ArtifactRef, fingerprint
from tasks.cache import RECORD, PendingStage, lookup, partial_folder, signature, stage_folder
from tasks.cache_transfer import MANIFEST, export_archive, import_archive

KEY = "ab" * 32
OTHER = "cd" * 32


def stored(work: Path, stage: str = "embed", key: str = KEY, text: str = "vectors") -> Path:
    """One committed stage computation, as a stage task leaves it."""
    pending = PendingStage(work, stage, key)
    (pending.out_dir / "emb.txt").write_text(text)
    ref = ArtifactRef(
        path=str(pending.out_dir / "emb.txt"), sha256=fingerprint(pending.out_dir / "emb.txt")
    )
    pending.commit(ref, {"rows": 3}, source_run_id="run1", extra={"machine": "Test CPU"})
    return stage_folder(work, stage, key)


def stopped(work: Path, stage: str = "meta-pretrain-maml", key: str = OTHER) -> Path:
    """A computation killed after its step-10 checkpoint: ``<key>.partial/out.ckpt/``."""
    ckpt = partial_folder(work, stage, key) / "out.ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "step-10.pt").write_bytes(b"\x00\x01state")
    return ckpt


def test_an_exported_store_is_served_by_another_work_dir(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    stored(source)
    stopped(source)
    entries = export_archive(source, tmp_path / "store.tar.gz")
    assert [(e.label, e.kind, e.machine) for e in entries] == [
        (f"embed/{KEY[:16]}", "stored", "Test CPU"),
        (f"meta-pretrain-maml/{OTHER[:16]}.partial", "checkpoint", ""),
    ]
    imported, present = import_archive(target, tmp_path / "store.tar.gz")
    assert len(imported) == 2 and not present
    hit = lookup(target, "embed", KEY, verify=True)
    assert hit is not None and Path(hit.ref.path).read_text() == "vectors"
    assert hit.source_run_id == "run1" and hit.stats == {"rows": 3}
    # re-signed after the check: the copy is trusted by signature, like a computed output
    record = json.loads((stage_folder(target, "embed", KEY) / RECORD).read_text())
    assert record["signature"] == signature(stage_folder(target, "embed", KEY) / "out")
    resumed = partial_folder(target, "meta-pretrain-maml", OTHER) / "out.ckpt" / "step-10.pt"
    assert resumed.read_bytes() == b"\x00\x01state"
    assert not list((target / "artifacts").glob(".import-*"))
    # a second import finds everything there
    imported, present = import_archive(target, tmp_path / "store.tar.gz")
    assert not imported and len(present) == 2


def test_export_chooses_stages_and_leaves_out_damaged_outputs(tmp_path: Path) -> None:
    stored(tmp_path / "w", "embed")
    damaged = stored(tmp_path / "w", "cluster", OTHER)
    (damaged / "out" / "emb.txt").write_text("changed")
    (tmp_path / "w" / "artifacts" / ".import-killed" / "embed").mkdir(parents=True)
    entries = export_archive(tmp_path / "w", tmp_path / "all.tar.gz")
    assert [e.stage for e in entries] == ["embed"]
    with pytest.raises(MetaptError, match="holds nothing of ppt to export"):
        export_archive(tmp_path / "w", tmp_path / "ppt.tar.gz", ["ppt"])
    assert not (tmp_path / "ppt.tar.gz").exists()


def _rewrite(archive: Path, out: Path, change: dict[str, bytes]) -> None:
    """Copy ``archive`` to ``out`` with the members named in ``change`` given new bytes (or
    added, when not there)."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name in change:
                data = change.pop(member.name)
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
        for name, data in change.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "member",
    [f"embed/{KEY[:16]}/out/emb.txt", f"embed/{KEY[:16]}/out/extra.txt"],
    ids=["altered", "added"],
)
def test_an_altered_archive_is_refused_and_leaves_the_store_untouched(
    tmp_path: Path, member: str
) -> None:
    stored(tmp_path / "a")
    export_archive(tmp_path / "a", tmp_path / "good.tar.gz")
    _rewrite(tmp_path / "good.tar.gz", tmp_path / "bad.tar.gz", {member: b"vectorz"})
    target = tmp_path / "b"
    with pytest.raises(MetaptError, match=f"embed/{KEY[:16]} does not match its record"):
        import_archive(target, tmp_path / "bad.tar.gz")
    assert [p.name for p in (target / "artifacts").iterdir()] == []


@pytest.mark.parametrize(
    "name", ["../escape.txt", "embed/../../escape.txt", "notes/readme.txt", "/abs/file.txt"]
)
def test_a_member_outside_the_stores_layout_is_refused(tmp_path: Path, name: str) -> None:
    stored(tmp_path / "a")
    export_archive(tmp_path / "a", tmp_path / "good.tar.gz")
    _rewrite(tmp_path / "good.tar.gz", tmp_path / "bad.tar.gz", {name: b"x"})
    with pytest.raises(MetaptError, match="is not a stage file"):
        import_archive(tmp_path / "b", tmp_path / "bad.tar.gz")
    assert not (tmp_path / "escape.txt").exists()
    assert [p.name for p in (tmp_path / "b" / "artifacts").iterdir()] == []


def test_a_checkpoint_is_not_imported_over_a_finished_computation(tmp_path: Path) -> None:
    stopped(tmp_path / "a", "embed", KEY)
    export_archive(tmp_path / "a", tmp_path / "ckpt.tar.gz")
    stored(tmp_path / "b", "embed", KEY)
    imported, present = import_archive(tmp_path / "b", tmp_path / "ckpt.tar.gz")
    assert not imported and [e.kind for e in present] == ["checkpoint"]
    assert not partial_folder(tmp_path / "b", "embed", KEY).exists()


def test_the_cli_carries_a_store_and_names_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored(tmp_path / "a")
    base = ["--profile", "smoke", "--set"]
    assert main(["cache", "export", "embed", "--out", str(tmp_path / "s.tar.gz"), *base, f"work_dir={tmp_path / 'a'}"]) == 0  # fmt: skip
    assert f"exported embed/{KEY[:16]} (stored)" in capsys.readouterr().out
    assert main(["cache", "import", str(tmp_path / "s.tar.gz"), *base, f"work_dir={tmp_path / 'b'}"]) == 0  # fmt: skip
    assert "1 imported, 0 already stored" in capsys.readouterr().out
    assert lookup(tmp_path / "b", "embed", KEY) is not None
    # bad input: one line naming the value, exit status 2
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    for argv in (
        ["cache", "import", str(tmp_path / "missing.tar.gz")],
        ["cache", "import", str(tmp_path / "junk.tar.gz")],
        ["cache", "export", "--out", str(tmp_path / "e.tar.gz")],
    ):
        assert main([*argv, *base, f"work_dir={tmp_path / 'empty'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    with tarfile.open(tmp_path / "s.tar.gz") as tar:
        assert MANIFEST in tar.getnames()


def test_a_manifest_naming_a_folder_outside_the_store_is_refused(tmp_path: Path) -> None:
    stored(tmp_path / "a")
    export_archive(tmp_path / "a", tmp_path / "good.tar.gz")
    with tarfile.open(tmp_path / "good.tar.gz") as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    manifest["entries"][0]["stage"] = "../../outside"
    bad = {MANIFEST: json.dumps(manifest).encode()}
    _rewrite(tmp_path / "good.tar.gz", tmp_path / "bad.tar.gz", bad)
    with pytest.raises(MetaptError, match="manifest entry '../../outside/.*' is not a stage"):
        import_archive(tmp_path / "b", tmp_path / "bad.tar.gz")
    assert [p.name for p in (tmp_path / "b" / "artifacts").iterdir()] == []


def test_a_record_pointing_outside_its_output_is_refused(tmp_path: Path) -> None:
    folder = stored(tmp_path / "a")
    record = json.loads((folder / RECORD).read_text())
    export_archive(tmp_path / "a", tmp_path / "good.tar.gz")
    # from <b>/artifacts/.import-*/artifacts/embed/<key>/ up to tmp_path: the source store's file
    record["ref"]["rel"] = "../../../../../../a/artifacts/embed/" + KEY[:16] + "/out/emb.txt"
    name = f"embed/{KEY[:16]}/{RECORD}"
    _rewrite(tmp_path / "good.tar.gz", tmp_path / "bad.tar.gz", {name: json.dumps(record).encode()})
    with pytest.raises(MetaptError, match="does not match its record"):
        import_archive(tmp_path / "b", tmp_path / "bad.tar.gz")
    assert [p.name for p in (tmp_path / "b" / "artifacts").iterdir()] == []
