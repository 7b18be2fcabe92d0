"""The slurm profile (issue 7): `make install-profile`, and `snakemake --profile profiles/slurm` against a
real single-node Slurm (tests marked `slurm`).

The `slurm` fixture (one cluster for this module) installs Slurm from Debian's packages when it is
missing, generates its configuration from the templates in tests/slurm/ into a temporary state folder and
starts munged, MariaDB, slurmdbd, slurmctld and slurmd there: one node with 16 (fake) A100s, partitions
`cpu` (default) and `gpu`, accounting on. Everything it started
is stopped afterwards, also on failure. Nothing outside that folder is touched (beyond installing the
packages), so test sessions can run side by side and a machine's own Slurm is left alone. It skips only
where Slurm cannot be had (not root, no apt-get, installation failed); with CI=true those are failures.

Workflows run through the project's profile as users type it; the tests add only what a user's shell adds
(SLURM_ACCOUNT, SLURM_PARTITION, SLURM_GPU_PARTITION) and a 2 s instead of 40 s first status check. Which
jobs Snakemake ran and with which resources comes from Snakemake's log; what was submitted, where and how
comes from Slurm's own accounting records (sacct), matched by Slurm job id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pandas as pd
import pytest
import yaml
from system_packages import SYSTEM_PATH, apt_install, unavailable
from test_workflow_classifier import CLASSIFIER as SMALL_CLASSIFIER
from test_workflow_data import DATA_TARGETS, write_config

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).parent / "slurm"
PROFILE = yaml.safe_load((ROOT / "profiles" / "slurm" / "profile.yaml").read_text())
# The profile's entries for GPU rules (they ask for a GPU model, a GPU count or GRES).
GPU_ENTRIES = {
    rule: r for rule, r in PROFILE["set-resources"].items() if {"gpu", "gpu_model", "gres"} & set(r)
}
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
PROGRAMS = ["slurmctld", "slurmd", "slurmdbd", "sbatch", "srun", "sacct", "sacctmgr", "scancel", "squeue"]
PROGRAMS += ["munged", "mungekey", "mariadbd", "mariadb-install-db", "mariadb", "mariadb-admin"]
# What a user exports for the profile (see profiles/slurm/profile.yaml); the partitions of our test cluster.
USER_ENV = {"SLURM_ACCOUNT": "synthmed", "SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu"}
RUN_TIMEOUT = 1500  # seconds for one Snakemake run through the profile (the whole demo DAG is the longest)
FAKE_GPUS = 16  # on the test node: more than a real node has, so that all probe jobs run at once
# The end products of the whole default DAG the demo run must leave behind (besides the data stage's).
DEMO_OUTPUTS = [
    "results/prompts/train.parquet",
    "results/samples/sd-full/manifest.parquet",
    "results/classifier/comparison.csv",
    "results/fid.json",
]
TRAINING = "results/models/sd-full"  # the demo's fine-tuning run (diffusion.method: full)
# GPU rules of the mask-guided and mask-text generator kinds, which the demo does not train, and of mask
# faithfulness (tests/test_mask_guided.py and the segguided preset's runs plan and run them)
NOT_IN_DEMO = {
    "train_mask_guided",
    "sample_mask_guided",
    "train_segmenter",
    "mask_faithfulness",
    "train_mask_text",
    "sample_mask_text",
    "difference_maps",
}
PROBE_MULTI_GPU = "finetune_sd"  # the probe rule that asks for 4 GPUs (like the PRISM preset's fine-tuning)


def command(*args: str | Path, env: dict[str, str] | None = None, **kwargs) -> str:
    """Run a command to completion; its stdout, or an AssertionError with its output."""
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, check=False, **kwargs
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``ready`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


def free_port() -> int:
    """A TCP port that nothing listens on now (so that test clusters side by side do not collide)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


