"""A private PostgreSQL cluster for the tests: initdb into a temp folder, a free port.

``TORCHSLIM_TEST_PG_URL`` (a ``postgresql://`` URL) points the tests at a running
server instead. Otherwise :func:`start_cluster` runs the server binaries it finds (on
PATH or in ``/usr/lib/postgresql/*/bin``) as a non-root user (initdb refuses root: the
Debian package's ``postgres`` user), on 127.0.0.1 with password authentication, and
:func:`stop_cluster` stops it and deletes its folder. Under ``CI`` a missing server
fails instead of skipping (``.ci/run`` installs Debian's ``postgresql``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "torchslim"
PASSWORD = "slim-test-pw"


@dataclass
class Cluster:
    """A running test server: its URL and, when started here, its folder and binaries."""

    url: str
    port: int
    folder: Path | None = None
    bindir: Path | None = None
    run_as: str | None = None


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [Path(found).parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list[str], run_as: str | None, **kwargs) -> subprocess.CompletedProcess:
    extra = {}
    if run_as is not None:
        import pwd

        entry = pwd.getpwnam(run_as)
        extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    # the server user may not read the caller's working directory (e.g. /root in CI)
    kwargs.setdefault("cwd", tempfile.gettempdir())
    return subprocess.run(
        args, check=True, capture_output=True, text=True, timeout=60, **extra, **kwargs
    )


def start_cluster() -> Cluster | str:
    """A running server, or the reason none could be started."""
    url = os.environ.get("TORCHSLIM_TEST_PG_URL")
    if url:
        return Cluster(url=url, port=0)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'torchslim[postgres]')"
    bindir = _bindir()
    if bindir is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    run_as = None
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run initdb as"
        run_as = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="torchslim-pg-"))
    if run_as is not None:
        shutil.chown(folder, user=run_as, group=run_as)
    (folder / "pw").write_text(PASSWORD + "\n")
    if run_as is not None:
        shutil.chown(folder / "pw", user=run_as, group=run_as)
    data = folder / "data"
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                f"--pwfile={folder / 'pw'}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ],
            run_as,
            env=env,
        )
        options = f"-h 127.0.0.1 -p {port} -k {folder} -F -c max_connections=200"
        _run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options]
            + ["-w", "-t", "30", "start"],
            run_as,
            env=env,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        log = folder / "log"
        detail = log.read_text()[-500:] if log.exists() else getattr(exc, "stderr", "") or exc
        shutil.rmtree(folder, ignore_errors=True)
        return f"could not start PostgreSQL from {bindir}: {detail}"
    return Cluster(
        url=f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres",
        port=port,
        folder=folder,
        bindir=bindir,
        run_as=run_as,
    )


def stop_cluster(cluster: Cluster) -> None:
    """Stop a cluster started by :func:`start_cluster` and delete its folder."""
    if cluster.folder is None:
        return
    try:
        _run(
            [str(cluster.bindir / "pg_ctl"), "-D", str(cluster.folder / "data")]
            + ["-m", "immediate", "-w", "stop"],
            cluster.run_as,
        )
    finally:
        shutil.rmtree(cluster.folder, ignore_errors=True)
