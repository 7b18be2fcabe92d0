"""Debian packages that system tests need (Slurm for test_slurm.py, chromium for test_report.py).

Installed with apt-get when their programs are missing. Where that cannot be done (not root, no apt-get,
installation failed) the test is skipped with the reason; with CI=true, where they must run, it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

SYSTEM_PATH = f"{os.environ.get('PATH', '')}:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip where a system package cannot be had; in CI, where the test must run, fail instead."""
    if IN_CI:
        pytest.fail(f"CI=true but this test cannot run: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def daemons_not_started_by_apt() -> Iterator[None]:
    """Debian's policy-rc.d hook: the packages' own services stay off while installing."""
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        yield
    finally:
        if created:
            policy.unlink(missing_ok=True)


def apt_install(packages: Sequence[str], programs: Sequence[str]) -> None:
    """Install ``packages`` from the distribution unless all ``programs`` are already on the PATH."""
    missing = [p for p in programs if shutil.which(p, path=SYSTEM_PATH) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        unavailable(f"{', '.join(missing)} missing, and installing {', '.join(packages)} needs root")
    if shutil.which("apt-get", path=SYSTEM_PATH) is None:
        unavailable(f"{', '.join(missing)} missing and there is no apt-get")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive", "PATH": SYSTEM_PATH}
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]
    with daemons_not_started_by_apt():
        for step in (["update"], ["install", "-y", "--no-install-recommends", *packages]):
            done = subprocess.run([*apt, *step], capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                unavailable(f"apt-get {step[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
