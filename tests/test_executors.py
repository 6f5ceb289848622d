"""Shell and python executors: real processes, private workdirs, limits, timeouts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.executors import SHELL_DISABLED, ExecRequest, ExecResult, Limits, execute
from swarmd.executors import shell as shell_exec
from swarmd.executors.python import PythonPool

pytestmark = pytest.mark.timeout(60)


def shell(run: list[str], **kw: Any) -> ExecRequest:
    return ExecRequest(task_id="t1", subtask_id="s1", attempt=1, kind="shell", run=tuple(run), **kw)


def py(call: str, *args: Any, **kw: Any) -> ExecRequest:
    return ExecRequest(
        task_id="t1", subtask_id="p1", attempt=1, kind="python", call=call, args=args, **kw
    )


def run_shell(req: ExecRequest, root: Path, **kw: Any) -> ExecResult:
    kw.setdefault("limits", Limits())
    return asyncio.run(shell_exec.run(req, workdir_root=root, **kw))


def alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, deadline_s: float = 5.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


# ---- shell ----------------------------------------------------------------------------


def test_argv_is_not_interpreted_by_a_shell(tmp_path: Path) -> None:
    res = run_shell(shell(["echo", "$HOME", "a;b", "*", "`id`"]), tmp_path)
    assert res.ok and res.exit_code == 0 and not res.app_failed
    assert res.stdout == "$HOME a;b * `id`\n"
    assert res.stderr == "" and res.output is None


def test_env_is_minimal_plus_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMD_TEST_SECRET", "do-not-leak")
    res = run_shell(shell(["env"], env={"FOO": "bar baz"}), tmp_path)
    env = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert env["FOO"] == "bar baz"
    assert "SWARMD_TEST_SECRET" not in env
    assert env["HOME"] == str(tmp_path / "t1" / "s1" / "1")
    assert env["SWARMD_SUBTASK_ID"] == "s1" and env["SWARMD_ATTEMPT"] == "1"
    assert {"PATH", "LANG"} <= set(env)


def test_inputs_are_written_and_outputs_collected(tmp_path: Path) -> None:
    script = "cat data/in.txt > report.txt; mkdir -p out/sub; echo a > out/a; echo b > out/sub/b"
    req = shell(
        ["sh", "-c", script],
        inputs={"data/in.txt": b"hello\n", "./top.txt": b"x"},
        outputs=("report.txt", "out"),
    )
    res = run_shell(req, tmp_path)
    assert res.ok, res.error
    assert res.artifacts == {"report.txt": b"hello\n", "out/a": b"a\n", "out/sub/b": b"b\n"}
    assert list(tmp_path.iterdir()) == []  # the attempt's directory (and parents) are gone


def test_workdir_is_private_and_kept_on_request(tmp_path: Path) -> None:
    res = run_shell(shell(["pwd"]), tmp_path, keep=True)
    cwd = Path(res.stdout.strip())
    assert cwd == tmp_path / "t1" / "s1" / "1"
    assert stat.S_IMODE(cwd.stat().st_mode) == 0o700


def test_non_zero_exit_is_an_application_failure(tmp_path: Path) -> None:
    res = run_shell(shell(["sh", "-c", "echo oops >&2; exit 3"]), tmp_path)
    assert res.exit_code == 3 and res.app_failed
    assert res.error == "exit code 3"
    assert res.stderr == "oops\n"


def test_missing_output_fails_the_subtask(tmp_path: Path) -> None:
    res = run_shell(shell(["true"], outputs=("nope.txt",)), tmp_path)
    assert res.exit_code == 0 and res.app_failed
    assert res.error == "missing outputs: nope.txt"


def test_command_not_found(tmp_path: Path) -> None:
    res = run_shell(shell(["no-such-command-swarmd"]), tmp_path)
    assert res.exit_code == 127 and res.app_failed
    assert "command not found" in (res.error or "")


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    req = shell(["sh", "-c", "sleep 30 & echo $!; wait"], timeout_s=0.5)
    started = time.monotonic()
    res = run_shell(req, tmp_path)
    assert time.monotonic() - started < 4.0
    assert res.app_failed and res.error == "timed out after 0.5s"
    sleeper = int(res.stdout.split()[0])
    assert wait_gone(sleeper), f"sleep {sleeper} survived the timeout"


def test_a_process_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    req = shell(["sh", "-c", "trap '' TERM; echo ready; sleep 30"], timeout_s=0.3)
    started = time.monotonic()
    res = run_shell(req, tmp_path, kill_grace_s=0.3)
    assert time.monotonic() - started < 3.0
    assert res.app_failed and "timed out" in (res.error or "")
    assert res.stdout == "ready\n"


def test_leftover_background_process_is_stopped(tmp_path: Path) -> None:
    # The command exits at once but leaves `sleep` holding its stdout open.
    started = time.monotonic()
    res = run_shell(shell(["sh", "-c", "sleep 30 & echo $!"]), tmp_path)
    assert time.monotonic() - started < 4.0
    assert res.ok and res.exit_code == 0
    assert wait_gone(int(res.stdout.split()[0]))


def test_cancellation_kills_the_process_group_and_propagates(tmp_path: Path) -> None:
    pid_file = tmp_path / "t1" / "s1" / "1" / "pid"

    async def main() -> int:
        task = asyncio.create_task(
            shell_exec.run(
                shell(["sh", "-c", "sleep 30 & echo $! > pid; wait"]),
                workdir_root=tmp_path,
                limits=Limits(),
            )
        )
        deadline = time.monotonic() + 5
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline, "the command did not start"
            await asyncio.sleep(0.02)
        sleeper = int(pid_file.read_text())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        return sleeper

    sleeper = asyncio.run(main())
    assert wait_gone(sleeper)
    assert not pid_file.parent.exists()


def test_output_is_truncated_to_its_tail(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('x' * 200_000 + 'END'); sys.stderr.write('e' * 10)"
    res = run_shell(shell([sys.executable, "-c", code]), tmp_path, limits=Limits(1000))
    assert res.ok and res.truncated
    assert res.stdout.endswith("x" * 997 + "END")
    assert res.stdout.startswith("[swarmd: output truncated, 199003 of 200003 bytes dropped")
    assert len(res.stdout) < 1200
    assert res.stderr == "e" * 10


def test_artifacts_over_the_limit_are_left_out(tmp_path: Path) -> None:
    req = shell(
        ["sh", "-c", "printf 1234 > small; head -c 100 /dev/zero > big"], outputs=("small", "big")
    )
    res = run_shell(req, tmp_path, limits=Limits(max_artifact_bytes=10))
    assert res.app_failed and res.truncated
    assert res.artifacts == {"small": b"1234"}
    assert "over this node's limit of 10 bytes, left out: big" in (res.error or "")


def test_output_symlink_leading_outside_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("node secret")
    req = shell(
        ["sh", "-c", f"ln -s {secret} leak; mkdir d; ln -s {secret} d/leak; echo ok > d/f"],
        outputs=("leak", "d"),
    )
    res = run_shell(req, tmp_path / "work")
    assert res.artifacts == {"d/f": b"ok\n"}  # d/leak is skipped silently
    assert res.app_failed
    assert res.error == (
        "outputs not collected (a link leading outside the working directory, "
        "or not a regular file): leak"
    )


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ({"../evil": b"x"}, (), "'..' is not allowed"),
        ({"a/../../evil": b"x"}, (), "'..' is not allowed"),
        ({"/etc/evil": b"x"}, (), "absolute paths are not allowed"),
        ({"a": b"x", "a/b": b"y"}, (), "is a file and also a directory"),
        ({}, ("../../out",), "'..' is not allowed"),
        ({}, ("/etc/passwd",), "absolute paths are not allowed"),
    ],
)
def test_paths_escaping_the_workdir_are_refused(
    tmp_path: Path, inputs: dict[str, bytes], outputs: tuple[str, ...], message: str
) -> None:
    marker = tmp_path / "ran"
    res = run_shell(shell(["touch", str(marker)], inputs=inputs, outputs=outputs), tmp_path / "w")
    assert res.app_failed and message in (res.error or "")
    assert not (tmp_path / "evil").exists()
    assert not marker.exists()  # refused before anything ran


def test_inputs_over_the_limit_are_refused(tmp_path: Path) -> None:
    req = shell(["true"], inputs={"a": b"x" * 100})
    res = run_shell(req, tmp_path, limits=Limits(max_input_bytes=99))
    assert res.app_failed and "over this node's limit of 99" in (res.error or "")


def test_allow_shell_false_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    res = asyncio.run(
        execute(shell(["touch", str(marker)]), workdir_root=tmp_path / "w", allow_shell=False)
    )
    assert res.error == SHELL_DISABLED
    assert not res.app_failed  # the node refuses: another node may run it
    assert not marker.exists() and not (tmp_path / "w").exists()


def test_progress_lines_while_running(tmp_path: Path) -> None:
    lines: list[str] = []
    res = run_shell(shell(["sleep", "1.2"]), tmp_path, progress=lines.append)
    assert res.ok
    assert lines[0].startswith("started sleep")
    assert any(line.startswith("running 1s") for line in lines[1:])


def test_execute_dispatches_shell(tmp_path: Path) -> None:
    res = asyncio.run(execute(shell(["echo", "hi"]), workdir_root=tmp_path, allow_shell=True))
    assert res.stdout == "hi\n" and res.seconds > 0


# ---- python ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[PythonPool]:
    p = PythonPool(max_workers=2)
    yield p
    p.close()


def run_py(pool: PythonPool, req: ExecRequest, root: Path, **kw: Any) -> ExecResult:
    return asyncio.run(pool.run(req, workdir_root=root, **kw))


def test_python_stdlib_call(pool: PythonPool, tmp_path: Path) -> None:
    res = run_py(pool, py("math:hypot", 3, 4), tmp_path)
    assert res.ok and res.output == "5.0" and res.exit_code is None
    res = run_py(pool, py("json:dumps", [1, 2], kwargs={"separators": [",", ":"]}), tmp_path)
    assert res.output == '"[1,2]"'


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH here")
def test_python_workers_run_under_batch_scheduling(pool: PythonPool, tmp_path: Path) -> None:
    """Pool workers do not preempt the daemon when a call reaches them (SCHED_BATCH);
    ``batch_scheduling=False`` leaves them as they were started."""
    res = run_py(pool, py("os:sched_getscheduler", 0), tmp_path)
    assert res.ok and res.output == str(os.SCHED_BATCH)
    plain = PythonPool(max_workers=1, batch_scheduling=False)
    try:
        res = run_py(plain, py("os:sched_getscheduler", 0), tmp_path)
        assert res.ok and res.output == str(os.sched_getscheduler(0))
    finally:
        plain.close()


def test_python_function_from_a_module_on_pythonpath(pool: PythonPool, tmp_path: Path) -> None:
    moddir = tmp_path / "mods"
    moddir.mkdir()
    (moddir / "swarmd_test_mod.py").write_text(
        "import os\n"
        "def f(a, b=0):\n"
        "    print('side note')\n"
        "    return {'sum': a + b, 'cwd': os.getcwd(), 'env': os.environ.get('X')}\n"
    )
    env = {"PYTHONPATH": str(moddir), "X": "y"}
    req = py("swarmd_test_mod:f", 1, kwargs={"b": 2}, env=env, inputs={"in.txt": b"x"})
    res = run_py(pool, req, tmp_path / "w")
    assert res.ok, res.error
    assert res.stdout == "side note\n"
    import json

    value = json.loads(res.output or "")
    assert value == {"sum": 3, "cwd": str(tmp_path / "w" / "t1" / "p1" / "1"), "env": "y"}
    # Without inputs or outputs a call gets no working directory (none is made).
    res = run_py(pool, py("swarmd_test_mod:f", 1, env=env), tmp_path / "bare")
    assert res.ok, res.error
    assert json.loads(res.output or "")["cwd"] != str(tmp_path / "bare" / "t1" / "p1" / "1")
    assert not (tmp_path / "bare").exists()
    # the env was restored afterwards
    assert run_py(pool, py("tests.pyfuncs:getenv", "X"), tmp_path).output == "null"


def test_python_function_from_the_repo(pool: PythonPool, tmp_path: Path) -> None:
    res = run_py(pool, py("tests.pyfuncs:echo", 1, "a", kwargs={"k": [True, None]}), tmp_path)
    assert res.output == '{"args": [1, "a"], "kwargs": {"k": [true, null]}}'
    assert res.stdout == "echo called\n"
    assert run_py(pool, py("tests.pyfuncs:async_add", 2, 3), tmp_path).output == "5"


def test_python_inputs_and_outputs(pool: PythonPool, tmp_path: Path) -> None:
    req = py(
        "tests.pyfuncs:word_count",
        "in.txt",
        "out/n.txt",
        inputs={"in.txt": b"a b c"},
        outputs=("out",),
    )
    res = run_py(pool, req, tmp_path)
    assert res.ok and res.output == "3"
    assert res.artifacts == {"out/n.txt": b"3\n"}


def test_python_function_may_use_multiprocessing(pool: PythonPool, tmp_path: Path) -> None:
    res = run_py(pool, py("tests.pyfuncs:pool_map", [-1, 2, -3]), tmp_path)
    assert res.ok, res.error
    assert res.output == "[1, 2, 3]"


def test_python_prestart(tmp_path: Path) -> None:
    pool = PythonPool(max_workers=2)
    try:
        pool.prestart()
        assert pool.size == 2 and pool.started == 2
        assert run_py(pool, py("tests.pyfuncs:add", 1), tmp_path).output == "1"
        assert pool.started == 2
    finally:
        pool.close()


def test_python_exception_is_an_application_failure(pool: PythonPool, tmp_path: Path) -> None:
    res = run_py(pool, py("tests.pyfuncs:fail", "boom"), tmp_path)
    assert res.app_failed and res.output is None
    assert "ValueError: boom" in (res.error or "")
    assert "pyfuncs.py" in (res.error or "")
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.rstrip().endswith("ValueError: boom")


@pytest.mark.parametrize(
    ("call", "args", "message"),
    [
        ("tests.pyfuncs:not_json", (), "is not JSON-able"),
        ("tests.pyfuncs:missing", (), "AttributeError"),
        ("no_such_module_swarmd:f", (), "ModuleNotFoundError"),
        ("nocolon", (), "expected 'module:function'"),
        ("tests.pyfuncs:add", ({1, 2},), "not JSON-able"),
    ],
)
def test_python_bad_calls(
    pool: PythonPool, tmp_path: Path, call: str, args: tuple[Any, ...], message: str
) -> None:
    res = run_py(pool, py(call, *args), tmp_path)
    assert res.app_failed and message in (res.error or ""), res.error


def test_python_return_value_over_the_limit(pool: PythonPool, tmp_path: Path) -> None:
    res = run_py(pool, py("tests.pyfuncs:big", 5000), tmp_path, limits=Limits(1000))
    assert res.app_failed and "over this node's limit of 1000" in (res.error or "")
    assert res.truncated and res.stdout.endswith("y" * 500 + "\n")


def test_python_timeout_recycles_the_worker(tmp_path: Path) -> None:
    pool = PythonPool(max_workers=1)
    try:
        first = run_py(pool, py("tests.pyfuncs:pid"), tmp_path)
        old_pid = int(first.output or "0")
        pid_file = tmp_path / "grandchild.pid"
        started = time.monotonic()
        res = run_py(
            pool, py("tests.pyfuncs:spawn_sleeper", str(pid_file), timeout_s=1.0), tmp_path
        )
        assert time.monotonic() - started < 4.0
        assert res.app_failed and res.error == "timed out after 1s"
        assert wait_gone(old_pid), "the hung worker is still running"
        assert wait_gone(int(pid_file.read_text())), "the worker's child is still running"
        again = run_py(pool, py("tests.pyfuncs:add", 1, 2), tmp_path)
        assert again.ok and again.output == "3"
        assert run_py(pool, py("tests.pyfuncs:pid"), tmp_path).output != str(old_pid)
        assert pool.started == 2
    finally:
        pool.close()


def test_python_worker_death_fails_only_that_call(pool: PythonPool, tmp_path: Path) -> None:
    res = run_py(pool, py("tests.pyfuncs:die", 7), tmp_path)
    assert res.app_failed and "worker process died (exit code 7)" in (res.error or "")
    assert run_py(pool, py("tests.pyfuncs:add", 2, 2), tmp_path).output == "4"


def test_python_idle_worker_that_died_is_replaced(tmp_path: Path) -> None:
    pool = PythonPool(max_workers=1)
    try:
        worker_pid = int(run_py(pool, py("tests.pyfuncs:pid"), tmp_path).output or "0")
        os.kill(worker_pid, signal.SIGKILL)
        assert wait_gone(worker_pid)
        res = run_py(pool, py("tests.pyfuncs:add", 1, 1), tmp_path)
        assert res.ok and res.output == "2" and pool.started == 2
    finally:
        pool.close()


def test_a_python_call_cannot_change_the_environment_of_later_calls(tmp_path: Path) -> None:
    """One worker, reused: what a call does to os.environ, the working directory,
    sys.path or the umask is undone before the next call on it, even a failed one."""
    pool = PythonPool(max_workers=1)
    state = ("tests.pyfuncs:environ", "os:getcwd", "tests.pyfuncs:sys_path", "os:getpid")

    def seen() -> list[Any]:
        return [json.loads(run_py(pool, py(call), tmp_path).output or "") for call in state]

    try:
        before = seen()
        assert "PATH" in before[0]
        for req in (
            py("os:environ.__setitem__", "SWARMD_LEAK", "1"),
            py("os:environ.pop", "PATH"),
            py("os:chdir", "/"),
            py("sys:path.insert", 0, str(tmp_path)),
            py("os:umask", 0o777),
            py("tests.pyfuncs:fail", "after a change", env={"SPEC_VAR": "x"}),
        ):
            run_py(pool, req, tmp_path)
        assert seen() == before  # the same worker (pid), as it was
        mask = os.umask(0o022)
        os.umask(mask)
        assert run_py(pool, py("os:umask", 0o022), tmp_path).output == str(mask)
    finally:
        pool.close()


def test_python_cancellation_stops_the_worker(tmp_path: Path) -> None:
    pool = PythonPool(max_workers=1)

    async def main() -> int:
        first = await pool.run(py("tests.pyfuncs:pid"), workdir_root=tmp_path)
        worker_pid = int(first.output or "0")
        task = asyncio.create_task(pool.run(py("tests.pyfuncs:nap", 30), workdir_root=tmp_path))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        return worker_pid

    try:
        assert wait_gone(asyncio.run(main()))
        assert pool.size == 0
    finally:
        pool.close()


def test_python_calls_run_in_parallel(pool: PythonPool, tmp_path: Path) -> None:
    async def main() -> tuple[float, list[ExecResult]]:
        # warm both workers first
        await asyncio.gather(
            *(
                pool.run(py("tests.pyfuncs:nap", 0.2), workdir_root=tmp_path / str(i))
                for i in range(2)
            )
        )
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                pool.run(py("tests.pyfuncs:nap", 0.5), workdir_root=tmp_path / str(i))
                for i in range(2)
            )
        )
        return time.monotonic() - started, list(results)

    elapsed, results = asyncio.run(main())
    assert all(r.output == "0.5" for r in results)
    assert elapsed < 0.95


def test_execute_dispatches_python(pool: PythonPool, tmp_path: Path) -> None:
    req = py("tests.pyfuncs:add", 40, 2)
    res = asyncio.run(execute(req, workdir_root=tmp_path, allow_shell=False, pool=pool))
    assert res.output == "42"
    res = asyncio.run(execute(req, workdir_root=tmp_path, allow_shell=True))
    assert not res.app_failed and "no python pool" in (res.error or "")
