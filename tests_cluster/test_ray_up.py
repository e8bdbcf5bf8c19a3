"""`ray up` of the project's own on-premises config against this machine, over SSH, end to end.

Ray's `local` node provider reaches a throwaway user through an `sshd` of our own on 127.0.0.1;
only `cluster_name`, `provider` and `auth` differ from cluster-onprem.yaml (the same commands as
cluster.yaml). The user is unprivileged, so the config's `ray stop` can only stop its own Ray,
never another Ray on this machine. Up, a streamed run, an update that moves the server to a new
port through the head-only settings file, down; nothing of the user's is left running.

Needs root (it installs Debian packages when missing and adds the user) and PyPI (the node's
setup installs rayruns into a virtualenv). Run it with `make cluster-test`.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "cluster-onprem.yaml"
RAY = Path(sys.executable).parent / "ray"
PACKAGES = {  # what the test needs on this machine -> the Debian package that brings it
    "/usr/sbin/sshd": "openssh-server",
    "/usr/bin/rsync": "rsync",
    "/usr/bin/nc": "netcat-openbsd",
    "/usr/bin/ssh-keygen": "openssh-client",
}
RAY_UP_TIMEOUT_S = 1200  # the first `ray up` installs Ray and the SDKs from PyPI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _install_missing_packages() -> None:
    missing = sorted({pkg for path, pkg in PACKAGES.items() if not Path(path).exists()})
    # The node's Python: Debian's, with venv (the user cannot reach this checkout's Python).
    python = Path("/usr/bin/python3")
    if not python.exists() or subprocess.run([python, "-c", "import ensurepip"]).returncode:
        missing.append("python3-venv")
    if not missing:
        return
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*apt, "update", "-qq"], check=True, env=env)
    subprocess.run([*apt, "install", "-y", "-qq", *missing], check=True, env=env)


@dataclass
class Node:
    user: str
    home: Path
    uid: int
    key: Path
    ssh_port: int
    tmp: Path

    def user_processes(self) -> list[psutil.Process]:
        procs = []
        for p in psutil.process_iter(["uids"]):
            if p.info["uids"] and p.info["uids"].real == self.uid:
                procs.append(p)
        return procs

    def servers(self) -> list[psutil.Process]:
        found = []
        for p in self.user_processes():
            try:
                cmd = p.cmdline()
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            if "rayruns.serve_app" in cmd and "serve" in cmd and "--detach" not in cmd:
                found.append(p)
        return found

    def write_as_user(self, path: Path, text: str, mode: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
        for p in (path.parent, path):
            os.chown(p, self.uid, self.uid)


def _start_sshd(tmp: Path, user: str, port: int) -> subprocess.Popen[str]:
    host_key = tmp / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AllowUsers {user}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nAuthorizedKeysFile .ssh/authorized_keys\nAcceptEnv LANG LC_*\n"
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert sshd.stderr is not None
    for line in sshd.stderr:  # sshd says when it listens
        if "Server listening" in line:
            return sshd
    raise AssertionError(f"sshd exited with {sshd.wait()} before it listened")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.fail("the cluster test adds a user and runs sshd: run it as root")
    _install_missing_packages()
    tmp = tmp_path_factory.mktemp("cluster")
    user = f"rre2e{secrets.token_hex(3)}"
    # "*": no password to log in with, yet not a locked account, which sshd would refuse.
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", user], check=True
    )
    entry = pwd.getpwnam(user)
    sshd: subprocess.Popen[str] | None = None
    node = Node(user, Path(entry.pw_dir), entry.pw_uid, tmp / "id_ed25519", _free_port(), tmp)
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(node.key)], check=True
        )
        node.write_as_user(
            node.home / ".ssh" / "authorized_keys", Path(f"{node.key}.pub").read_text(), 0o600
        )
        # The node's own environment (not the config): a Ray temp dir of its own, so this Ray
        # shares nothing with other Ray instances on this machine.
        with (node.home / ".bashrc").open("a") as rc:
            rc.write('export RAY_TMPDIR="$HOME/rt" RAY_USAGE_STATS_ENABLED=0\n')
        sshd = _start_sshd(tmp, user, node.ssh_port)
        yield node
    finally:  # the test asserts that `ray down` left nothing; this cleans up after a failure
        for log in sorted((node.home / ".rayruns").glob("serve.log*")):
            print(f"--- the end of {log.name} on the head:\n{_tail(log, 80)}")
        leftovers = node.user_processes()
        for p in leftovers:
            p.kill()
        psutil.wait_procs(leftovers, timeout=30)
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=30)
        _end_ssh_masters(node.key)
        subprocess.run(["userdel", "--remove", user], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _end_ssh_masters(key: Path) -> None:
    """Ray's SSH connection masters (ControlPersist) for our key: ours, started by `ray up`."""
    masters = []
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] and str(key) in p.info["cmdline"]:
            masters.append(p)
    for p in masters:
        p.terminate()
    psutil.wait_procs(masters, timeout=10)


