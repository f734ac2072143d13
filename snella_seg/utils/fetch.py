"""Resumable, verified downloads: pooch places and retries, a Range-aware downloader hook resumes.

pooch streams into a temporary file beside the target and moves it into place only once its downloader returned
(and the hash matched), so a cut download never leaves a file that looks complete. pooch itself cannot resume: its
temporary file is deleted on any failure. ``ResumableDownloader`` keeps the bytes received so far in
``<target>.part`` and asks the server for the rest (HTTP Range); a server that ignores Range sends the whole file,
which then replaces the partial one.

Hashes are written ``alg:hex`` as pooch writes them (``sha256:...``, ``md5:...``); ``hex`` may be a prefix, as the
hash prefixes that publishers put in file names are. Every download's SHA-256 is recorded in a manifest
(``checksums.sha256`` beside the files, ``sha256sum -c`` format), and a file already there is checked against it.
"""
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Union

if TYPE_CHECKING:  # the download stack is imported where a download runs: training machines need not have it
    import requests

MANIFEST_NAME = 'checksums.sha256'
PARTIAL_SUFFIX = '.part'
# torch.hub's convention (torch.hub.HASH_REGEX): 'name-<first hex digits of the SHA-256>.ext'.
TORCH_HUB_HASH_IN_NAME = re.compile(r'-([a-f0-9]{6,64})\.')
# Bytes of a read; a cut connection loses at most the read in progress.
CHUNK_BYTES = 1 << 16


class FetchError(RuntimeError):
    """A download could not be completed or verified; the message says what to do."""


class DownloadInterrupted(FetchError):
    """The connection failed or was cut on every try; what arrived is kept for the next run to resume from."""


class ChecksumError(FetchError):
    """A file's hash differs from the expected one.

    Not a ValueError: pooch would download the file again at once, and a mismatch that is not a corrupted transfer
    would then cost every retry a full download.
    """


def torch_hub_hash(file_name: str) -> Optional[str]:
    """The SHA-256 prefix a torch.hub-style file name carries.

    Args:
        file_name: a file name such as ``dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth``.

    Returns:
        ``'sha256:8aa4cbdd'``, or None when the name carries no hash.
    """
    match = TORCH_HUB_HASH_IN_NAME.search(file_name)
    return f'sha256:{match.group(1)}' if match else None


def file_digest(path: Union[str, Path], algorithm: str = 'sha256') -> str:
    """The hex digest of a file, read in chunks.

    Args:
        path: the file.
        algorithm: a hashlib algorithm name.

    Returns:
        The full hex digest.
    """
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b''):
            digest.update(chunk)
    return digest.hexdigest()


def check_hash(path: Union[str, Path], known_hash: str, name: Optional[str] = None) -> None:
    """Raise ``ChecksumError`` unless the file's digest starts with the expected (possibly partial) one.

    Args:
        path: the file.
        known_hash: ``alg:hex``, where hex may be a prefix of the digest.
        name: what the message calls the file (default: its name).

    Raises:
        ChecksumError: the digest differs.
    """
    algorithm, expected = known_hash.split(':', 1)
    seen = file_digest(path, algorithm)
    if not seen.startswith(expected.lower()):
        raise ChecksumError(f'{name or Path(path).name}: {algorithm} is {seen}, expected {expected}'
                            f'{"..." if len(expected) < len(seen) else ""}')


def read_manifest(directory: Union[str, Path]) -> Dict[str, str]:
    """The SHA-256 recorded for each file name in a folder's manifest.

    Args:
        directory: the folder holding ``checksums.sha256``.

    Returns:
        ``{file name: hex digest}``; empty when there is no manifest.
    """
    manifest = Path(directory) / MANIFEST_NAME
    if not manifest.is_file():
        return {}
    entries = (line.split(None, 1) for line in manifest.read_text().splitlines() if line.strip())
    return {name.strip().lstrip('*'): digest for digest, name in entries}


def record_in_manifest(path: Union[str, Path]) -> str:
    """Record a file's SHA-256 in the manifest of its folder (replacing an older entry for the same name).

    Args:
        path: the file.

    Returns:
        The SHA-256 recorded.
    """
    path = Path(path)
    entries = read_manifest(path.parent)
    entries[path.name] = file_digest(path)
    lines = [f'{digest}  {name}\n' for name, digest in sorted(entries.items())]
    temporary = path.parent / (MANIFEST_NAME + '.tmp')
    temporary.write_text(''.join(lines))
    os.replace(temporary, path.parent / MANIFEST_NAME)
    return entries[path.name]


