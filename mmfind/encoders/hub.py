"""Getting weights: the Hugging Face cache, the network when there is one, clear failures."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """open_clip and transformers log to the root logger; the CLI reports what matters itself."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(previous)


def hub_endpoint() -> tuple[str, int]:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname or "huggingface.co", port


def hub_reachable(timeout_s: float = 3.0) -> bool:
    host, port = hub_endpoint()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def prepare_hub_access() -> None:
    """Without a network use the local cache only: fail in seconds, not after minutes of retries."""
    import huggingface_hub.constants as hf_constants

    if hf_constants.HF_HUB_OFFLINE:
        return
    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
        hf_constants.HF_HUB_OFFLINE = True


def cache_dir() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(Path.home(), ".cache", "huggingface")), "hub"
    )


def load_failure_message(model_id: str, exc: Exception, local_hint: str) -> str:
    """What went wrong and, when weights are missing offline, exactly how to supply them."""
    host, _ = hub_endpoint()
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    lowered = reason.lower()
    # local weights (a model folder, or ARCH:/path/to/checkpoint) failed on their own merits
    local = os.path.isdir(model_id) or os.path.isfile(model_id.partition(":")[2])
    if not local and (
        offline or "connection" in lowered or "cache" in lowered or "offline" in lowered
    ):
        return (
            f"cannot load model {model_id}: its weights are not in the Hugging Face cache "
            f"({cache_dir()}) and {host} cannot be reached. Connect once to download them, or "
            "copy a populated cache here (HF_HOME=DIR, HF_HUB_OFFLINE=1), or use local weights: "
            f"{local_hint}"
        )
    return f"cannot load model {model_id}: {reason}"
