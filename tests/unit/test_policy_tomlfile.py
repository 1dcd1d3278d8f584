"""TOML policy files (SPEC section 5)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from stockade.errors import PolicyError
from stockade.policy.builder import PolicyBuilder
from stockade.policy.model import Action, Bind, Category, Lock, Policy, Rlimit, Rule
from stockade.policy.tomlfile import apply_toml, dump_toml, load_toml, loads_toml

A = Action.ALLOW


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        profile = "none"
        read = ["/usr"]
        write = ["/tmp/job"]
        exec = ["/opt/bin"]
        deny = ["/usr/secret"]
        net_allow = ["127.0.0.1:8080"]
        net_bind = ["8000-8001", 9000]
        rules = ["sandbox/stat:on"]
        no_net = true
        unshare = ["net", "user"]
        root = "tmpfs"
        bind = ["/src:/dst:ro"]
        tmpfs = ["/scratch"]
        hostname = "box"
        memory = "512M"
        max_procs = 32
        timeout = 1.5
        clean_env = true
        cwd = "/work"
        lock = true
        log = "/tmp/log.jsonl"
        ipc = "@ctl"
        pty = true
        no_aslr = true
        no_thp = true
        cpus = [0, 1]
        private_tmp = true

        [rlimit]
        nofile = 256
        core = "0"

        [env]
        LANG = "C"
        """,
    )
    p = load_toml(path)
    assert p.rules[:2] == (Rule(A, Category.READ, "/usr/***"), Rule(A, Category.EXEC, "/usr/***"))
    assert Rule(A, Category.NET_BIND, "*!9000") in p.rules
    assert Category.STAT in p.enabled
    assert (p.memory, p.max_procs, p.timeout) == (512 << 20, 32, 1.5)
    assert p.rlimits == (Rlimit("core", 0, 0), Rlimit("nofile", 256, 256))
    assert p.env == (("LANG", "C"),)
    assert p.binds == (Bind("/src", "/dst", True),)
    assert p.unshare == frozenset({"net", "user"})
    assert p.lock is Lock.ON
    assert (p.no_net, p.clean_env, p.pty, p.no_aslr, p.no_thp, p.private_tmp) == (True,) * 6
    assert (p.root, p.hostname, p.cwd, p.log, p.ipc) == (
        "tmpfs",
        "box",
        "/work",
        "/tmp/log.jsonl",
        "@ctl",
    )
    assert p.cpus == (0, 1)
    assert p.tmpfs == ("/scratch",)
    assert Policy.from_toml(path) == p


def test_keys_apply_in_fixed_order(tmp_path: Path) -> None:
    # rules is written first but applied after read, so the removal works.
    path = write(
        tmp_path,
        """
        rules = ["allow/exec-/usr/***"]
        read = ["/usr"]
        """,
    )
    assert load_toml(path).rules == (Rule(A, Category.READ, "/usr/***"),)


