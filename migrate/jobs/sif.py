"""SIF jobs: `run HOST --image x.sif` runs the job through `apptainer exec --nv` (pure).

The dispatcher starts it as a process job (its own process group, the log, cancel and recovery as
for any process job, CUDA_VISIBLE_DEVICES set to the GPUs it chose, which apptainer passes into the
container with the rest of the job's environment), so the agent needs no container logic for it.
A bare `x.sif` is one `push-image --format sif` stored in ~/.migrate/images/; `~/...` and absolute
paths are taken as they are. Mounts become `-B`, the working directory `--pwd`.
"""

from __future__ import annotations

from migrate.remote import shell

SIF_DIR = ".migrate/images"


def is_sif(image: str | None) -> bool:
    return bool(image) and str(image).endswith(".sif")


def sif_path_word(image: str) -> str:
    """The SIF's path on the host as one shell word."""
    if image.startswith("/"):
        return shell.quote(image)
    if image.startswith("~/"):
        return shell.home_path(image[2:])
    return shell.home_path(image if "/" in image else f"{SIF_DIR}/{image}")


def command(image: str, cmd: str, *, mounts: list[str], cwd: str | None) -> str:
    """The process-job command line that runs `cmd` in the SIF, with one clear line when it cannot."""
    binds = "".join(f" -B {shell.quote(m)}" for m in mounts)
    pwd = f" --pwd {shell.quote(cwd)}" if cwd else ""
    return (f"sif={sif_path_word(image)}; "
            "[ -f \"$sif\" ] || { echo \"migrate: no SIF image $sif on this host (migrate push-image IMAGE HOST "
            "--format sif)\" >&2; exit 127; }; "
            "tool=$(command -v apptainer || command -v singularity) || { echo 'migrate: neither apptainer nor "
            "singularity is installed on this host' >&2; exit 127; }; "
            f"exec \"$tool\" exec --nv{binds}{pwd} \"$sif\" sh -c {shell.quote(cmd)}")
