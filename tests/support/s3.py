"""A real S3 API on loopback: moto's server (werkzeug serving the S3 REST protocol over HTTP).

No S3 service runs on these machines, and nothing outside them can be reached. moto's server speaks the
same HTTP protocol as S3, so boto3 in the packager goes through its real code path (endpoint override,
signing, pagination, error codes); only the storage behind it is moto's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster.podnet import GATEWAY_IP, PodNetwork

ACCESS_KEY = "canaria-test"
SECRET_KEY = "canaria-test-secret"  # moto accepts any credentials
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """The packager's environment, as the operator sets it from spec.model.s3 and a Secret."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def upload_directory(self, bucket: str, prefix: str, directory: Path) -> None:
        client = self.client()
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")


@contextmanager
def running_s3(network: PodNetwork | None = None) -> Iterator[S3Server]:
    """moto's S3 on loopback, or (given the pod network) on its gateway address, where pods reach it. Only
    clients inside the namespace can reach the latter: use S3Server.client() within network.enter()."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as error:  # a missing dev dependency must fail the test, not skip it
        raise RuntimeError("the S3 tests need moto[server] (pip install 'moto[server]')") from error
    server = ThreadedMotoServer(ip_address="127.0.0.1" if network is None else GATEWAY_IP, port=0, verbose=False)
    if network is None:
        server.start()
    else:
        with network.enter():  # the server thread starts, and binds, inside the namespace
            server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(endpoint=f"http://{host}:{port}")
    finally:
        server.stop()
