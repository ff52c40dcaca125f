"""A resident query process: models and ANN files stay loaded, so a query costs milliseconds.

`mmfind serve` runs `Server.serve_forever()`; `mmfind query` calls `ask()` first and answers
locally when no server is listening. The server runs exactly the code of a local query
(`run_query`), with the encoders cached by the process and the ANN indexes cached by file
generation, so both paths give the same ranking.

Protocol: one JSON line per request on a Unix socket, one JSON line back. The socket lives in a
private directory (mode 0700) of the user's runtime dir, named after the index it serves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmfind import errors
from mmfind.errors import MmfindError, UsageError
from mmfind.search import AnnCache, Query, Response, Result, run_query
from mmfind.store.catalog import ItemHit

PROTOCOL = 1
CONNECT_TIMEOUT_S = 0.5
ANSWER_TIMEOUT_S = 300.0
MAX_REQUEST_BYTES = 1 << 20


def socket_path(index_dir: Path) -> Path:
    """Where the server of an index listens (short enough for AF_UNIX's ~108-byte limit)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    directory = Path(base) / f"mmfind-{os.getuid()}"
    digest = hashlib.blake2b(os.fsencode(index_dir.absolute()), digest_size=8).hexdigest()
    return directory / f"{digest}.sock"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UsageError(f"{path} must belong to you and be private (chmod 700)")


class ServerRunning(MmfindError):
    exit_code = 75


class Server:
    def __init__(
        self,
        index_dir: Path,
        *,
        device: str = "auto",
        idle_timeout_s: float | None = None,
        on_ready: Callable[[Path], None] | None = None,
    ) -> None:
        self.index_dir = index_dir
        self.device = device
        self.idle_timeout_s = idle_timeout_s
        self.on_ready = on_ready
        self.path = socket_path(index_dir)
        self.cache = AnnCache()
        self.served = 0
        self.stopping = False

    def serve_forever(self) -> None:
        _private_dir(self.path.parent)
        if self.path.exists():
            if _alive(self.path):
                raise ServerRunning(f"a server for {self.index_dir} is already running")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            sock.listen(16)
            self._warm_up()
            if self.on_ready is not None:
                self.on_ready(self.path)
            sock.settimeout(self.idle_timeout_s)
            while not self.stopping:
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    return  # idle for idle_timeout_s: leave
                with conn:
                    self._handle(conn)
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _warm_up(self) -> None:
        """Load the models and ANN files now, so the first query is as fast as the next."""
        with contextlib.suppress(MmfindError):
            run_query(
                self.index_dir, Query(text="warm up", limit=1), device=self.device,
                ann_cache=self.cache,
            )  # fmt: skip

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(ANSWER_TIMEOUT_S)
        try:
            request = json.loads(_read_line(conn))
            answer = self._answer(request)
        except (OSError, ValueError) as exc:
            answer = {"error": {"class": "InputError", "message": f"bad request: {exc}"}}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer).encode() + b"\n")

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("protocol") != PROTOCOL:
            return {"error": {"class": "UsageError", "message": "protocol mismatch"}}
        if request.get("op") == "ping":
            return {"ok": True, "index": str(self.index_dir), "served": self.served}
        if request.get("op") == "stop":
            self.stopping = True
            return {"ok": True, "served": self.served}
        try:
            query = Query(**request["query"])
            started = time.perf_counter()
            response = run_query(self.index_dir, query, device=self.device, ann_cache=self.cache)
            self.served += 1
            return {"ok": True, "response": response_to_dict(response),
                    "seconds": time.perf_counter() - started}  # fmt: skip
        except MmfindError as exc:
            return {"error": {"class": type(exc).__name__, "message": str(exc),
                              "exit_code": exc.exit_code}}  # fmt: skip
        except Exception as exc:  # reported to the client; the server stays up
            return {"error": {"class": "InternalError", "message": f"{type(exc).__name__}: {exc}"}}


def ask(index_dir: Path, query: Query) -> Response | None:
    """The server's answer, or None when no server for this index is listening."""
    path = socket_path(index_dir)
    if not path.exists():
        return None
    absolute = dataclasses.replace(  # the server has another working directory
        query,
        images=[os.path.abspath(p) for p in query.images],
        audios=[os.path.abspath(p) for p in query.audios],
        within=[os.path.abspath(d) for d in query.within],
    )
    payload = {"protocol": PROTOCOL, "op": "query", "query": dataclasses.asdict(absolute)}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(path))
            sock.settimeout(ANSWER_TIMEOUT_S)
            sock.sendall(json.dumps(payload).encode() + b"\n")
            answer = json.loads(_read_line(sock))
    except (OSError, ValueError):
        return None  # not listening (a stale socket), or gone mid-way: answer locally
    if "error" in answer:
        raise _error(answer["error"])
    return response_from_dict(answer["response"])


def _alive(path: Path) -> bool:
    return _send(path, "ping") is not None


def stop(index_dir: Path) -> bool:
    """Ask the server of an index to stop; False when none was running."""
    return _send(socket_path(index_dir), "stop") is not None


def _send(path: Path, op: str) -> dict[str, Any] | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(path))
            sock.sendall(json.dumps({"protocol": PROTOCOL, "op": op}).encode() + b"\n")
            answer = json.loads(_read_line(sock))
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) and answer.get("ok") else None


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
        if size > MAX_REQUEST_BYTES * 64:
            raise ValueError("message too large")
    return b"".join(chunks)


def _error(data: dict[str, Any]) -> MmfindError:
    cls = getattr(errors, str(data.get("class")), None)
    message = str(data.get("message", "server error"))
    if isinstance(cls, type) and issubclass(cls, MmfindError):
        return cls(message)
    error = MmfindError(f"the query server failed: {message}")
    error.exit_code = int(data.get("exit_code", 70))
    return error


def response_to_dict(response: Response) -> dict[str, Any]:
    return dataclasses.asdict(response)


def response_from_dict(data: dict[str, Any]) -> Response:
    results = [
        Result(r["rank"], r["score"], r["cosine"], ItemHit(**r["hit"])) for r in data["results"]
    ]
    return Response(
        results, data["models"], data["spaces"], data["calibrated"], list(data["notes"])
    )
