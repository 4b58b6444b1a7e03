"""Small tar archives built in memory, for image tests."""

from __future__ import annotations

import io
import tarfile


def tar_bytes(files: dict[str, bytes], mode: int = 0o644) -> bytes:
    """A ustar archive of regular files (name -> content)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
