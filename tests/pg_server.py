"""A real PostgreSQL server for tests (``pg_server`` fixture): ``initdb`` and ``pg_ctl`` of
Debian's versioned PostgreSQL (``/usr/lib/postgresql/<version>/bin``, the ``postgresql``
package) in a temporary directory, listening on 127.0.0.1 on a free port with its unix
socket in that directory, trust authentication for the local user ``postgres``.

initdb refuses to run as root: as root, the commands run as the ``postgres`` system user
(``runuser -u postgres --``) and the directory is given to that user.

Without the server binaries the fixture fails when ``CI=true`` (CI must run this test; the
CI script installs the package) and skips otherwise (a developer machine without them).

Yields the database URL ``postgresql://postgres@127.0.0.1:PORT/tune`` of a fresh database.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile

import pytest


def find_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pg_server():
    bindir = find_bin()
    if bindir is None:
        msg = "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): install the 'postgresql' package"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    tmp = tempfile.mkdtemp(prefix="mmbot-pg-")
    data, log = os.path.join(tmp, "data"), os.path.join(tmp, "server.log")
    if as_root:
        shutil.chown(tmp, "postgres", "postgres")
    port = _free_port()

    def run(*cmd, timeout=180):
        r = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout, cwd=tmp)
        if r.returncode != 0:
            extra = open(log).read()[-2000:] if os.path.exists(log) else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()} {extra}")
        return r

    started = False
    try:
        run(f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(f"{bindir}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "120",
            "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        started = True
        run(f"{bindir}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", "CREATE DATABASE tune")
        yield f"postgresql://postgres@127.0.0.1:{port}/tune"
    finally:
        if started:
            subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "120", "stop"],
                           capture_output=True, timeout=180)
        shutil.rmtree(tmp, ignore_errors=True)
