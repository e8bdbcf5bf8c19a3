"""The cluster configs pass the validation `ray up` applies, offline, and their commands are sound.

`make cluster-test` runs them for real (tests_cluster/); these checks are the fast ones.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.local.config import prepare_local
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {name: ROOT / name for name in ("cluster.yaml", "cluster-onprem.yaml")}
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
SHARED_KEYS = (*COMMAND_KEYS, "file_mounts", "rsync_exclude", "rsync_filter")


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CONFIGS[name].read_text())
    return config


def validated(config: dict[str, Any]) -> None:
    config = prepare_config(copy.deepcopy(config))
    if config["provider"]["type"] == "local":
        config, _ = prepare_local(config)  # what `ray up` does before it validates one
    validate_config(config)


@pytest.mark.parametrize("name", CONFIGS)
def test_the_config_is_valid_for_ray_up(name: str) -> None:
    validated(load(name))


@pytest.mark.parametrize("name", CONFIGS)
def test_the_validation_catches_a_typo(name: str) -> None:
    config = load(name)
    config["max_wrokers"] = 3
    with pytest.raises(Exception, match="max_wrokers"):
        validated(config)


def test_the_configs_share_every_command_and_mount() -> None:
    """The end-to-end test runs cluster-onprem.yaml; this makes it cover cluster.yaml too."""
    aws, onprem = load("cluster.yaml"), load("cluster-onprem.yaml")
    assert aws["provider"]["type"] == "aws" and onprem["provider"]["type"] == "local"
    for key in SHARED_KEYS:
        assert aws.get(key) == onprem.get(key), key


@pytest.mark.parametrize("name", CONFIGS)
def test_keys_travel_in_no_file_mount(name: str) -> None:
    """The head's autoscaler copies every file mount to every worker: keys go by rsync-up."""
    config = load(name)
    for remote, local in config["file_mounts"].items():
        assert "env" not in Path(remote).name and "env" not in Path(local).name
    # Excludes apply to `ray rsync-up` too: one for rayruns.env would stop the keys' own upload.
    assert not any("env" in pattern for pattern in config["rsync_exclude"])
    assert config["rsync_filter"] == [".gitignore"]
    assert "rayruns.env" in (ROOT / ".gitignore").read_text().splitlines()


def _rsync_args(config: dict[str, Any]) -> list[str]:
    """The filter arguments Ray's command runner gives rsync for this config."""
    args = []
    for pattern in config.get("rsync_exclude", []):
        args += ["--exclude", pattern]
    for merge_file in config.get("rsync_filter", []):
        args += ["--filter", f"dir-merge,- {merge_file}"]
    return args


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout as an operator has it: sources, tests, a virtualenv, build output, keys."""
    root = tmp_path / "checkout"
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    for rel in (
        "serve_app/cli.py",
        "serve_app/__pycache__/cli.cpython-311.pyc",
        "tests/test_x.py",
        "tests_cluster/test_ray_up.py",
        "bench/run.py",
        ".venv/bin/python",
        ".git/HEAD",
        "build/lib/x.py",
        "rayruns.egg-info/PKG-INFO",
        "rayruns.env",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "rayruns").mkdir()
    (root / "rayruns" / "serve_app").symlink_to("../serve_app")
    return root


def _rsync(*args: str) -> None:
    exe = shutil.which("rsync")
    if exe is None:
        pytest.skip("rsync is not installed: `make test` installs it (Debian: rsync)")
    subprocess.run([exe, "-az", *args], check=True)


@pytest.mark.parametrize("name", CONFIGS)
def test_the_mount_syncs_the_package_sources_only(
    name: str, checkout: Path, tmp_path: Path
) -> None:
    config = load(name)
    assert config["file_mounts"] == {"~/rayruns": "."}
    head = tmp_path / "head"
    _rsync(*_rsync_args(config), f"{checkout}/", f"{head}/")  # as `ray up` syncs a directory
    synced = sorted(str(p.relative_to(head)) for p in head.rglob("*"))
    assert synced == [
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "rayruns",
        "rayruns/serve_app",
        "serve_app",
        "serve_app/cli.py",
    ]
    # ... while `ray rsync-up cluster.yaml rayruns.env '~/.rayruns/rayruns.env'` does upload.
    _rsync(*_rsync_args(config), str(checkout / "rayruns.env"), str(tmp_path / "uploaded.env"))
    assert (tmp_path / "uploaded.env").read_text() == "x"


def test_the_server_stops_by_its_pid_file_before_ray_stops() -> None:
    start = load("cluster.yaml")["head_start_ray_commands"]
    assert start[0].startswith("rayruns stop --pid-file ~/.rayruns/serve.pid")
    assert start.index("ray stop") > 0
    serve = start[-1]
    assert serve.startswith("rayruns serve --detach --address auto")
    assert "--pid-file ~/.rayruns/serve.pid" in serve
    assert "--env-file ~/.rayruns/rayruns.env" in serve
    # Where it listens is the operator's (RAYRUNS_HOST in the settings file): loopback unless set.
    assert "--host" not in serve
    assert not any("pkill" in c for k in COMMAND_KEYS for c in load("cluster.yaml").get(k, []))


def _script(commands: list[str]) -> str:
    # Each command runs in its own `bash -c`, as Ray's command runner does over SSH.
    return "#!/usr/bin/env bash\n" + "".join(f"( {c}\n)\n" for c in commands)


def shellcheck(script: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed: `make test` installs it (Debian: shellcheck)")
    return subprocess.run(
        [exe, "--shell=bash", "--severity=style", "-"],
        input=script,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("key", COMMAND_KEYS)
def test_shellcheck_passes_every_command(name: str, key: str) -> None:
    commands = load(name).get(key, [])
    result = shellcheck(_script(commands))
    assert result.returncode == 0, result.stdout


def test_shellcheck_catches_a_tilde_that_pip_would_never_expand() -> None:
    result = shellcheck(_script(["python3 -m pip install --quiet '~/rayruns[providers]'"]))
    assert result.returncode != 0 and "SC2088" in result.stdout


def _declared_slots(command: str) -> float:
    match = re.search(r"--resources='(\{.*?\})'", command)
    assert match, f"no --resources in {command!r}"
    slots: float = json.loads(match.group(1))["rayruns_run"]
    return slots


@pytest.mark.parametrize("name", CONFIGS)
def test_workers_declare_run_slots_and_the_head_none(name: str) -> None:
    config = load(name)
    (start,) = [c for c in config["worker_start_ray_commands"] if c.startswith("ray start")]
    slots = _declared_slots(start)
    assert slots > 0
    assert "rayruns_run" not in " ".join(config["head_start_ray_commands"])
    for node_type in config.get("available_node_types", {}).values():
        # The autoscaler plans by these: a worker type says what its start command declares.
        is_head = node_type is config["available_node_types"][config["head_node_type"]]
        assert node_type["resources"].get("rayruns_run", 0) == (0 if is_head else slots)
