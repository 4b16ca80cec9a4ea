"""Where teacher weights come from: a local file, or a download that fails fast when offline."""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from mimbench.errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0


def cache_dir() -> Path:
    """$MIMBENCH_HOME, else $XDG_CACHE_HOME/mimbench, else ~/.cache/mimbench."""
    if os.environ.get("MIMBENCH_HOME"):
        return Path(os.environ["MIMBENCH_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mimbench"


def local_file(weights: str | os.PathLike | None) -> Path | None:
    """The path named by `weights` if it looks like a path; an error if that path is missing."""
    if weights is None:
        return None
    text = str(weights)
    looks_like_path = os.sep in text or text.startswith(("~", ".")) or Path(text).suffix != ""
    if not looks_like_path or "://" in text:
        return None
    path = Path(text).expanduser()
    if not path.exists():
        raise WeightsUnavailableError(f"weights file '{path}' does not exist; check target.weights.")
    return path


def reachable(url: str) -> bool:
    """Can we open a TCP connection to the host of `url` within a few seconds?

    MIMBENCH_OFFLINE=1 answers no without trying (clusters whose firewalls hang instead of refusing).
    """
    if os.environ.get("MIMBENCH_OFFLINE", "") not in ("", "0"):
        return False
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def require_network(what: str, url: str) -> None:
    """Raise the one-sentence remedy when `url` cannot be reached, instead of minutes of retries."""
    if not reachable(url):
        raise WeightsUnavailableError(
            f"{what} are not on this machine and {urlparse(url).hostname} cannot be reached; "
            f"download {url} on a machine with network and pass it with "
            f"--set target.weights=/path/to/{Path(urlparse(url).path).name or 'file'}.")


def download_once(what: str, url: str, path: Path) -> Path:
    """`path`, downloaded from `url` the first time (atomically: a stopped download leaves
    no file); offline, the one-sentence remedy of require_network."""
    if not path.exists():
        import torch

        require_network(what, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        log.info("downloading %s", url)
        torch.hub.download_url_to_file(url, str(tmp), progress=False)
        tmp.replace(path)
    return path


def official_or_local(weights: str, what: str, url: str, cached: str) -> Path:
    """The file `weights` names: "official" is `url`, downloaded once to the cache folder's
    `cached` path; anything else must be a local file."""
    path = download_once(what, url, cache_dir() / cached) if weights == "official" else local_file(weights)
    if path is None:
        raise ConfigError(f"target.weights={weights!r} is neither 'official' nor a file path.")
    return path


def mismatch(error: Exception, weights, model: str) -> WeightsUnavailableError | None:
    """A short error naming the mismatching keys, when `error` is torch's load_state_dict
    failure for weights of another architecture; None for any other error."""
    text = str(error)
    if "Error(s) in loading state_dict" not in text and "size mismatch" not in text:
        return None
    parts = []
    for label, pattern in (("missing", r'Missing key\(s\) in state_dict: ([^\n]*)'),
                           ("unexpected", r'Unexpected key\(s\) in state_dict: ([^\n]*)')):
        found = re.search(pattern, text)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    sizes = re.findall(r"size mismatch for ([^:]+): copying a param with shape torch.Size\((\[[^]]*\])\)"
                       r" from checkpoint, the shape in current model is torch.Size\((\[[^]]*\])\)", text)
    if sizes:
        shown = ", ".join(f"{k} {a} vs {b}" for k, a, b in sizes[:3])
        parts.append(f"{len(sizes)} of another shape (e.g. {shown})")
    return WeightsUnavailableError(f"weights '{weights}' do not fit '{model}': keys "
                                   f"{'; '.join(parts) or text[:300]}. Check target.model and "
                                   f"target.weights.")
