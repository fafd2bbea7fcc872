"""A remote Dask grid is refused, naming the setting, where its workers could not reach the
store, MLflow or the Prefect API; a local scheduler is never refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_meta_fixtures import small_config

from flows.remote import check_remote_grid, filesystem_type, host_of, is_local_address
from metapt_core.config import PipelineConfig, from_dict, to_dict
from metapt_core.errors import ConfigError

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
server:/export /mnt/shared nfs4 rw,vers=4.2 0 0
server:/export/x /mnt/shared/local\\040copy ext4 rw 0 0
"""
REMOTE = "tcp://10.0.0.5:8786"
SERVER = "http://10.0.0.4:5000"
PREFECT = "http://10.0.0.4:4200/api"


def config(address: str, work: str = "/mnt/shared/work") -> PipelineConfig:
    data = to_dict(small_config())
    data["grid"]["dask_address"] = address
    data["work_dir"] = work
    return from_dict(PipelineConfig, data)


def test_addresses() -> None:
    assert host_of("tcp://Sched.example:8786") == "sched.example"
    assert host_of("10.1.2.3:8786") == "10.1.2.3"
    assert is_local_address("tcp://127.0.0.1:8786") and is_local_address("localhost:8786")
    assert is_local_address("inproc://x") and not is_local_address(REMOTE)


def test_filesystem_of_a_path_is_its_longest_mount() -> None:
    assert filesystem_type(Path("/mnt/shared/work"), MOUNTS) == "nfs4"
    assert filesystem_type(Path("/mnt/shared/local copy/w"), MOUNTS) == "ext4"
    assert filesystem_type(Path("/tmp/x"), MOUNTS) == "tmpfs"
    assert filesystem_type(Path("/home/u"), MOUNTS) == "ext4"


def test_local_or_no_scheduler_is_never_refused() -> None:
    for address in ("", "tcp://127.0.0.1:8786", "localhost:8786"):
        check_remote_grid(config(address), "sqlite:////tmp/m.db", "", fs_type="ext4")


def test_local_store_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        check_remote_grid(config(REMOTE), SERVER, PREFECT, fs_type="ext4")
    message = str(err.value)
    assert message.startswith("work_dir") and "/mnt/shared/work" in message
    assert REMOTE in message and "ext4" in message and "\n" not in message


def test_the_real_work_folder_on_local_disk_is_refused(tmp_path: Path) -> None:
    kind = filesystem_type(tmp_path)
    if kind in ("nfs", "nfs4"):
        pytest.skip(f"{tmp_path} is on {kind}")
    with pytest.raises(ConfigError, match="work_dir"):
        check_remote_grid(config(REMOTE, str(tmp_path)), SERVER, PREFECT)


@pytest.mark.parametrize(
    "uri", ["sqlite:////mnt/shared/work/mlflow.db", "/mnt/shared/mlruns", "file:///mnt/x"]
)
def test_sqlite_or_file_mlflow_is_refused(uri: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_remote_grid(config(REMOTE), uri, PREFECT, fs_type="nfs4")
    assert str(err.value).startswith("tracking.mlflow_uri") and uri in str(err.value)


def test_loopback_mlflow_or_prefect_is_refused() -> None:
    with pytest.raises(ConfigError, match="tracking.mlflow_uri.*loopback"):
        check_remote_grid(config(REMOTE), "http://127.0.0.1:5000", PREFECT, fs_type="nfs4")
    with pytest.raises(ConfigError, match="PREFECT_API_URL.*ephemeral"):
        check_remote_grid(config(REMOTE), SERVER, "", fs_type="nfs4")
    with pytest.raises(ConfigError, match="PREFECT_API_URL"):
        check_remote_grid(config(REMOTE), SERVER, "http://localhost:4200/api", fs_type="nfs4")
    check_remote_grid(config(REMOTE), SERVER, PREFECT, fs_type="nfs4")  # all reachable


def test_the_flow_check_refuses_before_writing_anything(tmp_path: Path) -> None:
    from flows.context import check_grid_reach

    check_grid_reach(config("", str(tmp_path / "local")))  # no Dask address: nothing checked
    with pytest.raises(ConfigError, match="work_dir"):
        check_grid_reach(config(REMOTE, str(tmp_path / "w")))
    assert not (tmp_path / "w").exists()
