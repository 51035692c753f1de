"""Output paths: opening a file for writing, or checking that it can be written, with an error
that names the path and what is wrong with it.

libsndfile and ``torch.save`` open files themselves and report failures as "System error." or
"File X cannot be opened", and libsndfile cuts a path at a NUL byte (``"a\\x00b.wav"`` writes
``a``). Every writer here opens the file with Python first and hands the open file over.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from chatterbox_vllm.errors import OutputPathError


def _reason(path: Path, error: OSError, example: str) -> str:
    """What an ``OSError`` from opening ``path`` means, in the user's terms."""
    code = error.errno
    if code == errno.ENAMETOOLONG:
        longest = _name_max(path.parent)
        return (
            f"the file name is {len(os.fsencode(path.name))} bytes long; this file system "
            f"allows at most {longest}"
        )
    if code == errno.ELOOP:
        return "it is a symbolic link that loops (it points, directly or not, back to itself)"
    if code == errno.EISDIR:
        return f"it is a directory; give a file name such as {path / example}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocking = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
        if blocking is not None:
            return f"{blocking} is a file, not a directory, so nothing can be written under it"
    if code == errno.ENOENT:
        if path.parent.is_dir():  # e.g. /proc: a directory where no file can be created
            return f"no file can be created in {path.parent}"
        return f"the directory {path.parent} does not exist and cannot be created"
    if code in (errno.EACCES, errno.EPERM):
        target = "the file" if path.exists() else f"the directory {path.parent}"
        return f"permission denied: this user may not write to {target}"
    if code == errno.EROFS:
        return "the file system is read-only"
    return error.strerror or str(error)


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory if directory.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _check_characters(path: Path, what: str) -> None:
    if "\x00" in str(path):
        raise OutputPathError(
            f"{what} {str(path)!r}: cannot write there (the path contains a NUL character, "
            "which no file name may hold)"
        )


def check_not_directory(path: str | os.PathLike, what: str, example: str) -> None:
    """A directory given where a file is meant is named as such (before its missing suffix
    would be reported as an unknown format)."""
    target = Path(path)
    try:
        directory = target.is_dir()
    except (OSError, ValueError):  # a NUL or a too-long name: reported when it is opened
        return
    if directory:
        raise OutputPathError(
            f"{what} {target} is a directory; give a file name such as {target / example}"
        )


@contextlib.contextmanager
def open_for_writing(path: str | os.PathLike, what: str, example: str) -> Iterator[BinaryIO]:
    """``with open_for_writing(path, ...) as file``: ``path`` opened ``wb`` (its directory created
    if missing), or an :class:`OutputPathError` naming ``what`` (e.g. "audio file"), the path and
    the reason; ``example`` is a file name to suggest when ``path`` is a directory.

    The file appears whole or not at all: it is written to a hidden file beside ``path`` and
    renamed over it once the ``with`` block ends without an error, so a write that fails or is
    interrupted (a full disk, Ctrl-C, a killed server) leaves an existing file as it was and no
    partial one, and two writers of one path leave one of their files, not a mix of both. A
    symbolic link is written through; a path that is not a regular file (``/dev/null``, a FIFO)
    is written in place."""
    target = Path(path)
    _check_characters(target, what)
    try:
        if target.is_symlink():
            with contextlib.suppress(FileNotFoundError):  # dangling: writing creates its target
                os.stat(target)  # a loop: ELOOP, named below
            target = Path(os.path.realpath(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        file, partial = _open_partial(target)
    except OSError as error:
        raise OutputPathError(
            f"{what} {target}: cannot write there ({_reason(target, error, example)})"
        ) from None
    try:
        with file:
            yield file
        if partial is not None:
            try:
                os.replace(partial, target)
            except OSError as error:
                raise OutputPathError(
                    f"{what} {target}: cannot write there ({_reason(target, error, example)})"
                ) from None
    finally:
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.unlink()  # what is left after an error (gone once renamed)


def _open_partial(target: Path) -> tuple[BinaryIO, Path | None]:
    """A new hidden file beside ``target`` to write it in (and that file's path); ``target``
    itself (and None) where it is not a regular file, or where only the file itself, not its
    directory, may be written."""
    if target.exists() and not target.is_file():  # /dev/null, a FIFO: never replaced
        return target.open("wb"), None
    # The hidden name stays short enough for the file system whatever the target's length.
    partial = target.with_name(f".{target.name[:64]}.{uuid.uuid4().hex[:12]}.partial")
    try:
        # Created as open() creates a file (0o666 less the umask); an existing file's
        # permissions are kept, which the rename would otherwise drop.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        if target.is_file() and error.errno in (errno.EACCES, errno.EPERM):
            return target.open("wb"), None  # a writable file in a directory we may not write
        raise
    if target.exists():
        os.chmod(fd, stat.S_IMODE(target.stat().st_mode))
    return os.fdopen(fd, "wb"), partial


def ensure_directory(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a directory, created (with its parents) if missing, or an
    :class:`OutputPathError` naming ``what`` (e.g. "--voices-dir"), the path and why it cannot be
    created (a file in the way, a file system where nothing can be created, no permission)."""
    target = Path(path)
    _check_characters(target, what)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        existing = next((a for a in target.parents if a.exists()), Path("/"))
        if isinstance(error, FileExistsError) or not existing.is_dir():
            blocking = target if target.exists() else existing
            reason = f"{blocking} is a file, not a directory"
        elif error.errno in (errno.EACCES, errno.EPERM):
            reason = f"permission denied: this user may not create directories in {existing}"
        elif error.errno == errno.ENOENT:  # e.g. /proc: no directory can be created there
            reason = f"no directory can be created in {existing}"
        else:
            reason = _reason(target, error, "")
        raise OutputPathError(f"{what} {target}: cannot create the directory ({reason})") from None
    return target


def check_writable(path: str | os.PathLike, what: str, example: str) -> Path:
    """Checks, before any work is done, that ``path`` can be opened for writing, without
    changing an existing file: an existing one is opened for appending (nothing written), a new
    one is created and removed. Catches a symbolic-link loop, a name too long for the file
    system, a directory, a read-only or unwritable directory and a NUL in the name."""
    target = Path(path)
    _check_characters(target, what)
    try:
        _probe(target)
    except OSError as error:
        raise OutputPathError(
            f"{what} {target}: cannot write there ({_reason(target, error, example)})"
        ) from None
    return target


def _probe(target: Path) -> None:
    if target.is_symlink() and not target.exists():
        try:
            os.stat(target)
        except FileNotFoundError:  # a dangling link: writing creates what it points to
            _probe(target.parent / os.readlink(target))
            return
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        target.unlink()