class ResumableDownloader:
    """A pooch downloader that resumes from ``partial`` and checks ``known_hash`` before handing the file over.

    Args:
        partial: where the bytes received so far are kept between runs.
        known_hash: ``alg:hex`` (hex may be a prefix), or None; on a mismatch the partial file is removed.
        progress: show a progress bar on stderr.
        timeout: seconds to wait for the server to answer or send more bytes.
    """

    def __init__(self, partial: Path, known_hash: Optional[str] = None, progress: bool = True,
                 timeout: float = 60.0) -> None:
        self.partial = Path(partial)
        self.known_hash = known_hash
        self.progress = progress
        self.timeout = timeout

    def __call__(self, url: str, output_file: str, pooch_instance: Optional[object] = None) -> None:
        """Fetch ``url`` into the partial file, verify it and move it to ``output_file`` (pooch's temporary file).

        Args:
            url: what to download.
            output_file: the path pooch moves into place once this returns.
            pooch_instance: unused (pooch's downloader signature).

        Raises:
            requests.RequestException: the connection failed or was cut; the partial file is kept.
            ChecksumError: the finished file has another hash; the partial file is removed (pooch does not retry).
        """
        import requests
        from tqdm import tqdm

        offset = self.partial.stat().st_size if self.partial.exists() else 0
        headers = {'Range': f'bytes={offset}-'} if offset else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code == 416 and offset:  # nothing left to send: the partial file may be whole
                self._check_complete_after_416(response, offset)
            else:
                response.raise_for_status()
                resumed = offset if response.status_code == 206 else 0
                remaining = int(response.headers.get('content-length', 0))
                with open(self.partial, 'ab' if resumed else 'wb') as out, \
                        tqdm(total=resumed + remaining or None, initial=resumed, unit='B', unit_scale=True,
                             desc=self.partial.name[:-len(PARTIAL_SUFFIX)], disable=not self.progress,
                             leave=False) as bar:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        out.write(chunk)
                        bar.update(len(chunk))
        if self.known_hash:
            try:
                check_hash(self.partial, self.known_hash, name=self.partial.name[:-len(PARTIAL_SUFFIX)])
            except ChecksumError:
                self.partial.unlink()
                raise
        os.replace(self.partial, output_file)

    def _check_complete_after_416(self, response: 'requests.Response', offset: int) -> None:
        """Check a 416 answer's stated size (``Content-Range: bytes */N``); a partial file of another size goes.

        Raises:
            FetchError: If the partial file's size is not the server's; the partial file is removed.
        """
        size = response.headers.get('content-range', '').rpartition('/')[2]
        if not size.isdigit() or int(size) != offset:
            self.partial.unlink()
            raise FetchError(f'{self.partial} does not match the file on the server (server: {size or "?"} bytes, '
                             f'here: {offset}); it was removed, run again to download afresh')


def with_mirror(url: str, mirror: Optional[str]) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (a server that keeps the publishers' paths).

    Args:
        url: an official URL.
        mirror: e.g. ``http://mirror.example:8000``, or None for the official host.

    Returns:
        The URL to download from.
    """
    if not mirror:
        return url
    path = url.split('://', 1)[1].partition('/')[2]
    return f'{mirror.rstrip("/")}/{path}'


def fetch(url: str, target: Union[str, Path], known_hash: Optional[str] = None, progress: bool = True,
          retries: int = 2, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target`` unless it is there, resuming a cut download and verifying the result.

    A file already at ``target`` is checked against ``known_hash`` and the folder's manifest, not downloaded again.
    The SHA-256 of every completed download, and of a file found in place without a record, goes into the manifest.

    Args:
        url: what to download.
        target: where the file goes.
        known_hash: ``alg:hex`` (hex may be a prefix); None checks only against the manifest.
        progress: show a progress bar on stderr.
        retries: further tries (each resuming) after a failed connection.
        timeout: seconds to wait for the server to answer or send more bytes.

    Returns:
        The path of the verified file.

    Raises:
        ChecksumError: the file (downloaded or already there) has another hash; a download's partial file is
            removed, a file that was already there is left for the user to look at.
        DownloadInterrupted: the connection failed on every try; the partial file is kept for the next run.
    """
    import pooch
    import requests

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        recorded = read_manifest(target.parent).get(target.name)
        for expected in filter(None, (known_hash, recorded and f'sha256:{recorded}')):
            check_hash(target, expected)
        if not recorded:  # a file put there by hand (a gated release): later runs check against this record
            record_in_manifest(target)
        return target
    downloader = ResumableDownloader(target.with_name(target.name + PARTIAL_SUFFIX), known_hash, progress, timeout)
    registry = pooch.Pooch(path=target.parent, base_url='', registry={target.name: None}, urls={target.name: url},
                           retry_if_failed=retries)
    try:
        registry.fetch(target.name, downloader=downloader)
    except requests.RequestException as error:
        kept = downloader.partial.stat().st_size if downloader.partial.exists() else 0
        raise DownloadInterrupted(f'the download of {url} failed ({error}); {kept} bytes are kept in '
                                  f'{downloader.partial}: run the same command again to resume it') from error
    record_in_manifest(target)
    return target
