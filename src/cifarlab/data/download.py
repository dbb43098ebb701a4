"""Getting dataset files onto disk safely: checksummed downloads, safe extraction.

`fetch` is the only function that touches the network. It writes a temporary file beside `dest` while
it computes the md5, and renames it to `dest` only when the checksum matches, so `dest` is either
complete and verified or absent. `safe_extract` checks every member of a tar archive before writing
anything and accepts only regular files and folders. All writes go through `cifarlab.atomic`.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import lzma
import os
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from cifarlab.atomic import atomic_write
from cifarlab.errors import UserError
from cifarlab.progress import PhaseProgress

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class DownloadError(UserError):
    """The network could not deliver a file (no connection, HTTP error, timeout)."""


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    got = md5_file(path)
    if got != md5:
        raise UserError(f"{path} is corrupt: expected md5 {md5}, got {got} (delete it to download again)")


NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError)


def _network_error(url: str, err: Exception) -> DownloadError:
    reason = err if isinstance(err, urllib.error.HTTPError) else getattr(err, "reason", err)
    return DownloadError(f"could not download {url}: {' '.join(str(reason).split())}")


def server_answers(url: str, seconds: float = 5.0) -> bool:
    """Whether `url`'s host accepts a TCP connection within `seconds`, name lookup included.

    `urlopen`'s timeout bounds each socket operation but not the name lookup, and a network that drops
    packets makes a download wait its whole timeout, so `cifarlab demo` asks this first. The lookup and
    connect run in a daemon thread: a resolver that hangs is abandoned, not waited for."""
    import threading
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    answered: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=seconds).close()
            answered.append(True)
        except OSError:
            answered.append(False)

    probe = threading.Thread(target=connect, name="cifarlab-server-probe", daemon=True)
    probe.start()
    probe.join(seconds)
    return bool(answered and answered[0])


def fetch(url: str, dest: str | Path, md5: str, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` and check its md5; on any failure nothing is left at `dest` (or beside it).

    The bytes go to an unpredictably named temporary file (cifarlab.atomic), renamed to `dest` only once
    the md5 matches."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the data folder {dest.parent}: {err.strerror or err}") from None
    log.debug("downloading %s -> %s", url, dest)  # the PhaseProgress below says it (logging: messages.py)

    def download(out) -> None:
        digest = hashlib.md5()
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except NETWORK_ERRORS as err:
            raise _network_error(url, err) from None
        size = int(response.headers.get("Content-Length") or 0)
        # Lines only once it has taken a few seconds: a refused download (bad md5) stays one line.
        with response, PhaseProgress(f"downloading {url}", size, "bytes", "auto" if size else "none",
                                     announce=False) as progress:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except NETWORK_ERRORS as err:
                    raise _network_error(url, err) from None
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                progress.update(len(chunk))
        got = digest.hexdigest()
        if got != md5:
            raise UserError(f"download of {url} is corrupt: expected md5 {md5}, got {got}; "
                            "the file was removed, try again")

    atomic_write(dest, download)
    return dest


# ---------------------------------------------------------------- safe extraction

MAX_EXTRACT_BYTES = 4 << 30  # CIFAR-100, the largest archive here, holds about 180 MB


def _member_problem(member: tarfile.TarInfo, root: str) -> str | None:
    """Why `member` must not be extracted into `root`, or None. Decided from the archive alone (names and
    types), plus where existing folders under `root` really lead; nothing is written before every member passes."""
    name = member.name
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r}); the archive may hold only files and folders"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r}); the archive may hold only files and folders"
    if member.ischr() or member.isblk():
        return "is a device file; the archive may hold only files and folders"
    if member.isfifo():
        return "is a FIFO; the archive may hold only files and folders"
    if not (member.isfile() or member.isdir()):
        return f"is a special file (tar type {member.type!r}); the archive may hold only files and folders"
    if not name or "\0" in name:
        return "has an empty or invalid name"
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return f"has an absolute path and would be written outside {root}"
    lexical = os.path.normpath(os.path.join(root, name))
    if ".." in name.replace("\\", "/").split("/") or not _inside(lexical, root):
        return f"would be written outside {root}"
    if not _inside(os.path.realpath(lexical), root):  # a folder already on disk that is a link out of root
        return f"would be written outside {root} (through an existing link)"
    if member.isfile() and lexical == root:
        return "has no file name"
    return None


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def safe_extract(archive: str | Path, target: str | Path) -> None:
    """Extract a tar archive into `target`. Only regular files and folders, all inside `target`: any link
    (symbolic or hard), device, FIFO, absolute or escaping path is refused, naming the member, before
    anything is written. Does not rely on tarfile's extraction filters (Python 3.10 without them works
    alike): files are written by cifarlab itself, each atomically, with default permissions."""
    archive, target = Path(archive), Path(target)
    root = os.path.realpath(target)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                problem = _member_problem(member, root)
                if problem:
                    raise UserError(f"{archive} is unsafe: member {member.name!r} {problem}; nothing was extracted")
                total += member.size if member.isfile() else 0
            if total > MAX_EXTRACT_BYTES:
                raise UserError(f"{archive} is unsafe: it would extract {total / 2**30:.1f} GiB, more than the "
                                f"{MAX_EXTRACT_BYTES >> 30} GiB any dataset here needs; nothing was extracted")
            os.makedirs(root, exist_ok=True)
            for member in members:
                path = os.path.normpath(os.path.join(root, member.name))
                if member.isdir():
                    os.makedirs(path, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(path), exist_ok=True)
                source = tar.extractfile(member)
                atomic_write(Path(path), lambda out: shutil.copyfileobj(source, out, CHUNK_BYTES))
    except UserError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        # tarfile's ReadError lists every compression it tried, one per line: keep the message on one line.
        reason = "not a readable tar archive" if isinstance(e, tarfile.ReadError) else " ".join(str(e).split())
        raise UserError(f"{archive} could not be extracted ({reason}); delete it to download again") from None
