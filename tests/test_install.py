"""install.sh into a staging root: files, symlink, unit, config, join token, upgrade, uninstall.

``SWARMD_ROOT=<tmp>`` puts every path (the prefix, /etc, the state dir) under ``<tmp>``
and keeps systemctl out of it, so nothing here touches the real system. The binary is
a shell script that answers ``--version`` like swarmd; the real binary is installed by
the boot test (tests/test_systemd.py) and built by tests/test_binary.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT

INSTALL = ROOT / "install.sh"
UNIT = ROOT / "systemd" / "swarmd.service"
EXAMPLE = ROOT / "systemd" / "swarmd.toml.example"
TOKEN = (  # made by `swarmctl join-token`: names a ticket on 192.168.1.20, no secret
    "swarmd2-lbExOTIuMTY4LjEuMjA6Nzk0NpGxMTkyLjE2OC4xLjIxOjc5NDbEIOf5FhWCIIlQbEEQHKsfQVoorP4V"
    "sN2r1AA34nckgpJmxBAAAQIDBAUGBwgJCgsMDQ4PxCAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHy2UlEE"
)
OLD_TOKEN = "swarmd1-AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gkbExMjcuMC4wLjE6Nzk0Ng"

pytestmark = pytest.mark.timeout(60)
SETPRIV_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def fake_binary(path: Path, version: str) -> Path:
    path.write_text(
        f'#!/bin/sh\ncase "$1" in --version) echo "$(basename "$0"), version {version}" ;; esac\n'
    )
    path.chmod(0o755)
    return path


def install(
    root: Path, *args: str, check: bool = True, script: Path = INSTALL, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SWARMD_ROOT=str(root))
    if path is not None:
        env["PATH"] = path
    env.pop("PYINSTALLER", None)
    proc = subprocess.run(
        ["sh", str(script), *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert proc.returncode == 0, f"install.sh {args} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_shell_syntax() -> None:
    for shell in ("sh", "bash"):
        if shutil.which(shell):
            proc = subprocess.run([shell, "-n", str(INSTALL)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{shell} -n: {proc.stderr}"


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(
        ["shellcheck", "-s", "sh", str(INSTALL)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help() -> None:
    proc = subprocess.run(["sh", str(INSTALL), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--join-token" in proc.stdout and "--uninstall" in proc.stdout


def test_install_upgrade_uninstall_purge(tmp_path: Path) -> None:
    root = tmp_path / "root"
    v1 = fake_binary(tmp_path / "swarmd-v1", "1.0.0")
    bindir = root / "opt/swarm/bin"
    etc = root / "etc/swarmd"
    unit = root / "etc/systemd/system/swarmd.service"
    join_env = etc / "join.env"

    # -- first install, with a join token and a prefix of its own
    out = install(
        root, "--binary", str(v1), "--prefix", "/opt/swarm", "--join-token", TOKEN, "--no-start"
    ).stdout
    assert "==> " in out and "systemctl was not called" in out, out
    assert (bindir / "swarmd").read_bytes() == v1.read_bytes()
    assert mode(bindir / "swarmd") == 0o755
    assert os.readlink(bindir / "swarmctl") == "swarmd"
    ctl = subprocess.run([bindir / "swarmctl", "--version"], capture_output=True, text=True)
    assert ctl.stdout.strip() == "swarmctl, version 1.0.0"

    text = unit.read_text()
    assert mode(unit) == 0o644
    exec_start = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == ["ExecStart=/opt/swarm/bin/swarmd run"], exec_start
    assert "/usr/local/bin" not in text
    join_line = "EnvironmentFile=-/etc/swarmd/join.env"
    assert text.splitlines().count(join_line) == 1, text
    # apart from the prefix and the join token's EnvironmentFile=, the unit is the one shipped
    shipped = [
        line.replace("/usr/local/bin/", "/opt/swarm/bin/")
        for line in UNIT.read_text().splitlines()
        if line != join_line
    ]
    assert [line for line in text.splitlines() if line != join_line] == shipped

    assert (etc / "swarmd.toml").read_text() == EXAMPLE.read_text()
    assert mode(etc / "swarmd.toml") == 0o644
    assert mode(join_env) == 0o600
    assert f"SWARMD_JOIN_TOKEN={TOKEN}\n" in join_env.read_text()

    # -- the node ran: it has state; the admin edited the config
    state = root / "var/lib/private/swarmd"
    state.mkdir(parents=True)
    (root / "var/lib/swarmd").symlink_to("private/swarmd")  # as DynamicUser= leaves it
    (state / "node_id").write_text("0123456789abcdef\n")
    (state / "cluster.secret").write_text("ab" * 32 + "\n")
    (state / "journal.db").write_bytes(b"journal")
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    (etc / "swarmd.toml").write_text("[node]\nname = 'mine'\n")

    # -- upgrade: a new binary, no token
    v2 = fake_binary(tmp_path / "swarmd-v2", "2.0.0")
    out = install(root, "--binary", str(v2), "--prefix", "/opt/swarm", "--no-start").stdout
    assert (bindir / "swarmd").read_bytes() == v2.read_bytes()
    assert "swarmd.service: unchanged" in out, out
    assert "kept as it is" in out and "0123456789abcdef" in out, out
    assert (etc / "swarmd.toml").read_text() == "[node]\nname = 'mine'\n"
    assert f"SWARMD_JOIN_TOKEN={TOKEN}\n" in join_env.read_text()
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before
    assert not [p for p in bindir.iterdir() if p.name.startswith(".")], "no temp files left"

    # -- the same again: nothing changes
    out = install(root, "--binary", str(v2), "--prefix", "/opt/swarm", "--no-start").stdout
    assert "bin/swarmd: unchanged" in out, out

    # -- uninstall (the prefix comes from the installed unit): config and state stay
    out = install(root, "--uninstall").stdout
    assert not (bindir / "swarmd").exists()
    assert not (bindir / "swarmctl").is_symlink()
    assert not unit.exists()
    assert (etc / "swarmd.toml").exists() and join_env.exists()
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before
    assert "Kept" in out, out

    # -- purge: config and state go too
    install(root, "--uninstall", "--purge")
    assert not etc.exists()
    assert not state.exists() and not (root / "var/lib/swarmd").is_symlink()


def test_default_prefix_keeps_the_unit_as_shipped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--binary", str(fake_binary(tmp_path / "swarmd", "1.0.0")))
    assert (root / "usr/local/bin/swarmd").is_file()
    assert os.readlink(root / "usr/local/bin/swarmctl") == "swarmd"
    text = (root / "etc/systemd/system/swarmd.service").read_text()
    assert "ExecStart=/usr/local/bin/swarmd run" in text.splitlines()
    assert text.count("EnvironmentFile=-/etc/swarmd/join.env") == 1
    assert not (root / "etc/swarmd/join.env").exists(), "no token, no env file"
    # a token given later is written then, and only the token file changes
    install(root, "--binary", str(tmp_path / "swarmd"), f"--join-token={TOKEN}")
    assert mode(root / "etc/swarmd/join.env") == 0o600
    # an older version's token (it carries the secret) is still taken
    install(root, "--binary", str(tmp_path / "swarmd"), f"--join-token={OLD_TOKEN}")
    assert f"SWARMD_JOIN_TOKEN={OLD_TOKEN}\n" in (root / "etc/swarmd/join.env").read_text()


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    good = fake_binary(tmp_path / "swarmd", "1.0.0")
    other = tmp_path / "other"
    other.write_text("#!/bin/sh\necho 'Python 3.11.7'\n")
    other.chmod(0o755)
    cases = {
        ("--binary", str(good), "--join-token", "hunter2"): "not a swarmd join token",
        ("--binary", str(good), "--join-token", "swarmd1-a b"): "damaged",
        ("--binary", str(good), "--join-token", "swarmd2-a;b"): "damaged",
        ("--binary", str(good), "--join-token", "swarmd2-"): "damaged",
        ("--binary", str(good), "--join-token", "swarmd3-abc"): "not a swarmd join token",
        ("--binary", str(good), "--join-token", "swarmd1-a\nX=1"): "damaged",
        ("--binary", str(tmp_path / "missing")): "no such file",
        ("--binary", str(other)): "not a swarmd binary",
        ("--binary", str(good), "--prefix", "opt"): "absolute path",
        ("--binary", str(good), "--prefix", "/opt/a b"): "--prefix may hold only",
        ("--binary", str(good), "--purge"): "--purge only goes with --uninstall",
        ("--binary",): "needs a value",
        ("--frobnicate",): "unknown argument",
    }
    for args, message in cases.items():
        proc = install(root, *args, check=False)
        assert proc.returncode != 0, args
        assert message in proc.stderr, (args, proc.stderr)
        assert not root.exists() or not any(root.rglob("*")), f"{args} wrote files"


def test_no_binary_and_nothing_to_build_with(tmp_path: Path) -> None:
    # install.sh shipped with the unit and config but no checkout: a clear message
    release = tmp_path / "release"
    (release / "systemd").mkdir(parents=True)
    shutil.copy(INSTALL, release)
    shutil.copy(UNIT, release / "systemd")
    shutil.copy(EXAMPLE, release / "systemd")
    proc = install(tmp_path / "root", check=False, script=release / "install.sh")
    assert proc.returncode != 0
    assert "no --binary given" in proc.stderr and "pyinstaller.spec" in proc.stderr
    # a checkout, but no PyInstaller anywhere
    path = "/usr/bin:/bin"
    if shutil.which("pyinstaller", path=path):
        pytest.skip("pyinstaller is installed system-wide")
    shutil.copy(ROOT / "pyinstaller.spec", release)
    proc = install(tmp_path / "root", check=False, script=release / "install.sh", path=path)
    assert proc.returncode != 0
    assert "PyInstaller is not installed" in proc.stderr, proc.stderr
    assert "--binary PATH" in proc.stderr


def test_refuses_to_run_as_a_user(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    binary = fake_binary(tmp_path / "swarmd", "1.0.0")
    tmp_path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SWARMD_ROOT"}
    proc = subprocess.run(
        [*SETPRIV_NOBODY, "sh", str(INSTALL), "--binary", str(binary)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "run as root" in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_install_upgrade_uninstall_under_real_systemd(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """install.sh as the README gives it, in a container booted with real systemd.

    Uses the boot container of tests/test_systemd.py and the binary of tests/test_binary.py
    (built once a session). The upgrade installs a wrapper that execs the real binary:
    different bytes, the same program.
    """
    from tests.test_binary import built_binary
    from tests.test_systemd import Container, _boot_unavailable

    reason = _boot_unavailable()
    if reason is not None:
        pytest.skip(reason)
    binary = built_binary(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("boot")
    box = Container(workdir)
    try:
        box.boot()
        for rel in ("install.sh", "systemd/swarmd.service", "systemd/swarmd.toml.example"):
            box.write(f"/opt/src/{rel}", (ROOT / rel).read_text(), 0o755)
        shutil.copyfile(binary, box.path("/opt/swarmd-1"))
        box.path("/opt/swarmd-1").chmod(0o755)
        # argv[0] (swarmd or swarmctl) passes through the wrapper
        box.write("/opt/swarmd-2", '#!/bin/bash\nexec -a "$0" /opt/swarmd-1 "$@"\n', 0o755)
        state = "/var/lib/swarmd"

        def ctl(*args: str) -> str:
            return box.run("swarmctl", "--state-dir", state, *args, check=True).stdout

        def peers() -> list[dict[str, object]]:
            return list(json.loads(ctl("--json", "peers")))

        # -- a new machine: one command; it runs when install.sh returns
        out = box.run("sh", "/opt/src/install.sh", "--binary", "/opt/swarmd-1", check=True).stdout
        assert "systemctl enable --now swarmd" in out, out
        props = box.show("swarmd", "ActiveState", "UnitFileState", "MainPID")
        assert props["ActiveState"] == "active" and props["UnitFileState"] == "enabled", props
        (me,) = peers()
        token = json.loads(ctl("--json", "join-token"))["token"]

        # -- the same again: nothing changes, the node keeps running
        out = box.run("sh", "/opt/src/install.sh", "--binary", "/opt/swarmd-1", check=True).stdout
        assert "nothing changed" in out, out
        assert box.show("swarmd", "MainPID")["MainPID"] == props["MainPID"]

        # -- upgrade, with a join token: restarted on the new binary, same node and cluster
        box.run(
            "sh",
            "/opt/src/install.sh",
            "--binary",
            "/opt/swarmd-2",
            "--join-token",
            token,
            check=True,
        )
        after = box.show("swarmd", "ActiveState", "MainPID")
        assert after["ActiveState"] == "active" and after["MainPID"] != props["MainPID"], after
        assert box.path("/usr/local/bin/swarmd").read_text().startswith("#!/bin/bash")
        (again,) = peers()
        assert again["id"] == me["id"], (me, again)
        assert "joined the cluster of the token" in box.journal("swarmd")

        # -- uninstall: stopped and gone; config and state stay
        box.run("sh", "/opt/src/install.sh", "--uninstall", check=True)
        assert box.show("swarmd", "LoadState")["LoadState"] == "not-found"
        assert not box.path("/usr/local/bin/swarmd").exists()
        assert box.path("/etc/swarmd/swarmd.toml").exists()
        assert box.path("/var/lib/private/swarmd/node_id").read_text().strip() == me["id"]
        box.run("sh", "/opt/src/install.sh", "--uninstall", "--purge", check=True)
        assert not box.path("/etc/swarmd").exists()
        assert not box.path("/var/lib/private/swarmd").exists()
    finally:
        box.close()
        shutil.rmtree(workdir, ignore_errors=True)
