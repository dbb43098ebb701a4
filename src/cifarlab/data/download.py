"""Getting dataset files onto disk safely: checksummed downloads, safe extraction.

`fetch` is the only function that touches the network. It writes `<dest>.part` while it computes the
md5, and renames it to `dest` only when the checksum matches, so `dest` is either complete and verified
or absent. `safe_extract` checks every member of a tar archive before writing anything.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from cifarlab.errors import UserError

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


def fetch(url: str, dest: str | Path, md5: str, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` and check its md5; on any failure nothing is left at `dest` or `dest.part`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as e:
        part.unlink(missing_ok=True)
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DownloadError(f"could not download {url}: {reason}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    got = digest.hexdigest()
    if got != md5:
        part.unlink()
        raise UserError(f"download of {url} is corrupt: expected md5 {md5}, got {got}; the file was removed, try again")
    os.replace(part, dest)
    return dest


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _check_member(member: tarfile.TarInfo, root: str, archive: Path) -> None:
    target = os.path.realpath(os.path.join(root, member.name))
    if not _inside(target, root):
        raise UserError(f"{archive} is unsafe: member {member.name!r} would be written outside {root}")
    if member.issym() or member.islnk():
        base = os.path.dirname(target) if member.issym() else root
        link = os.path.realpath(os.path.join(base, member.linkname))
        if os.path.isabs(member.linkname) or not _inside(link, root):
            raise UserError(f"{archive} is unsafe: link {member.name!r} points outside {root} (to {member.linkname!r})")
    elif not (member.isfile() or member.isdir()):
        raise UserError(f"{archive} is unsafe: member {member.name!r} is a device or other special file")


def safe_extract(archive: str | Path, target: str | Path) -> None:
    """Extract a tar archive into `target`, refusing (before writing anything) members that would
    land outside it, links pointing outside it, and device files."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(target)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, root, archive)
            # The stdlib "data" filter (Python 3.11.4+) repeats these checks and drops odd permissions.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, members=members, **extra)
    except (tarfile.TarError, EOFError, OSError) as e:
        # tarfile's ReadError lists every compression it tried, one per line: keep the message on one line.
        reason = "not a readable tar archive" if isinstance(e, tarfile.ReadError) else " ".join(str(e).split())
        raise UserError(f"{archive} could not be extracted ({reason}); delete it to download again") from None
