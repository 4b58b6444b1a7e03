"""Registry credentials from this machine's Docker credential store, and what the host is handed.

Read as the docker CLI reads them: `$DOCKER_CONFIG/config.json` (default `~/.docker`), its
`credHelpers` (per registry) and `credsStore` (all registries) through `docker-credential-<helper>
get` (the server URL on stdin, JSON out), else the base64 `auth` (or `identitytoken`) under `auths`.
`--registry-login REGISTRY` asks once instead. A `Credential` never prints its secret (repr), and the
only serialised form is `host_config_json`, which goes to the host on SSH stdin (registry.pull_script).
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from migrate import ui
from migrate.errors import MigrateError
from migrate.image.registry import DOCKER_HUB, DOCKER_HUB_AUTH_KEY


@dataclass(frozen=True)
class Credential:
    """A login for one registry. `identity_token` is an OAuth refresh token (helpers answer `<token>`)."""

    username: str = field(repr=False)
    secret: str = field(repr=False)
    identity_token: bool = False
    origin: str = ""  # where it came from, for messages: "config.json", "docker-credential-pass", "prompt"

    def __repr__(self) -> str:
        return f"Credential(origin={self.origin!r}, ***)"

    def probe_stdin(self) -> str:
        """What PROBE_SCRIPT reads on stdin."""
        if self.identity_token:
            return json.dumps({"identitytoken": self.secret})
        return json.dumps({"username": self.username, "password": self.secret})


def docker_config_dir(environ: dict | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _keys(registry: str) -> list[str]:
    """The spellings of a registry's key in `auths` (docker login has written all of them over the years)."""
    if registry == DOCKER_HUB:
        return [DOCKER_HUB_AUTH_KEY, "index.docker.io", "docker.io", "registry-1.docker.io",
                "https://registry-1.docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"https://{registry}/v2/"]


def _from_helper(helper: str, server: str) -> Credential | None:
    prog = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([prog, "get"], input=server, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        ui.warn(f"the Docker credential helper {prog} named in config.json is not installed; "
                f"no credentials for {server}")
        return None
    except subprocess.TimeoutExpired:
        ui.warn(f"{prog} did not answer within 30 s; no credentials for {server}")
        return None
    if proc.returncode != 0:
        return None  # "credentials not found in native keychain"
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return None
    user, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    if not secret:
        return None
    return Credential(user, secret, identity_token=user == "<token>", origin=prog)


def _from_auth_entry(entry: dict, origin: str) -> Credential | None:
    if entry.get("identitytoken"):
        return Credential("", str(entry["identitytoken"]), identity_token=True, origin=origin)
    auth = entry.get("auth")
    if auth:
        try:
            user, _, secret = base64.b64decode(auth).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credential(user, secret, origin=origin) if user else None
    if entry.get("username") and entry.get("password"):
        return Credential(str(entry["username"]), str(entry["password"]), origin=origin)
    return None


def lookup(registry: str, config_dir: Path | None = None) -> Credential | None:
    """The credential the docker CLI would use for `registry`, or None (anonymous)."""
    path = (config_dir or docker_config_dir()) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        ui.warn(f"cannot read {path}: {exc}; no registry credentials taken from it")
        return None
    keys = _keys(registry)
    helpers = config.get("credHelpers") or {}
    for key in keys:
        if key in helpers:
            return _from_helper(str(helpers[key]), key)
    auths = config.get("auths") or {}
    if config.get("credsStore"):
        found = _from_helper(str(config["credsStore"]), keys[0])
        if found:
            return found
    for key in keys:
        if key in auths:
            found = _from_auth_entry(auths[key] or {}, str(path))
            if found:
                return found
    return None


def ask(registry: str) -> Credential:
    """`--registry-login REGISTRY`: ask for a username and password once, on the terminal."""
    try:
        user = input(f"username for {registry}: ").strip()
        secret = getpass.getpass(f"password (or token) for {user}@{registry}: ")
    except (EOFError, KeyboardInterrupt):
        raise MigrateError(f"no login given for {registry}") from None
    if not user or not secret:
        raise MigrateError(f"no login given for {registry}", hint="give a username and a password or token")
    return Credential(user, secret, origin="prompt")


def host_config_json(auth_key: str, cred: Credential | None) -> str:
    """The config.json the host's docker CLI gets in its temporary DOCKER_CONFIG (stdin only)."""
    if cred is None:
        return json.dumps({"auths": {}})
    if cred.identity_token:
        entry = {"identitytoken": cred.secret}
    else:
        entry = {"auth": base64.b64encode(f"{cred.username}:{cred.secret}".encode()).decode()}
    return json.dumps({"auths": {auth_key: entry}})