def test_no_filesystem_key_gets_default_profile(tmp_path: Path) -> None:
    p = load_toml(write(tmp_path, 'memory = "1G"\n'))
    assert Rule(A, Category.READ, "/usr/***") in p.rules
    assert p.private_tmp


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("frobnicate = 1", "job.toml: frobnicate: unknown key; expected one of bind, clean_env"),
        ('config = "x.toml"', "job.toml: config: unknown key"),
        ("memory = [1]", 'job.toml: memory: expected a size like "512M" (got [1])'),
        ("memory = true", 'job.toml: memory: expected a size like "512M" (got True)'),
        ('read = "/usr"', "job.toml: read: expected a list of strings (got '/usr')"),
        ("read = [1]", "job.toml: read: expected a list of strings (got [1])"),
        ('read = ["usr"]', "job.toml: read: relative path 'usr': expected an absolute path"),
        ('deny = ["*.key"]', "job.toml: deny: bad pattern '*.key': expected an absolute path"),
        ('cwd = "work"', "job.toml: cwd: relative path 'work'"),
        ('bind = ["src:/dst"]', "job.toml: bind: relative path 'src'"),
        (
            'rules = ["allow/reed+/x"]',
            "job.toml: rules: 'allow/reed+/x': unknown category 'reed'; expected one of read",
        ),
        ('rules = ["allow/read+x"]', "job.toml: rules: 'allow/read+x': bad pattern 'x'"),
        ('rules = ["ping"]', "job.toml: rules: 'ping': 'ping' is a control-socket command"),
        ("max_procs = 1.5", "job.toml: max_procs: expected a positive integer (got 1.5)"),
        ('timeout = "soon"', "job.toml: timeout: expected seconds like 30"),
        ('pty = "yes"', "job.toml: pty: expected true or false (got 'yes')"),
        ('profile = "lax"', "job.toml: profile: unknown profile 'lax'"),
        ('net_allow = ["host:99999"]', "job.toml: net_allow: bad port '99999'"),
        ("net_bind = [1.5]", "job.toml: net_bind: expected a list of strings or integers"),
        ("[rlimit]\nnofile = 1.5", "job.toml: rlimit.nofile: expected an integer or a string"),
        ("[rlimit]\nfiles = 1", "job.toml: rlimit.files: unknown rlimit 'files'"),
        ("[env]\nA = 1", "job.toml: env.A: expected a string (got 1)"),
        ('unshare = ["mnt"]', "job.toml: unshare: unknown namespace 'mnt'"),
        ("cpus = [0.5]", "job.toml: cpus: expected a list of CPU numbers"),
        ("hostname = 5", "job.toml: hostname: expected a hostname"),
        ("lock = 1", 'job.toml: lock: expected true, false or "exec" (got 1)'),
        ("memory = 2023-01-01", "job.toml: memory: expected a size"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(PolicyError) as info:
        load_toml(path)
    rendered = str(info.value).replace(str(tmp_path) + "/", "")
    assert rendered.startswith(message), rendered
    assert info.value.source == path


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'read = ["/usr"]\nmemory = \n')
    with pytest.raises(PolicyError) as info:
        load_toml(path)
    assert str(info.value).startswith(f"{path}: invalid TOML: ")
    assert "line 2" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(PolicyError) as info:
        load_toml(path)
    assert (
        str(info.value)
        == f"{path}: cannot read the policy file: ENOENT (No such file or directory)"
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b'hostname = "\xff"\n')
    with pytest.raises(PolicyError, match="invalid TOML"):
        load_toml(str(path))


def test_apply_toml_inside_a_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'read = ["/data"]\nmemory = "1G"\n')
    b = PolicyBuilder("stockade run", relative_base="/home", key_names={"read": "-r"})
    b.read("/usr")
    apply_toml(b, path)
    p = b.set("memory", "2G").build()
    assert [r.pattern for r in p.rules] == ["/usr/***"] * 2 + ["/data/***"] * 2
    assert p.memory == 2 << 30
    # A file's relative path is an error even though the command line has a base.
    bad = write(tmp_path, 'read = ["data"]\n')
    with pytest.raises(PolicyError) as info:
        apply_toml(b, bad)
    assert str(info.value).startswith(f"{bad}: read: relative path 'data'")
    assert b.source == "stockade run"


def test_dump_example() -> None:
    p = (
        PolicyBuilder("t")
        .read("/usr")
        .set("memory", "512M")
        .set("timeout", 30)
        .set("rlimit", "nofile=256:1024")
        .set("rlimit", "core=0")
        .set("env", 'Q="\\\x7f\u2028😀\t\n\x01')
        .set("unshare", "net")
        .build()
    )
    text = dump_toml(p)
    assert 'profile = "none"' in text
    assert 'memory = "512M"' in text
    assert 'nofile = "256:1024"' in text
    assert "core = 0" in text
    assert loads_toml(text) == p


def test_dump_policy_without_filesystem_rules_stays_empty() -> None:
    p = Policy(memory=1 << 20)
    assert loads_toml(dump_toml(p)) == p


def test_dump_refuses_text_toml_cannot_carry() -> None:
    p = Policy(cwd="/bad\udcff")
    with pytest.raises(PolicyError, match="not valid Unicode"):
        dump_toml(p)
