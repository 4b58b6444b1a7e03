import shlex
import subprocess

import pytest

from migrate.remote import shell

NASTY = ["plain", "a b", "it's", 'say "hi"', "$(touch /tmp/pwned)", "`id`", "x;rm -rf /", "*", "-rf", "",
         "tab\there", "new\nline", "ünïcödé"]


@pytest.mark.parametrize("arg", NASTY)
def test_quote_round_trips_through_a_real_shell(arg):
    out = subprocess.run(["sh", "-c", "printf %s " + shell.quote(arg)], capture_output=True, text=True).stdout
    assert out == arg


def test_join_keeps_each_argument_whole():
    cmd = shell.join(["printf", "%s\\n", *NASTY[:-3]])
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True).stdout
    assert out.split("\n")[:-1] == NASTY[:-3]


def test_sh_c_runs_script_under_sh_whatever_the_login_shell():
    cmd = shell.sh_c("echo $((1+2)) && echo 'q'")
    assert cmd.startswith("sh -c ")
    assert shlex.split(cmd)[2] == "echo $((1+2)) && echo 'q'"
    assert subprocess.run(["bash", "-c", cmd], capture_output=True, text=True).stdout == "3\nq\n"


def test_env_prefix_quotes_values_and_rejects_bad_names():
    assert shell.env_prefix({}) == ""
    assert shell.env_prefix({"A": "x y", "B_2": "$HOME"}) == "env A='x y' B_2='$HOME' "
    with pytest.raises(ValueError):
        shell.env_prefix({"A;rm": "1"})
    with pytest.raises(ValueError):
        shell.env_prefix({"1A": "1"})


def test_sudo_builders_wrap_in_sh_and_never_contain_a_password():
    nopw = shell.sudo_nopasswd("echo a > /etc/x")
    assert nopw.startswith("sudo -n -H sh -c ")
    pw = shell.sudo_with_password("true")
    assert "-S" in pw and shell.SUDO_PROMPT in shlex.split(pw)


def test_home_path_expands_home_but_not_the_rest():
    cmd = "printf %s " + shell.home_path(".migrate/a b $(x)")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, env={"HOME": "/h"}).stdout
    assert out == "/h/.migrate/a b $(x)"


def test_mkdir_private():
    assert shell.mkdir_private("/x y") == "mkdir -p '/x y' && chmod 700 '/x y'"


def test_one_sudo_mechanism_per_path():
    """OpenSSH-path sudo forms come from remote/shell.py; the sudo-mode check is the shared fragment."""
    import os
    import subprocess

    from migrate.image import remote as image_remote
    from migrate.remote import shell
    from migrate.remote.connection import Remote

    assert image_remote.stream_command("sudo-password", "docker load") == shell.sudo_first_line("docker load")
    assert image_remote.stream_command("sudo", "docker load") == shell.sudo_nopasswd("docker load")
    assert shell.sudo_first_line("x").startswith("sudo -S -k -p '' -H ")
    mode = subprocess.run(["sh", "-c", Remote.SUDO_MODE_SCRIPT], capture_output=True, text=True).stdout.strip()
    assert mode == ("root" if os.geteuid() == 0 else mode) and mode in ("root", "none", "nopasswd", "password")