@pytest.fixture(scope="module")
def config_file(node: Node) -> Iterator[Path]:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["cluster_name"] = f"rayruns-{node.user}"
    config["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    # No workers: the head hosts the runs too.
    config["head_start_ray_commands"] = [
        f"{c} --resources='{{\"rayruns_run\": 8}}'" if c.startswith("ray start --head") else c
        for c in config["head_start_ray_commands"]
    ]
    config["auth"] = {
        "ssh_user": node.user,
        "ssh_private_key": str(node.key),
        "ssh_proxy_command": f"nc 127.0.0.1 {node.ssh_port}",
    }
    path = node.tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path
    for suffix in ("state", "lock"):  # the local provider's record of the cluster, on our side
        (Path("/tmp/ray") / f"cluster-{config['cluster_name']}.{suffix}").unlink(missing_ok=True)


def ray_cli(*args: str, log: Path) -> None:
    """A `ray` command as an operator runs it, from the checkout; its output goes to `log`."""
    with log.open("w") as out:
        code = subprocess.run(
            [str(RAY), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=RAY_UP_TIMEOUT_S,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        ).returncode
    tail = _tail(log, 60)
    assert code == 0, f"`ray {' '.join(args)}` exited {code}:\n{tail}"


def assert_serves(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    body = {"messages": [{"role": "user", "content": "hello cluster"}]}
    with httpx.stream("POST", f"{base}/v1/runs", json=body, timeout=60) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert '"content":"hello "' in text and '"content":"cluster"' in text, text
    assert text.rstrip().endswith("data: [DONE]"), text


@pytest.mark.timeout(3 * RAY_UP_TIMEOUT_S)
def test_up_run_update_down(node: Node, config_file: Path) -> None:
    port_1, port_2 = _free_port(), _free_port()
    settings = node.home / ".rayruns" / "rayruns.env"
    # Where the server listens comes from the head's settings file, as for an operator who put
    # it there before the first `ray up` (the README's on-premises path).
    node.write_as_user(settings, f"RAYRUNS_PORT={port_1}\n", 0o600)

    ray_cli("up", "-y", "--no-config-cache", str(config_file), log=node.tmp / "up-1.log")
    [first] = node.servers()
    assert_serves(port_1)
    pid_file = node.home / ".rayruns" / "serve.pid"
    assert int(pid_file.read_text()) == first.pid
    assert not (node.home / "rayruns" / "tests").exists(), "the checkout's tests were synced"
    assert not (node.home / "rayruns" / ".venv").exists(), "the checkout's .venv was synced"

    # Settings reach the head only, with `ray rsync-up`; the update restarts the server on them.
    local_settings = node.tmp / "rayruns.env"
    local_settings.write_text(f"RAYRUNS_PORT={port_2}\n")
    local_settings.chmod(0o600)
    ray_cli(
        "rsync-up",
        str(config_file),
        str(local_settings),
        "~/.rayruns/rayruns.env",
        log=node.tmp / "rsync-up.log",
    )
    ray_cli("up", "-y", "--no-config-cache", str(config_file), log=node.tmp / "up-2.log")
    assert not _running(first), "the update left the old server running"
    [second] = node.servers()
    assert int(pid_file.read_text()) == second.pid
    assert_serves(port_2)
    assert not _port_open(port_1)

    ray_cli("down", "-y", str(config_file), log=node.tmp / "down.log")
    # `ray down` runs `ray stop` on the head; the server notices its cluster is gone and exits.
    _, alive = psutil.wait_procs([second], timeout=60)
    assert not alive, "rayruns serve outlived `ray down`"
    assert not _port_open(port_2)
    assert not pid_file.exists()
    _, alive = psutil.wait_procs(node.user_processes(), timeout=60)
    assert not alive, f"left running after `ray down`: {[p.cmdline() for p in alive]}"
