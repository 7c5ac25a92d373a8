"""One writer per directory: a second vqgen on a directory in use is refused in one line, the holder's
work is untouched by the attempt, and a killed holder leaves nothing that blocks a resume.

The lock is observed from outside, as another process sees it: the test reads the JSON its holder
writes and probes it with flock from a separate interpreter, never from the test process itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqgen.engine.checkpoint import saved_step
from vqgen.engine.locks import LOCK_FILE, directory_lock
from vqgen.engine.metrics_log import read_metrics

from helpers import REPO, TINY_PRIOR, TINY_RUN, TINY_VQVAE, structured_latents

# TINY_RUN with more steps, so that a run lasts long enough to be killed while it trains.
LONGER = [*TINY_RUN, "--vqvae-steps", "40", "--prior-steps", "40"]
PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
"""


def start(*args: str | Path) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vqgen", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def holder_pid(lock: Path) -> int | None:
    """The pid the lock file names, None while it is absent or being written."""
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} never happened (exit {process.poll()}): {process.communicate()[1][-2000:]}")


def probe(lock: Path) -> str:
    """Whether another process can take the lock now: 'free' or 'held'."""
    return subprocess.run([sys.executable, "-c", PROBE, str(lock)], capture_output=True, text=True,
                          check=True).stdout.strip()


def assert_refused(code: int, err: str, command: str, directory: Path, holder: int) -> None:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1, err
    assert lines[0].startswith(f"vqgen {command}: error: {directory} is in use"), err
    assert f"pid {holder} " in lines[0] and "Traceback" not in err, err


def run_args(folder: Path, out: Path) -> list[str | Path]:
    return ["run", "--data", folder, "--out", out, *LONGER]


@pytest.fixture(scope="module")
def lone_report(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The report of the run command alone in its directory, nothing else touching it."""
    out = tmp_path_factory.mktemp("lone") / "run"
    code, _, err = finish(start(*run_args(folder, out)))
    assert code == 0, err
    return json.loads((out / "report.json").read_text())


def assert_same_figures(report: dict, reference: dict) -> None:
    for stage in ("vqvae", "prior"):
        assert report[stage]["eval"] == pytest.approx(reference[stage]["eval"], rel=1e-6), stage


def test_second_run_on_a_directory_in_use_is_refused_and_the_first_is_untouched(
        folder: Path, tmp_path: Path, lone_report: dict) -> None:
    run_dir = tmp_path / "run"
    first = start(*run_args(folder, run_dir))
    try:
        wait_until(lambda: holder_pid(run_dir / LOCK_FILE) == first.pid, first, "the first run taking the lock")
        first.send_signal(signal.SIGSTOP)  # frozen while holding the lock, so the second start meets it
        started = time.perf_counter()
        code, out, err = finish(start(*run_args(folder, run_dir)), timeout=60)
        seconds = time.perf_counter() - started
        assert holder_pid(run_dir / LOCK_FILE) == first.pid  # the refused process did not overwrite the holder
    except BaseException:
        first.kill()
        raise
    finally:
        first.send_signal(signal.SIGCONT)
    assert_refused(code, err, "run", run_dir, first.pid)
    assert out == "" and seconds < 30  # fails at once, not after waiting for the lock
    code, _, err = finish(first)
    assert code == 0, err
    assert_same_figures(json.loads((run_dir / "report.json").read_text()), lone_report)


def test_run_killed_mid_training_leaves_no_lock_behind(folder: Path, tmp_path: Path, lone_report: dict) -> None:
    run_dir = tmp_path / "run"
    killed = start(*run_args(folder, run_dir))
    wait_until(lambda: any(r.get("split") == "train" and r["step"] >= 10
                           for r in read_metrics(run_dir / "vqvae" / "metrics.jsonl")), killed, "VQ-VAE step 10")
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    assert 0 < saved_step(run_dir / "vqvae") < 40  # killed in the middle of training
    assert holder_pid(run_dir / LOCK_FILE) == killed.pid  # the file stays, naming the dead holder
    assert probe(run_dir / LOCK_FILE) == "free"
    code, _, err = finish(start(*run_args(folder, run_dir)))
    assert code == 0, err
    assert_same_figures(json.loads((run_dir / "report.json").read_text()), lone_report)


def test_lock_is_reentrant_in_a_process_and_released_on_the_outer_exit(tmp_path: Path) -> None:
    lock = tmp_path / "d" / LOCK_FILE
    with directory_lock(tmp_path / "d"):
        assert holder_pid(lock) == os.getpid()
        with directory_lock(tmp_path / "d"):  # the same process again: no deadlock, no error
            assert probe(lock) == "held"
        assert probe(lock) == "held"  # leaving the inner block keeps the outer hold
    assert probe(lock) == "free"
    with directory_lock(tmp_path / "d"):  # and it can be taken again
        assert probe(lock) == "held"
    assert probe(lock) == "free"


def test_training_into_an_out_directory_in_use_is_refused(folder: Path, tmp_path: Path) -> None:
    latents = structured_latents(tmp_path / "latents", 16, 0)
    vqvae_out, prior_out = tmp_path / "vqvae", tmp_path / "prior"
    with directory_lock(vqvae_out), directory_lock(prior_out):
        processes = {"train-vqvae": (start("train-vqvae", "--data", folder, "--out", vqvae_out, *TINY_VQVAE), vqvae_out),
                     "train-prior": (start("train-prior", "--latents", latents, "--eval-latents", latents,
                                           "--out", prior_out, *TINY_PRIOR), prior_out)}
        for command, (process, out) in processes.items():
            code, _, err = finish(process)
            assert_refused(code, err, command, out, os.getpid())
            written = {"config.json", "train_config.json", "metrics.jsonl", "state.pt", "model.safetensors"}
            assert not written & {p.name for p in out.iterdir()}, command  # the holder's files are left alone