class LocalSlurm:
    """A single-node Slurm with accounting whose files all live in one state folder."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.conf = state / "etc" / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.ports = {
            name: free_port() for name in ("slurmctld_port", "slurmd_port", "slurmdbd_port", "mysql_port")
        }
        self.mysql = state / "mysql"  # MariaDB's data, socket and log, owned by its user
        # Slurm's tools find this cluster through SLURM_CONF, inside jobs through bin/srun (_write_files)
        self.env = os.environ | {"SLURM_CONF": str(self.conf), "PATH": f"{state / 'bin'}:{SYSTEM_PATH}"}
        self.daemons: list[tuple[str, subprocess.Popen]] = []

    def start(self) -> None:
        self._write_files()
        munge = self.state / "munge"  # our own munged, key and socket
        command("mungekey", "--create", f"--keyfile={munge / 'munge.key'}", env=self.env)
        shutil.chown(munge / "munge.key", "munge", "munge")
        files = [f"--socket={munge / 'munge.socket'}", f"--key-file={munge / 'munge.key'}"]
        files += [f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}"]
        files += [f"--log-file={self.state / 'log' / 'munged.log'}"]
        self._daemon("munged", ["munged", "--foreground", *files], user="munge")
        wait_until((munge / "munge.socket").exists, "munged")
        self._start_mariadb()
        self._daemon("slurmdbd", ["slurmdbd", "-D"])
        wait_until(lambda: self._listening("slurmdbd_port"), "slurmdbd")
        self._daemon("slurmctld", ["slurmctld", "-D", "-f", self.conf])
        self._daemon("slurmd", ["slurmd", "-D", "-f", self.conf])
        # slurmctld registers the cluster in slurmdbd; then the account can be added, as an admin would
        clusters = ["sacctmgr", "--noheader", "--parsable2", "show", "cluster", "format=cluster"]
        wait_until(lambda: self._check(*clusters).stdout.split() == ["synthmed"], "the cluster in slurmdbd")
        account = USER_ENV["SLURM_ACCOUNT"]
        command("sacctmgr", "-i", "add", "account", account, env=self.env)
        command("sacctmgr", "-i", "add", "user", "root", f"account={account}", env=self.env)
        gpu_step = ["srun", "-p", "gpu", "--gpus=a100:1", "-t", "1", "--mem=10", "true"]
        wait_until(lambda: self._check(*gpu_step).returncode == 0, "a 1 x A100 job step", timeout=90)

    def stop(self) -> None:
        """Cancel what is left and stop every daemon this object started, newest first."""
        if self.daemons:
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, check=False)
        for _, process in reversed(self.daemons):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.daemons.clear()

    def records(self, workdir: Path) -> dict[str, dict[str, str]]:
        """Slurm's accounting record of every job (allocation) that ran in ``workdir``, by job id."""
        fields = ["JobIDRaw", "JobName", "WorkDir", "Comment", "Account", "Partition", "State"]
        fields += ["Timelimit", "ReqTRES", "AllocTRES"]
        query = ["--allusers", "--allocations", "--parsable2", "--noheader", "--starttime=now-1days"]
        table = command("sacct", *query, f"--format={','.join(fields)}", env=self.env)
        rows = [dict(zip(fields, line.split("|"), strict=True)) for line in table.splitlines()]
        return {row["JobIDRaw"]: row for row in rows if row["WorkDir"] == str(workdir)}

    def _write_files(self) -> None:
        for folder in ("etc", "bin", "munge", "slurmctld", "slurmd", "run", "log", "dev", "mysql"):
            (self.state / folder).mkdir()
        fields = {"state": str(self.state), "host": self.host, "gpus": FAKE_GPUS, "last_gpu": FAKE_GPUS - 1}
        fields |= self.ports
        for name in ("slurm.conf", "gres.conf", "slurmdbd.conf"):
            text = Template((TEMPLATES / f"{name}.in").read_text()).substitute(fields)
            (self.state / "etc" / name).write_text(text)
        for gpu in range(FAKE_GPUS):  # character devices for gres.conf's File=; nothing opens them
            (self.state / "dev" / f"nvidia{gpu}").symlink_to("/dev/null")
        for path, owner in [("munge", "munge"), ("slurmctld", "slurm"), ("run", "slurm"), ("log", "slurm")]:
            shutil.chown(self.state / path, owner, owner)
        shutil.chown(self.state / "mysql", "mysql", "mysql")
        (self.state / "etc" / "slurmdbd.conf").chmod(0o600)  # slurmdbd insists: it holds a password
        shutil.chown(self.state / "etc" / "slurmdbd.conf", "slurm", "slurm")
        # Inside each job the slurm-jobstep plugin calls `srun` with every SLURM_* variable (SLURM_CONF too)
        # removed. A real cluster keeps its config where srun looks by default (/etc/slurm); this one lives
        # here, so jobs find an srun (through PATH, which sbatch --export=ALL hands on) that names it.
        srun = self.state / "bin" / "srun"
        srun.write_text(
            f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun", path=SYSTEM_PATH)} "$@"\n'
        )
        srun.chmod(0o755)

    def _start_mariadb(self) -> None:
        common = ["--no-defaults", "--user=mysql", f"--datadir={self.mysql / 'data'}"]
        setup = ["--auth-root-authentication-method=socket", "--skip-test-db"]
        command("mariadb-install-db", *common, *setup, env=self.env)
        client = ["--no-defaults", f"--socket={self.mysql / 'sock'}"]
        server = [f"--port={self.ports['mysql_port']}", "--bind-address=127.0.0.1", "--skip-name-resolve"]
        server += [f"--pid-file={self.mysql / 'pid'}", f"--log-error={self.mysql / 'error.log'}"]
        self._daemon("mariadbd", ["mariadbd", *common, client[1], *server, "--innodb-buffer-pool-size=64M"])
        wait_until(lambda: self._check("mariadb-admin", *client, "ping").returncode == 0, "MariaDB")
        user = "'slurm'@'127.0.0.1'"
        sql = f"CREATE USER {user} IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO {user};"
        command("mariadb", *client, "-e", sql, env=self.env)

    def _daemon(self, name: str, args: list[str | Path], user: str | None = None) -> None:
        """Start a daemon in the foreground (so that we hold its process), output to log/<name>.out."""
        with (self.state / "log" / f"{name}.out").open("w") as out:
            argv = [str(a) for a in args]
            process = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, user=user)
        self.daemons.append((name, process))

    def _check(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a readiness check, after making sure that no daemon has died meanwhile."""
        for name, process in self.daemons:
            if process.poll() is not None:
                log = (self.state / "log" / f"{name}.out").read_text()
                raise AssertionError(f"{name} exited with {process.returncode}:\n{log[-3000:]}")
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=30, check=False)

    def _listening(self, port: str) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.ports[port])) == 0


@pytest.fixture(scope="module")
def slurm() -> Iterator[LocalSlurm]:
    if os.geteuid() != 0:
        unavailable("installing and running Slurm's daemons needs root")
    apt_install(PACKAGES, PROGRAMS)
    # not under pytest's tmp_path: its root is private to root, and the daemons run as slurm, munge, mysql
    state = Path(tempfile.mkdtemp(prefix="synthmed-slurm-"))
    state.chmod(0o755)
    cluster = LocalSlurm(state)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class Job:
    """One Snakemake job as Snakemake's log reports it."""

    jobid: str
    rule: str
    local: bool
    inputs: list[str]
    outputs: list[str]
    resources: dict[str, str]
    slurm_ids: list[str] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        """GPUs the job asks for, as the slurm plugin reads it: `gpu`, else 1 with a bare `gpu_model`."""
        if "gpu" in self.resources:
            return int(self.resources["gpu"])
        return int("gpu_model" in self.resources)


@dataclass
class Run:
    """A finished Snakemake run."""

    workdir: Path
    returncode: int
    log: str
    jobs: list[Job]

    def submitted(self) -> list[Job]:
        return [job for job in self.jobs if not job.local]


JOB = re.compile(r"^(local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", re.M)
SUBMISSION = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")
# --show-failed-logs copies a failed job's Slurm log, with the job's own Snakemake log, between two rulers
FAILED_LOG = re.compile(r"^Logfile [^\n]*:\n(=+)\n.*?^\1$", re.M | re.S)


def parse_jobs(log: str) -> list[Job]:
    """The jobs of a Snakemake run from its log, with the Slurm job ids of their submissions (one per try)."""
    log = FAILED_LOG.sub("", log)
    jobs: dict[str, Job] = {}
    for local, rule, body in JOB.findall(log):
        details = dict(re.findall(r"^    (\w+): (.*)$", body, re.M))
        inputs, outputs = (details[key].split(", ") if key in details else [] for key in ("input", "output"))
        resources = dict(re.findall(r"(\w+)=([^,]*)", details.get("resources", "")))
        job = Job(details["jobid"], rule, bool(local), inputs, outputs, resources)
        jobs.setdefault(job.jobid, job)
    for jobid, slurm_id in SUBMISSION.findall(log):
        jobs[jobid].slurm_ids.append(slurm_id)
    return list(jobs.values())


class ProfileRun:
    """`snakemake --profile profiles/slurm ...` from the checkout as a user with USER_ENV exported types it,
    run in the background (runs side by side share the cluster's waiting time)."""

    def __init__(self, cluster: LocalSlurm, workdir: Path, *args: str | Path, **env: str) -> None:
        self.workdir = workdir
        venv = Path(sys.executable).parent
        self.env = cluster.env | USER_ENV | env | {"PATH": f"{venv}{os.pathsep}{cluster.env['PATH']}"}
        self.env["PYTHONUNBUFFERED"] = "1"  # its log so far is complete when a run is killed
        self.argv = [sys.executable, "-m", "snakemake", *map(str, args), "--profile", "profiles/slurm"]
        self.argv += ["--directory", str(workdir), "--slurm-init-seconds-before-status-checks", "2"]
        self.process: subprocess.Popen | None = None

    def start(self, *targets: str) -> ProfileRun:
        output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        self.process = subprocess.Popen([*self.argv, "--", *targets], cwd=ROOT, env=self.env, **output)
        return self

    def interrupt(self) -> Run:
        """Stop Snakemake as a user does, with Ctrl-C (SIGINT: it cancels its Slurm jobs and exits)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        log, _ = self.process.communicate(timeout=120)
        return Run(self.workdir, self.process.returncode, log, parse_jobs(log))

    def finish(self) -> Run:
        assert self.process is not None
        try:
            log, _ = self.process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGINT)  # Snakemake cancels its Slurm jobs on SIGINT, not SIGTERM
            try:
                log, _ = self.process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                log, _ = self.process.communicate()
            pytest.fail(f"snakemake did not finish within {RUN_TIMEOUT} s:\n{log}")
        return Run(self.workdir, self.process.returncode, log, parse_jobs(log))


def demo_workdir(
    tmp_path_factory: pytest.TempPathFactory, name: str, gpus: int | None = None
) -> tuple[Path, list[str]]:
    """A working directory with the small phantom study of tests/test_workflow_data.py (and the classifier
    settings of tests/test_workflow_classifier.py), and the Snakemake arguments that run the workflow there.
    ``gpus`` replaces every `gpus` setting of the config (the GPU count of a rule's jobs)."""
    workdir = tmp_path_factory.mktemp(name)
    config = write_config(workdir, classifier=SMALL_CLASSIFIER)
    if gpus is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(with_gpus(config, gpus)))
    return workdir, ["--snakefile", str(ROOT / "Snakefile"), "--configfile", str(workdir / "config.yaml")]


def with_gpus(section: object, gpus: int) -> object:
    """A config (section) with every `gpus` key set to ``gpus``."""
    if isinstance(section, dict):
        return {key: gpus if key == "gpus" else with_gpus(value, gpus) for key, value in section.items()}
    return section


# Steps of the cancelled fine-tuning (a checkpoint every 10): 40 steps after the first checkpoint for the test
# to cancel the job in (it needs a second), about 80 s at the demo's speed on two busy cores.
RESUMED_STEPS = 50


def cancel_training_and_rerun(
    cluster: LocalSlurm, demo: Path, workdir: Path, started: list[ProfileRun]
) -> tuple[Run, Run]:
    """Preemption of a long GPU step: in ``workdir``, a copy of the finished demo's working directory,
    fine-tuning is made longer (so it runs again), its Slurm job is cancelled with `scancel` once it has
    written a checkpoint, the workflow is stopped with Ctrl-C and run again. Returns (cancelled run, rerun);
    each run is added to ``started`` as soon as it runs.

    Snakemake is stopped by hand because the slurm plugin (2.8.0) does not see the job end: sacct reports
    the state as "CANCELLED by <uid>", which it does not match as a failure, so it would wait forever."""
    shutil.copytree(demo, workdir, symlinks=True)
    config_file = workdir / "config.yaml"
    args = ["--snakefile", str(ROOT / "Snakefile"), "--configfile", str(config_file)]
    config = yaml.safe_load(config_file.read_text())
    config["diffusion"]["train"] |= {"max_steps": RESUMED_STEPS, "checkpoint_steps": 10}
    config_file.write_text(yaml.safe_dump(config))
    target = f"{TRAINING}/train_report.json"
    first = ProfileRun(cluster, workdir, *args).start(target)
    started.append(first)
    checkpoint = workdir / TRAINING / "checkpoints"
    try:
        wait_until(lambda: any(checkpoint.glob("checkpoint-*.pt")), "a checkpoint", timeout=RUN_TIMEOUT)
    except AssertionError:
        pytest.fail(f"no checkpoint written:\n{first.interrupt().log}")
    # the only job of this run (Slurm records a job's comment, its rule, only once the job has ended)
    running = [job_id for job_id, record in cluster.records(workdir).items() if record["State"] == "RUNNING"]
    assert len(running) == 1, cluster.records(workdir)
    command("scancel", running[0], env=cluster.env)
    wait_until(
        lambda: cluster.records(workdir)[running[0]]["State"].startswith("CANCELLED"), "the cancellation"
    )
    cancelled = first.interrupt()
    rerun = ProfileRun(cluster, workdir, *args).start(target)
    started.append(rerun)
    return cancelled, rerun.finish()


# Fine-tuning at the demo's speed: well beyond the first job's time limit (2.5 times its minute), and no more:
# the resubmitted job trains every step after the cut (a floor of 600 steps made that 900-1,200 s in CI).
TIME_LIMITED_TRAINING_S = 150
FIRST_LIMIT, LATER_LIMIT = 1, 30  # minutes: Slurm's shortest time limit, then enough on a busy machine


def start_time_limited_training(cluster: LocalSlurm, demo: Path, workdir: Path) -> ProfileRun:
    """Long training on a short time limit: in ``workdir``, a copy of the finished demo's working directory,
    fine-tuning is made about TIME_LIMITED_TRAINING_S long (at the speed the demo's fine-tuning reached, so on
    any machine) without periodic checkpoints, and its first job gets Slurm's shortest time limit, one minute
    (later attempts get LATER_LIMIT: the runtime is a resource expression of Snakemake's `attempt`). The job
    that times out must save a checkpoint on Slurm's SIGTERM, so that the retry resumes from it.

    A `--set-resources` option replaces the profile's set-resources as a whole: finetune_sd's entry is
    given in full, as the profile has it, but for the runtime."""
    shutil.copytree(demo, workdir, symlinks=True)
    config_file = workdir / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    done = json.loads((demo / TRAINING / "train_report.json").read_text())
    per_step = done["train_seconds_this_job"] / (done["steps"] - done["resumed_from_step"])
    steps = round(TIME_LIMITED_TRAINING_S / per_step)
    config["diffusion"]["train"] |= {"max_steps": steps, "checkpoint_steps": 10 * steps}
    config_file.write_text(yaml.safe_dump(config))
    entry = PROFILE["set-resources"]["finetune_sd"]
    resources = [
        f"finetune_sd:{key}={Template(value).substitute(USER_ENV) if isinstance(value, str) else value!r}"
        for key, value in entry.items()
        if key != "runtime"
    ]
    resources.append(f"finetune_sd:runtime={FIRST_LIMIT} if attempt == 1 else {LATER_LIMIT}")
    args = ["--snakefile", ROOT / "Snakefile", "--configfile", config_file, "--set-resources", *resources]
    return ProfileRun(cluster, workdir, *args).start(f"{TRAINING}/train_report.json")


@pytest.fixture(scope="module")
def runs(slurm: LocalSlurm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run | tuple[Run, Run]]:
    """The runs through the profile.

    demo: the whole default DAG on the small phantom study, every `gpus` setting of the config at 1, so
    that every GPU rule asks Slurm for an A100 (the node's A100s are fake: the jobs compute on the CPU);
    probe (side by side with the demo): tests/slurm/Snakefile, the profile's GPU entries and a rule that
    fails `retries` times; then, side by side, on copies of the demo's working directory, resume:
    cancel_training_and_rerun, and timeout: start_time_limited_training.
    """
    started: list[ProfileRun] = []
    try:
        workdir, args = demo_workdir(tmp_path_factory, "slurm-demo", gpus=1)
        demo = ProfileRun(slurm, workdir, *args).start()
        started.append(demo)
        config = ["--config", f"profile={ROOT / 'profiles' / 'slurm' / 'profile.yaml'}"]
        config += [f"fail_times={PROFILE['retries']}", f"gpus={{{PROBE_MULTI_GPU}: 4}}"]
        probe_dir = tmp_path_factory.mktemp("slurm-probe")
        probe = ProfileRun(slurm, probe_dir, "--snakefile", TEMPLATES / "Snakefile", *config).start()
        started.append(probe)
        finished = {"demo": demo.finish(), "probe": probe.finish()}
        if finished["demo"].returncode == 0:
            timed = start_time_limited_training(
                slurm, workdir, tmp_path_factory.mktemp("slurm-timeout") / "work"
            )
            started.append(timed)
            resume = tmp_path_factory.mktemp("slurm-resume") / "work"
            finished["resume"] = cancel_training_and_rerun(slurm, workdir, resume, started)
            finished["timeout"] = timed.finish()
        return finished
    finally:  # no Snakemake outlives this fixture
        for process in (run.process for run in started):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def tres(text: str) -> dict[str, str]:
    """'cpu=8,gres/gpu:a100=1,mem=32000M' -> {'cpu': '8', 'gres/gpu:a100': '1', 'mem': '32000M'}."""
    return dict(item.split("=", 1) for item in text.split(",") if item)


def megabytes(size: str) -> int:
    """Slurm's memory notation ('32000M', '62.50G') in MB (Slurm's M is a MiB, as Snakemake's mem_mb is)."""
    return round(float(size[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[size[-1]])


def minutes(limit: str) -> int:
    """Slurm's time limit notation ('[D-]HH:MM:SS') in minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, _ = map(int, clock.split(":"))
    return int(days or 0) * 24 * 60 + hours * 60 + mins


def assert_submitted_by_this_run(run: Run, records: dict[str, dict[str, str]]) -> None:
    """Slurm holds exactly the submissions Snakemake reported, all from one run, each of the right rule."""
    assert run.submitted(), run.log
    assert sorted(records) == sorted(i for job in run.submitted() for i in job.slurm_ids), run.log
    assert len({record["JobName"] for record in records.values()}) == 1  # the run's id names its jobs
    for job in run.submitted():
        for slurm_id in job.slurm_ids:
            comment = records[slurm_id]["Comment"]
            assert comment == f"rule_{job.rule}" or comment.startswith(f"rule_{job.rule}_wildcards_")
            assert records[slurm_id]["Account"] == USER_ENV["SLURM_ACCOUNT"]


def assert_gpu_requests(run: Run, records: dict[str, dict[str, str]], gpu_partition: str) -> None:
    """A job that asks for GPUs asked Slurm for that many A100s on the GPU partition; any other job asked
    for no GPU at all."""
    for job in run.submitted():
        record = records[job.slurm_ids[0]]
        requested = tres(record["ReqTRES"])
        if job.gpus:
            assert record["Partition"] == gpu_partition, f"{job.rule}: {record}"
            assert requested.get("gres/gpu:a100") == str(job.gpus), f"{job.rule}: {record}"
        else:
            gpus = [key for key in requested | tres(record["AllocTRES"]) if key.startswith("gres/gpu")]
            assert not gpus, f"{job.rule}: {record}"


@pytest.mark.slurm
def test_whole_demo_workflow_completes_on_slurm(runs: dict) -> None:
    demo = runs["demo"]
    assert demo.returncode == 0, demo.log
    dataset = pd.read_parquet(demo.workdir / DATA_TARGETS[0])
    assert len(dataset) > 0 and set(dataset["split"]) == {"train", "val", "test"}
    for output in [*DATA_TARGETS, *DEMO_OUTPUTS]:
        assert (demo.workdir / output).is_file(), output


@pytest.mark.slurm
def test_every_job_went_through_slurm_once_and_completed(runs: dict, slurm: LocalSlurm) -> None:
    """Every job but local ones was submitted once and Slurm records it as completed; jobs asking for no GPU
    ran on the CPU partition."""
    demo = runs["demo"]
    records = slurm.records(demo.workdir)
    assert_submitted_by_this_run(demo, records)
    for job in demo.submitted():
        assert len(job.slurm_ids) == 1
        assert records[job.slurm_ids[0]]["State"] == "COMPLETED"
        if not job.gpus:
            assert records[job.slurm_ids[0]]["Partition"] == USER_ENV["SLURM_PARTITION"]


@pytest.mark.slurm
def test_every_gpu_rule_of_the_workflow_asks_for_a100s(runs: dict, slurm: LocalSlurm) -> None:
    """The demo's jobs that ask for GPUs asked Slurm for that many A100s on the GPU partition, every other
    job for no GPU; the rules asking for GPUs are exactly the profile's GPU entries but those of rules the
    demo does not run (a GPU rule missing from set-resources would ask the CPU partition for any GPU)."""
    demo = runs["demo"]
    assert_gpu_requests(demo, slurm.records(demo.workdir), USER_ENV["SLURM_GPU_PARTITION"])
    gpu_rules = {job.rule for job in demo.submitted() if job.gpus}
    assert gpu_rules == set(GPU_ENTRIES) - NOT_IN_DEMO
    assert set(GPU_ENTRIES) >= NOT_IN_DEMO


@pytest.mark.slurm
def test_cancelled_training_resumes_from_its_checkpoint(runs: dict, slurm: LocalSlurm) -> None:
    """After `scancel` of the running fine-tuning job and Ctrl-C, the next run of the workflow continues
    training from the newest checkpoint instead of step 0, and finishes."""
    cancelled, rerun = runs["resume"]
    assert cancelled.returncode != 0
    assert rerun.returncode == 0, rerun.log
    assert [job.rule for job in rerun.submitted()] == ["finetune_sd"]
    report = json.loads((rerun.workdir / TRAINING / "train_report.json").read_text())
    assert report["steps"] == RESUMED_STEPS
    assert 10 <= report["resumed_from_step"] < RESUMED_STEPS
    assert not list((rerun.workdir / TRAINING / "checkpoints").glob("checkpoint-*.pt"))


@pytest.mark.slurm
def test_training_cut_by_the_time_limit_is_resubmitted_and_resumes(runs: dict, slurm: LocalSlurm) -> None:
    """Fine-tuning longer than its job's time limit: Slurm ends the first job (TIMEOUT), whose training saved
    a checkpoint on Slurm's SIGTERM (no periodic one was due); Snakemake submits the job again (the profile's
    preemptible-retries), the new attempt resumes from that checkpoint and finishes training, and its log
    holds the first attempt's too."""
    run = runs["timeout"]
    assert run.returncode == 0, run.log
    (job,) = run.submitted()
    records = slurm.records(run.workdir)
    assert_submitted_by_this_run(run, records)
    states = [records[slurm_id]["State"] for slurm_id in job.slurm_ids]
    assert states == ["TIMEOUT", "COMPLETED"], run.log
    limits = [minutes(records[slurm_id]["Timelimit"]) for slurm_id in job.slurm_ids]
    assert limits == [FIRST_LIMIT, LATER_LIMIT]  # the runtime is evaluated again for each attempt
    assert "SLURM status is: 'TIMEOUT'" in run.log and "Trying to restart job" in run.log
    report = json.loads((run.workdir / TRAINING / "train_report.json").read_text())
    steps = yaml.safe_load((run.workdir / "config.yaml").read_text())["diffusion"]["train"]["max_steps"]
    assert 0 < report["resumed_from_step"] < report["steps"] == steps
    stop = {"step": report["resumed_from_step"], "signal": "SIGTERM", "slurm_job_id": job.slurm_ids[0]}
    assert report["stopped_by_signal"] == [stop]
    log = (run.workdir / "logs/diffusion/finetune_sd/sd-full.log").read_text()
    assert "earlier attempts" in log and f"SIGTERM received: stopped after step {stop['step']}" in log
    assert not list((run.workdir / TRAINING / "checkpoints").iterdir())


@pytest.mark.slurm
def test_profile_gpu_entries_get_a100s(runs: dict, slurm: LocalSlurm) -> None:
    """Each GPU entry of the profile's set-resources, applied to a rule declaring `gpu=N` (4 for one of
    them), reaches Slurm as written: GPU partition, N A100s, N x `cpus_per_gpu` CPUs, N x `cpus_per_gpu` x
    `mem_mb_per_cpu` memory, `runtime`; and the job sees the N GPUs Slurm gave it."""
    probe = runs["probe"]
    assert probe.returncode == 0, probe.log
    records = slurm.records(probe.workdir)
    assert_submitted_by_this_run(probe, records)
    gpu_jobs = [job for job in probe.submitted() if job.rule in GPU_ENTRIES]
    assert sorted(job.rule for job in gpu_jobs) == sorted(GPU_ENTRIES)
    assert_gpu_requests(probe, records, USER_ENV["SLURM_GPU_PARTITION"])
    for job in gpu_jobs:
        entry, record = GPU_ENTRIES[job.rule], records[job.slurm_ids[0]]
        allocated = tres(record["AllocTRES"])
        assert job.gpus == (4 if job.rule == PROBE_MULTI_GPU else 1)
        assert allocated.get("gres/gpu:a100") == str(job.gpus), f"{job.rule}: {record}"
        assert int(allocated["cpu"]) == job.gpus * entry["cpus_per_gpu"], f"{job.rule}: {record}"
        memory = job.gpus * entry["cpus_per_gpu"] * entry["mem_mb_per_cpu"]
        assert megabytes(allocated["mem"]) == memory, f"{job.rule}: {record}"
        assert minutes(record["Timelimit"]) == entry["runtime"], f"{job.rule}: {record}"
        seen = (probe.workdir / "gpu" / f"{job.rule}.txt").read_text().strip()
        assert len(seen.removeprefix("CUDA_VISIBLE_DEVICES=").split(",")) == job.gpus, seen


@pytest.mark.slurm
def test_failed_job_is_resubmitted_as_often_as_the_profile_says(runs: dict, slurm: LocalSlurm) -> None:
    """`flaky` fails on its first `retries` attempts: Slurm saw retries + 1 submissions of it, the last one
    completed, and the workflow succeeded."""
    probe, retries = runs["probe"], PROFILE["retries"]
    assert retries >= 1
    records = slurm.records(probe.workdir)
    (flaky,) = [job for job in probe.submitted() if job.rule == "flaky"]
    states = [records[slurm_id]["State"] for slurm_id in flaky.slurm_ids]
    assert states == ["FAILED"] * retries + ["COMPLETED"], probe.log
    assert probe.returncode == 0 and (probe.workdir / "flaky.done").is_file()


def install_profile(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    make = ["make", "--no-print-directory", "-s", "-C", str(ROOT), "install-profile"]
    return subprocess.run(make, env=env, capture_output=True, text=True, check=False)


def test_install_profile_makes_snakemake_find_it_by_name(tmp_path: Path) -> None:
    """`make install-profile` links profiles/slurm where Snakemake looks for `--profile slurm`; run from
    anywhere, Snakemake then takes the account and partitions from the environment and sends every job
    that asks for GPUs to the GPU partition as A100s (a check of the profile that needs no Slurm)."""
    env = os.environ | {"XDG_CONFIG_HOME": str(tmp_path / "config")} | USER_ENV
    done = install_profile(env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "config" / "snakemake" / "slurm").resolve() == ROOT / "profiles" / "slurm"
    workdir = tmp_path / "work"
    (workdir / "config.yaml").write_text(yaml.safe_dump(with_gpus(write_config(workdir), 1)))
    argv = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--snakefile", str(ROOT / "Snakefile")]
    argv += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "--dry-run"]
    dry = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "Using profile slurm for setting default command line arguments" in dry.stdout + dry.stderr
    jobs = parse_jobs(dry.stdout)
    assert any(job.gpus for job in jobs)
    for job in jobs:
        assert job.resources["slurm_account"] == USER_ENV["SLURM_ACCOUNT"]
        if job.gpus:
            assert job.resources["slurm_partition"] == USER_ENV["SLURM_GPU_PARTITION"], job.rule
            assert job.resources["gpu_model"] == "a100", job.rule
        else:
            assert job.resources["slurm_partition"] == USER_ENV["SLURM_PARTITION"], job.rule


def test_install_profile_never_replaces_a_users_profile(tmp_path: Path) -> None:
    """Without XDG_CONFIG_HOME it installs into ~/.config; a second run is a no-op; a profile of the user's
    own under that name stays as it is, and the target fails saying so."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(tmp_path)}
    link = tmp_path / ".config" / "snakemake" / "slurm"
    assert install_profile(env).returncode == 0
    again = install_profile(env)
    assert again.returncode == 0 and "already links" in again.stdout
    assert link.resolve() == ROOT / "profiles" / "slurm"
    link.unlink()
    link.mkdir()
    (link / "profile.yaml").write_text("executor: slurm\n")
    refused = install_profile(env)
    assert refused.returncode != 0 and "leaving it alone" in refused.stderr
    assert (link / "profile.yaml").read_text() == "executor: slurm\n" and not link.is_symlink()
