"""Voice prompts named by path in a request (the plan's `prompt_wav`): read only from the one
directory the operator configured (--prompt-dir).

The name is resolved (symlinks included) and must stay inside the directory before anything
is opened; the file is then opened without following a final symlink and its real path checked
again through the open descriptor, so a file swapped for a symlink between the two steps is
refused too. Every refusal is the same 400 whether or not something exists outside.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from web_demo.server.errors import BadRequest, PayloadTooLarge

PARAM = "prompt_wav"


def read_prompt_file(prompt_dir: Path | None, name: str, *, max_bytes: int) -> bytes:
    """The bytes of `name` inside prompt_dir (blocking: run it in a thread)."""
    if prompt_dir is None:
        raise BadRequest("this server reads no prompt files (no --prompt-dir); upload the prompt "
                         "(multipart field prompt_wav) or send prompt_wav_base64", param=PARAM)
    missing = BadRequest(f"no prompt file {name[:200]!r} in the server's prompt directory", param=PARAM)
    if "\0" in name:
        raise missing  # realpath() and open() raise ValueError on a NUL byte
    root = Path(os.path.realpath(prompt_dir))
    path = Path(os.path.realpath(root / name))  # an absolute name replaces root, then is checked
    _check_inside(path, root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, a directory's symlink swapped in, unreadable, a name too long
        raise missing from None
    try:
        _check_inside(Path(os.path.realpath(f"/proc/self/fd/{fd}")), root)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise missing  # a directory, a FIFO, a device
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the prompt file is larger than {max_bytes} bytes", param=PARAM)
    return data


def _check_inside(path: Path, root: Path) -> None:
    if not path.is_relative_to(root):
        raise BadRequest("prompt_wav must name a file inside the server's prompt directory", param=PARAM)
