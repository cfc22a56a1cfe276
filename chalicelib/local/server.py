"""The embedded S3-compatible server (moto's, in a thread) on loopback."""

from __future__ import annotations


class EmbeddedServer:
    """moto's HTTP server on ``127.0.0.1``; port 0 picks a free one."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.url = ""

    def start(self) -> str:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self._server.stop()
