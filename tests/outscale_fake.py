"""A small stateful OUTSCALE API: CreateImage, ReadImages, CreateTags, on loopback.

It keeps images in memory, refuses a second image of one name (ResourceConflict, as the
API's ``ImageName`` "unique name" rule asks), starts each import ``pending`` and lets the
test settle it (``available``, or ``failed`` with a StateComment). A test can make the
next calls of an action throttled (429 code 24/25, 503 code 6) or make a CreateImage run
and then lose its answer (the connection closes), as a crash or a network cut would.

What it cannot know of the real service is written down: ``FileLocation`` is kept as the
manifest URL without its query string (the API only says "the location from which the OMI
files were created"), and a taken name is answered HTTP 409 ResourceConflict code 9015
(``duplicate-name`` in the SDK's error table).
"""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OutscaleFake:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reset(self) -> None:
        with self.lock:
            self.images: dict[str, dict[str, Any]] = {}
            self.calls: list[tuple[str, dict[str, Any]]] = []
            self.faults: dict[str, list[tuple[int, str] | str]] = {}
            self.ids = itertools.count(0x1000)

    def start(self) -> OutscaleFake:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what tests do -----------------------------------------------------------

    def fail_next(self, action: str, *faults: tuple[int, str] | str) -> None:
        """``(429, "24")``: answer that; ``"lose answer"``: run the call, then hang up."""
        with self.lock:
            self.faults.setdefault(action, []).extend(faults)

    def settle(self, image_id: str, state: str, comment: str = "") -> None:
        with self.lock:
            image = self.images[image_id]
            image["State"] = state
            image["StateComment"] = {"StateCode": state, "StateMessage": comment} if comment else {}

    def add_image(self, name: str, file_location: str = "", tags: dict | None = None) -> str:
        """An image someone else made (or an earlier import), straight into the account."""
        with self.lock:
            return self._create(name, file_location, tags or {})

    def count(self, action: str) -> int:
        with self.lock:
            return sum(1 for called, _ in self.calls if called == action)

    # --- the API -------------------------------------------------------------------

    def _create(self, name: str, file_location: str, tags: dict[str, str]) -> str:
        image_id = f"ami-{next(self.ids):08x}"
        self.images[image_id] = {
            "ImageId": image_id,
            "ImageName": name,
            "State": "pending",
            "StateComment": {},
            "FileLocation": file_location.split("?", 1)[0],
            "CreationDate": datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "AccountId": "123456789012",
            "ImageType": "machine",
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        }
        return image_id

    def answer(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """Status and body; a None body means: hang up without answering."""
        with self.lock:
            self.calls.append((action, body))
            fault = self.faults.get(action, []).pop(0) if self.faults.get(action) else None
            if isinstance(fault, tuple):
                status, code = fault
                kind = "TooManyRequests" if status == 429 else "ServiceUnavailable"
                return status, _errors(code, kind)
            if action == "CreateImage":
                name = body["ImageName"]
                if any(image["ImageName"] == name for image in self.images.values()):
                    return 409, _errors("9015", "ResourceConflict")
                image_id = self._create(name, body["FileLocation"], {})
                if fault == "lose answer":
                    return 0, None
                return 200, {"Image": self.images[image_id], **_context()}
            if action == "ReadImages":
                return 200, {"Images": self._read(body.get("Filters", {})), **_context()}
            if action == "CreateTags":
                for image_id in body["ResourceIds"]:
                    tags = {t["Key"]: t["Value"] for t in self.images[image_id]["Tags"]}
                    tags |= {t["Key"]: t["Value"] for t in body["Tags"]}
                    self.images[image_id]["Tags"] = [
                        {"Key": k, "Value": v} for k, v in tags.items()
                    ]
                return 200, _context()
            return 400, _errors("4118", "InvalidParameter")

    def _read(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        found = []
        for image in self.images.values():
            tags = {f"{t['Key']}={t['Value']}" for t in image["Tags"]}
            if "ImageIds" in filters and image["ImageId"] not in filters["ImageIds"]:
                continue
            if "ImageNames" in filters and image["ImageName"] not in filters["ImageNames"]:
                continue
            if "Tags" in filters and not tags & set(filters["Tags"]):
                continue
            found.append(json.loads(json.dumps(image)))
        return found


def _context() -> dict[str, Any]:
    return {"ResponseContext": {"RequestId": "0475ca1e-d0c5-441d-712a-da55a4175157"}}


def _errors(code: str, kind: str) -> dict[str, Any]:
    return {"Errors": [{"Code": code, "Type": kind, "Details": ""}], **_context()}


def _handler(fake: OutscaleFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            status, answer = fake.answer(self.path.rsplit("/", 1)[-1], body)
            if answer is None:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
