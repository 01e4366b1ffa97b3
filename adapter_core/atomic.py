"""Atomic file writes: a temporary file beside the target, renamed over it only once it is complete."""
import contextlib
import os
import shutil
import uuid


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same folder, hidden, unique per call) for the caller to write
    a file or a folder (an image sequence); it replaces `path` in one rename when the block ends without
    error and is removed otherwise, so a reader never sees a half-written one. The caller's writer creates
    it, so it gets the usual mode (0o666 less the umask, as ComfyUI's own outputs), not tempfile.mkstemp's
    owner-only 0o600."""
    folder, base = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{base}.{uuid.uuid4().hex}.part")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary)
        elif os.path.exists(temporary):
            os.remove(temporary)
