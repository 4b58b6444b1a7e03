import base64

import pytest

from migrate.errors import MigrateError, UsageError
from migrate.setup import sources
from migrate.setup.options import (
    DOCKER_MIRRORS,
    HostSetupOptions,
    nvidia_base_url,
    parse_docker_source,
    validate_options,
)


def cn(family, os_id, codename, ubuntu_codename="", version="", override=None):
    return sources.docker_codename(family, os_id, codename, ubuntu_codename, version, override)


def test_supported_codenames_are_used_as_they_are():
    assert cn("ubuntu", "ubuntu", "noble", "noble", "24.04").name == "noble"
    assert cn("debian", "debian", "bookworm", "", "12").name == "bookworm"
    assert cn("debian", "debian", "bookworm", "", "12").note == ""


def test_ubuntu_derivative_uses_ubuntu_codename():
    # Linux Mint 22: ID=linuxmint, VERSION_CODENAME=wilma, UBUNTU_CODENAME=noble
    assert cn("ubuntu", "linuxmint", "wilma", "noble", "22").name == "noble"


def test_interim_ubuntu_falls_back_to_newest_release_before_it_and_says_so():
    c = cn("ubuntu", "ubuntu", "zesty", "zesty", "25.04")
    assert c.name == "noble"
    assert "not in Docker's repository" in c.note and "noble (24.04)" in c.note


def test_unknown_codename_without_version_falls_back_to_newest():
    c = cn("debian", "kali", "kali-rolling", "", "2025.1")  # derivative: its VERSION_ID means nothing
    assert c.name == "trixie" and "newest" in c.note
    assert cn("debian", "debian", "forky", "", "").name == "trixie"


def test_too_old_release_is_an_error_with_hint():
    with pytest.raises(MigrateError) as exc:
        cn("ubuntu", "ubuntu", "bionic", "bionic", "18.04")
    assert "--codename" in exc.value.hint


def test_codename_override_wins():
    assert cn("ubuntu", "ubuntu", "plucky", "plucky", "25.04", override="jammy").name == "jammy"


def test_docker_sources_file_is_deb822_with_signed_by():
    text = sources.docker_sources("https://download.docker.com", "ubuntu", "noble", "amd64")
    assert "URIs: https://download.docker.com/linux/ubuntu\n" in text
    assert "Suites: noble\n" in text and "Components: stable\n" in text and "Architectures: amd64\n" in text
    assert "Signed-By: /etc/apt/keyrings/docker.asc\n" in text
    assert "apt-key" not in text


def test_mirror_rewrites_every_url():
    base = parse_docker_source("mirror:tuna").base_url
    text = sources.docker_sources(base, "debian", "bookworm", "arm64")
    assert "download.docker.com" not in text
    assert "URIs: https://mirrors.tuna.tsinghua.edu.cn/docker-ce/linux/debian" in text
    assert sources.docker_key_url(base, "debian") == "https://mirrors.tuna.tsinghua.edu.cn/docker-ce/linux/debian/gpg"
    nv = nvidia_base_url(HostSetupOptions(nvidia_mirror="ustc"))
    line = sources.nvidia_sources(nv)
    assert "nvidia.github.io" not in line
    assert line.endswith(f"deb [signed-by={sources.NVIDIA_KEYRING}] "
                         "https://mirrors.ustc.edu.cn/libnvidia-container/stable/deb/$(ARCH) /\n")
    assert sources.nvidia_key_url(nv) == "https://mirrors.ustc.edu.cn/libnvidia-container/gpgkey"


def test_parse_docker_source():
    assert parse_docker_source("official").base_url == "https://download.docker.com"
    assert parse_docker_source("official", "http://10.0.0.1:8080/docker/").base_url == "http://10.0.0.1:8080/docker"
    assert parse_docker_source("distro").uses_repo is False
    for name, url in DOCKER_MIRRORS.items():
        assert parse_docker_source(f"mirror:{name}").base_url == url
    assert parse_docker_source("mirror:https://m.example/docker-ce").base_url == "https://m.example/docker-ce"
    for bad in ("", "snap", "mirror", "mirror:", "mirror:nosuch", "mirror:ftp://x", "mirror:http://"):
        with pytest.raises(UsageError):
            parse_docker_source(bad)


@pytest.mark.parametrize("kwargs, needle", [
    ({"registry_mirrors": ["not a url"]}, "--registry-mirror"),
    ({"data_root": "relative/dir"}, "--data-root"),
    ({"data_root": "/"}, "--data-root"),
    ({"default_runtime": "nvidia", "nvidia": False}, "--no-nvidia"),
    ({"default_runtime": "crun"}, "--default-runtime"),
    ({"codename": "no/pe"}, "--codename"),
    ({"nvidia_mirror": "nowhere"}, "NVIDIA mirror"),
    ({"offline": "/nonexistent/dir"}, "--offline"),
    ({"verify_image": "--rm"}, "--verify-image"),
])
def test_bad_options_are_usage_errors(kwargs, needle):
    with pytest.raises(UsageError) as exc:
        validate_options(HostSetupOptions(**kwargs))
    assert needle in exc.value.message


def test_offline_dir_without_debs_is_refused(tmp_path):
    with pytest.raises(UsageError) as exc:
        validate_options(HostSetupOptions(offline=str(tmp_path)))
    assert "no .deb" in exc.value.message


def test_other_files_defining_same_repo():
    found = [("/etc/apt/sources.list.d/docker.list", "https://download.docker.com/linux/ubuntu"),
             ("/etc/apt/sources.list.d/docker.sources", "https://download.docker.com/linux/ubuntu/"),
             ("/etc/apt/sources.list", "http://archive.ubuntu.com/ubuntu")]
    assert sources.other_files_defining("https://download.docker.com/linux/ubuntu", found,
                                        sources.DOCKER_SOURCES_FILE) == ["/etc/apt/sources.list.d/docker.list"]
    assert sources.docker_ce_sources(found) == ["/etc/apt/sources.list.d/docker.list",
                                                "/etc/apt/sources.list.d/docker.sources"]


def test_legacy_nvidia_sources():
    found = [("/etc/apt/sources.list.d/nvidia-docker.list", "https://nvidia.github.io/nvidia-docker/ubuntu18.04/$(ARCH)"),
             ("/etc/apt/sources.list.d/x.list", "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)")]
    assert sources.legacy_nvidia_sources(found) == ["/etc/apt/sources.list.d/nvidia-docker.list"]


def _armor(raw: bytes, headers: str = "") -> bytes:
    b64 = base64.b64encode(raw).decode()
    body = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    head = headers + "\n" if headers else ""
    return (f"-----BEGIN PGP PUBLIC KEY BLOCK-----\n{head}\n{body}\n=abcd\n"
            "-----END PGP PUBLIC KEY BLOCK-----\n").encode()


def test_dearmor_matches_the_binary_packet_and_passes_binary_through():
    raw = bytes([0x99, 0x01, 0x0d]) + bytes(range(200))
    assert sources.dearmor(_armor(raw)) == raw
    assert sources.dearmor(_armor(raw, "Comment: GPGTools")) == raw
    assert sources.dearmor(raw) == raw
    assert sources.looks_like_key(_armor(raw))


@pytest.mark.parametrize("data", [b"<html>404 Not Found</html>", b"", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!\n"])
def test_dearmor_rejects_what_is_not_a_key(data):
    with pytest.raises(MigrateError):
        sources.dearmor(data)
    assert not sources.looks_like_key(data)
