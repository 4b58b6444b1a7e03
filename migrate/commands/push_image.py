"""`migrate push-image IMAGE... HOST...`: the fastest way to get local Docker images onto borrowed servers."""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_host
from migrate.errors import MigrateError, UsageError
from migrate.image import refs
from migrate.image.compress import parse_compress
from migrate.image.local import image_exists, inspect_images
from migrate.image.options import read_value
from migrate.image.push import STEP_BYTES, ImagePushResult, PushImageOptions, push_images
from migrate.remote.connection import load_configs
from migrate.remote.hosts import ConnectOptions
from migrate.units import KIB, parse_rate, parse_size


def _known_hosts(conn: ConnectOptions) -> set[str]:
    try:
        return {h for h in load_configs(conn).config.get_hostnames() if not any(c in h for c in "*?!")}
    except MigrateError:
        return set()


def split_args(args: tuple[str, ...], extra_hosts: tuple[str, ...], conn: ConnectOptions, *,
               from_file: bool, to_file: bool) -> tuple[list[str], list[str]]:
    """Images and hosts from the positional arguments (and --host)."""
    if extra_hosts:
        return list(args), list(extra_hosts)
    known = _known_hosts(conn)
    images, hosts = refs.split_images_and_hosts(
        args, is_local_image=(lambda a: False) if from_file else image_exists, is_known_host=lambda a: a in known)
    missing = None if from_file else refs.missing_image(images, hosts, is_known_host=lambda a: a in known)
    if missing:
        inspect_images([missing])  # raises "image X not found locally" with close matches
    return images, hosts


def print_results(results: list[ImagePushResult]) -> None:
    """The final table: image, host, result, bytes sent from here vs image size, time, which way the
    host was fed (this machine, or the host that fed it over the hosts' network), detail."""
    rows = []
    for r in results:
        sent = ui.human_bytes(r.bytes_sent) if r.status == "sent" else "-"
        fed = r.fed_via + (f" ({r.fed_why})" if r.fed_why and r.fed_via != "-" else "")
        rows.append((r.image, r.host, r.status, f"{sent} / {ui.human_bytes(r.image_bytes)}", f"{r.seconds:.1f}s",
                     fed, r.error or (f"pulled {r.pulled} on the host; " if r.pulled else "") + r.detail))
    ui.table(None, ["image", "host", "result", "sent / image", "time", "fed via", "detail"], rows)


@click.command("push-image", context_settings=CONTEXT_SETTINGS)
@click.argument("args", nargs=-1, metavar="IMAGE... HOST...")
@click.option("-H", "--host", "extra_hosts", multiple=True, metavar="HOST", shell_complete=complete_host,
              help="A target host (repeatable); then every positional argument is an image.")
@click.option("--compress", default="auto", show_default=True, metavar="auto|none|gzip[:L]|zstd[:L]",
              help="Stream codec. auto measures the link: none on fast links, zstd on slow ones; Docker < 23 "
                   "gets zstd decompressed by the host's zstd, or gzip per layer.")
@click.option("--force-arch", is_flag=True, help="Push even when the image's CPU architecture differs from the host's.")
@click.option("--bwlimit", metavar="RATE", default=None,
              help="Cap the wire rate of each host's stream: 20M or 20MiB/s (binary bytes/s), 100mbit (bits/s), "
                   "500 (KiB/s, as rsync reads it); be polite on shared links.")
@click.option("--checkpoint", "checkpoint", default=None, show_default="64M", metavar="SIZE",
              help="Commit a resume point on the host at least every SIZE of layers, e.g. 64M = 64 MiB, 1G "
                   "(a rerun after a broken connection sends only what is not committed); a layer bigger "
                   "than SIZE is staged in ~/.migrate/image-partial on the host and resumes inside itself.")
@click.option("-n", "--dry-run", is_flag=True, help="Run the preflight and show what would be sent; change nothing.")
@click.option("--to-file", type=click.Path(dir_okay=False), default=None,
              help="Write one docker-load-able archive instead of pushing (.tar, .tar.gz or .tar.zst).")
@click.option("--from-file", type=click.Path(dir_okay=False), default=None,
              help="Push the images of an archive (from --to-file or docker save) instead of the local daemon.")
@click.option("--format", "fmt", type=click.Choice(["docker", "sif"]), default="docker", show_default=True,
              help="sif: build a Singularity/Apptainer image on the host (needs apptainer or singularity there).")
@click.option("--sif-dir", default=".migrate/images", show_default=True, metavar="DIR",
              help="Where --format sif puts the .sif files on the host (relative to the home directory).")
@click.option("--no-direct-layers", is_flag=True,
              help="Always use `docker save` instead of reading the needed layers straight from the local "
                   "overlay2 store (the fast path needs read access to Docker's data-root).")
