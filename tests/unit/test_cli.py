"""The `heliosproxy` command line as a real subprocess: check-config, run, plugin, --version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
listen: 127.0.0.1:6432
auth:
  method: scram-sha-256
users:
  - {name: app, password: apppass}
nodes:
  - {name: primary, host: 127.0.0.1, port: 5432, role: primary}
"""


def heliosproxy(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heliosproxy", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    result = heliosproxy("--version")
    assert (result.returncode, result.stdout) == (0, "heliosproxy 0.1.0\n")


def test_check_config_good_file() -> None:
    result = heliosproxy("check-config", "config/heliosproxy.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config/heliosproxy.yaml: ok (2 nodes, 2 users)\n"
    assert result.stderr == ""


def test_check_config_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("port: 5432", "port: 5432, rol: standby"))
    result = heliosproxy("check-config", path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"{path}:7: nodes[0].rol: unknown key (did you mean 'role'?)\n"


def test_check_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    result = heliosproxy("check-config", path)
    assert result.returncode == 1
    assert result.stderr == f"{path}: cannot read: No such file or directory\n"


def test_check_config_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(GOOD + "pool: {size: 3\n")
    result = heliosproxy("check-config", path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{path}:9: invalid YAML: ")
    assert "Traceback" not in result.stderr


def test_run_with_a_bad_config_exits_1_without_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("scram-sha-256", "kerberos"))
    for flag in ("--config", "-c"):
        result = heliosproxy("run", flag, path)
        assert result.returncode == 1
        assert result.stderr == (
            f"{path}:3: auth.method: 'kerberos' is not one of trust, md5, scram-sha-256\n"
        )


def test_usage_errors_exit_2() -> None:
    assert heliosproxy().returncode == 2
    result = heliosproxy("run")
    assert result.returncode == 2
    assert "--config" in result.stderr
    assert heliosproxy("plugin").returncode == 2


def _plugin_files(directory: Path) -> Path:
    wasm = directory / "hello.wasm"
    wasm.write_bytes((REPO / "plugins" / "build" / "noop.wasm").read_bytes())  # make plugins built it
    (directory / "hello.yaml").write_text("name: hello\nversion: 1.0.0\nhooks: [pre_query]\n")
    return wasm


def test_plugin_keygen_sign_verify(tmp_path: Path) -> None:
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    wasm = _plugin_files(tmp_path)

    result = heliosproxy("plugin", "keygen", "--out", keys, "--name", "release")
    assert result.returncode == 0, result.stderr
    private, public = keys / "release.key", keys / "release.pub"
    assert str(private) in result.stdout
    assert str(public) in result.stdout
    assert private.stat().st_mode & 0o077 == 0

    result = heliosproxy("plugin", "sign", "--key", private, wasm)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hello.sig").is_file()
    assert str(tmp_path / "hello.sig") in result.stdout

    trust.mkdir()
    (trust / "release.pub").write_bytes(public.read_bytes())
    result = heliosproxy("plugin", "verify", "--trust-root", trust, wasm)
    assert (result.returncode, result.stdout) == (
        0,
        f"{wasm}: ok (plugin hello 1.0.0, ABI v1, hooks pre_query, signed by release)\n",
    )

    # the signature covers the manifest too
    (tmp_path / "hello.yaml").write_text("name: hello\nversion: 1.0.0\nhooks: [route]\n")
    result = heliosproxy("plugin", "verify", "--trust-root", trust, wasm)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"{wasm}: refused: signature: signature does not match any trusted key (tampered or unknown signer)\n"
    )


def test_plugin_errors(tmp_path: Path) -> None:
    wasm = _plugin_files(tmp_path)
    trust = tmp_path / "trust"
    trust.mkdir()
    heliosproxy("plugin", "keygen", "--out", trust, "--name", "k")

    result = heliosproxy("plugin", "verify", "--trust-root", trust, wasm)
    assert (result.returncode, result.stderr) == (1, f"{wasm}: refused: signature: unsigned: hello.sig not found\n")

    result = heliosproxy("plugin", "sign", "--key", tmp_path / "nokey.key", wasm)
    assert result.returncode == 1
    assert result.stderr == f"{wasm}: private key {tmp_path / 'nokey.key'} not found\n"

    result = heliosproxy("plugin", "keygen", "--out", trust, "--name", "k")
    assert result.returncode == 1
    assert result.stderr == f"{trust / 'k.key'} already exists; refusing to overwrite a key\n"


def test_check_config_reports_every_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listen: 127.0.0.1:6432\n"
        "pool: {size: many, mode: transaction}\n"
        "users:\n"
        "  - {name: app, password: apppass, pool_sise: 3}\n"
        "nodes:\n"
        "  - {name: primary, host: 127.0.0.1, port: 99999, role: primary}\n"
        "health: {interval: soon}\n"
    )
    result = heliosproxy("check-config", path)
    assert result.returncode == 1
    assert result.stderr == (
        f"{path}:2: pool.size: expected an integer, got string 'many'\n"
        f"{path}:4: users[0].pool_sise: unknown key (did you mean 'pool_size'?)\n"
        f"{path}:6: nodes[0].port: must be between 1 and 65535, got 99999\n"
        f"{path}:7: health.interval: bad duration 'soon' (use a number or a number with a unit:"
        " us, ms, s, m, h, d; e.g. 500ms, 1s, 1m30s)\n"
    )


def test_check_config_reports_every_cross_field_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD + "  - {name: primary, host: 127.0.0.2, role: primary}\nadmin: {users: [nobody]}\n")
    result = heliosproxy("check-config", path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines
    assert "duplicate node name 'primary'" in lines[0]
    assert "more than one node has role primary" in result.stderr
    assert "admin.users[0]: unknown user 'nobody'" in result.stderr