@click.option("--via", type=click.Choice(["auto", "push", "pull"]), default="auto", show_default=True,
              help="auto: when the image (or its base) came from a registry the host can reach, the host pulls "
                   "those layers itself and SSH carries only the rest, else push; push: SSH carries everything; "
                   "pull: require the registry path (fails before anything moves).")
@click.option("--registry-login", metavar="REGISTRY", default=None,
              help="Ask once for a login to REGISTRY instead of taking it from the local Docker credential store.")
@click.option("--no-relay", is_flag=True,
              help="Send every host its own copy from here, even when the hosts could feed each other (by "
                   "default the first host feeds the others over their network as the bytes arrive).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@connection_options
def command(args: tuple[str, ...], extra_hosts: tuple[str, ...], compress: str, force_arch: bool,
            bwlimit: str | None, checkpoint: str | None, dry_run: bool, to_file: str | None, from_file: str | None,
            fmt: str, sif_dir: str, no_direct_layers: bool, via: str, registry_login: str | None, no_relay: bool,
            as_json: bool, conn: ConnectOptions) -> None:
    """Copy local Docker images to hosts over SSH, sending only the layers each host lacks.

    \b
    Examples:
      migrate push-image app:1 gpu-box                # one image, one host
      migrate push-image app:1 base:2 gpu1 gpu2       # gpu1 streams on to gpu2
      migrate push-image app:1 gpu1 gpu2 --no-relay   # each its own copy
      migrate push-image app:1 --to-file app.tar.zst  # sneakernet, then:
      migrate push-image --from-file app.tar.zst gpu-box

    Before a byte moves it checks the image exists, Docker access on the host (direct, docker group,
    or sudo: a password is asked once), engine and storage driver, CPU architecture, free disk, and
    tags that would move. A host that already has the image gets only missing tags ("up to date").
    A broken connection keeps the layers already loaded, and the committed part of a layer bigger
    than --checkpoint: rerun the same command to resume. Works
    with the classic (overlay2) and the containerd image store at either end: a containerd host
    gets an OCI layout with the layers it lacks left out (docs/push-image.md, "Engines").

    An image pulled from a registry (or built on such a base) can come the fast way: with --via auto
    the host is asked whether it reaches that registry (one HEAD request, with your credentials from
    the local Docker credential store); if so it pulls those layers by digest and only your own
    layers travel over SSH. Credentials go over SSH stdin into a temporary directory removed after
    the pull: never into a file that stays, a command line or a log (docs/push-image.md, "Images the
    host pulls itself").

    Several hosts: the first host that needs the image gets it from here; each other host it
    reaches over the hosts' own network is fed from its Docker (a key made for that transfer,
    allowed only to run `docker load` there, removed afterwards); the "fed via" column says which
    way each host got it and why (docs/push-image.md, "Many hosts, one upload").
    """
    parse_compress(compress)
    rate = read_value("--bwlimit", bwlimit, parse_rate, rate=True) if bwlimit else None
    step_bytes = STEP_BYTES if checkpoint is None else \
        int(read_value("--checkpoint", checkpoint, lambda t: parse_size(t, what="--checkpoint"), rate=False))
    if step_bytes < KIB:
        raise UsageError(f"--checkpoint {checkpoint} is too small", hint="give at least 1K; the default is 64M")
    if to_file and from_file:
        raise UsageError("--to-file and --from-file cannot be combined", hint="use one of them")
    images, hosts = split_args(args, extra_hosts, conn, from_file=bool(from_file), to_file=bool(to_file))
    if to_file and hosts:
        raise UsageError("--to-file writes a file instead of pushing; give no host")
    if not images and not from_file:
        raise UsageError("no image given", hint="migrate push-image IMAGE... HOST...")
    if not hosts and not to_file:
        raise UsageError("no host given" + (f" ({images[-1]!r} was taken as an image)" if images else ""),
                         hint="migrate push-image IMAGE... HOST... (or name hosts with --host)")
    options = PushImageOptions(compress=compress, force_arch=force_arch, dry_run=dry_run, bwlimit=rate,
                               to_file=to_file, from_file=from_file, format=fmt, sif_dir=sif_dir,
                               step_bytes=step_bytes, direct_layers=not no_direct_layers, via=via,
                               registry_login=registry_login, relay=not no_relay)
    results = push_images(images, hosts, conn, options)
    failed = [r for r in results if r.status == "failed"]
    if failed and not as_json and len(failed) == len(results) and len({r.error for r in failed}) == 1:
        raise MigrateError(failed[0].error or "push failed")  # one cause: one line, like every verb
    if as_json:
        ui.print_json([asdict(r) for r in results])
    else:
        print_results(results)
    for r in failed:
        ui.error(f"{r.image} → {r.host}: {r.error}")
    sys.exit(1 if failed else 0)
