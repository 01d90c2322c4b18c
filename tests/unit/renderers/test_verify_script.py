"""renderers/verify_script.py with host/steps/verify/check.sh: every check, run against stand-in `curl`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from renderers.verify_script import VerifySpec, curl_user_line, render_verify_script, verify_stdin
from tests.unit.support import DOMAIN, shellcheck


@pytest.mark.parametrize(
    ("password", "line"),
    [
        ("abcXYZ123", 'user = "robot_user:abcXYZ123"'),
        ('a"b\\c', 'user = "robot_user:a\\"b\\\\c"'),
    ],
)
def test_credentials_are_curl_config_lines(password: str, line: str) -> None:
    assert curl_user_line("robot_user", password) == line


def test_verify_stdin_holds_push_then_pull() -> None:
    assert verify_stdin("robot_user", "P1", "k3s_pull", "P2") == (
        'user = "robot_user:P1"\nuser = "k3s_pull:P2"\n'
    )


def test_verify_script_checks_every_promise_of_the_site() -> None:
    script = render_verify_script(VerifySpec(domain=DOMAIN))
    assert f"REGISTRY={DOMAIN}\n" in script and 'BASE="https://$REGISTRY"' in script
    wanted = {
        "anonymous GET /v2/ is challenged": "401 anon GET",
        "push credential GET /v2/": "200 push GET",
        "pull credential GET /v2/": "200 pull GET",
        "pull credential is refused a write (POST blob upload)": "403 pull POST",
    }
    for name, expectation in wanted.items():
        assert f"check '{name}' {expectation} " in script
    assert 'check "push credential pushes $PROBE:$TAG" 201 push PUT' in script
    assert 'check "pull credential reads $PROBE:$TAG" 200 pull GET' in script
    assert "K3S=no\n" in script


def test_verify_pulls_through_k3s_crictl_only_when_k3s_trusts_the_registry() -> None:
    with_k3s = render_verify_script(VerifySpec(domain=DOMAIN, k3s=True))
    assert "K3S=yes\n" in with_k3s
    assert 'out=$(k3s crictl pull "$ref" 2>&1)' in with_k3s
    # crictl reads the credential from registries.yaml; `ctr --user` would need it on the command line.
    assert "ctr" not in with_k3s.replace("crictl", "")


def test_verify_trusts_the_registry_ca_file_when_set() -> None:
    assert "curl_tls() { curl \"$@\"; }" in render_verify_script(VerifySpec(domain=DOMAIN))
    with_ca = render_verify_script(VerifySpec(domain=DOMAIN, ca_file="/etc/rancher/k3s/ca 1.pem"))
    assert "curl_tls() { curl --cacert '/etc/rancher/k3s/ca 1.pem' \"$@\"; }" in with_ca


def test_verify_reads_credentials_from_stdin_and_never_passes_them_as_arguments() -> None:
    script = render_verify_script(VerifySpec(domain=DOMAIN, k3s=True))
    assert "IFS= read -r push_auth" in script and "IFS= read -r pull_auth" in script
    # printf is a shell builtin: the credential goes down the pipe into `curl -K -`, never into an argv.
    assert "printf '%s\\n' \"$push_auth\" ;;" in script and "-K -" in script
    assert script.count("push_auth") == 3 and script.count("pull_auth") == 3  # read, empty check, printf
    assert " -u \"" not in script and "--user" not in script and "Authorization" not in script


@pytest.mark.parametrize(
    "spec",
    [VerifySpec(domain=DOMAIN), VerifySpec(domain=DOMAIN, ca_file="/etc/ca.pem", k3s=True, allowlist=True)],
    ids=["plain", "every-option"],
)
def test_verify_script_passes_shellcheck(tmp_path: Path, spec: VerifySpec) -> None:
    shellcheck(tmp_path, {"verify": render_verify_script(spec)})


def _fake_tools(tmp_path: Path, codes: dict[str, str]) -> Path:
    """A PATH with a curl that answers by (user, method) and a k3s that succeeds; records curl's argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cases = "\n".join(f'  "{key}") code={code} ;;' for key, code in codes.items())
    (bin_dir / "curl").write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> {tmp_path}/argv\n'
        'cfg=$(cat); user=$(printf "%s" "$cfg" | sed -n \'s/^user = "\\([^:]*\\):.*/\\1/p\')\n'
        'method=GET; out=/dev/null; hdr=/dev/null\n'
        'while [ $# -gt 0 ]; do case "$1" in -X) method=$2; shift ;; -o) out=$2; shift ;; -D) hdr=$2; shift ;; esac; shift; done\n'
        'case "${user:-anon} $method" in\n'
        f"{cases}\n"
        "  *) code=200 ;;\n"
        "esac\n"
        'printf "Location: /v2/ops/verify-probe/blobs/uploads/u1?_state=x\\r\\n" > "$hdr"\n'
        'printf "body" > "$out"\n'
        'printf "%s" "$code"\n'
    )
    (bin_dir / "k3s").write_text("#!/bin/sh\necho 'Image is up to date for sha256:abc'\n")
    for tool_file in bin_dir.iterdir():
        tool_file.chmod(0o755)
    return bin_dir


def _run_verify(tmp_path: Path, codes: dict[str, str], k3s: bool = True) -> subprocess.CompletedProcess[str]:
    bin_dir = _fake_tools(tmp_path, codes)
    script = render_verify_script(VerifySpec(domain=DOMAIN, k3s=k3s, deadline_seconds=0))
    return subprocess.run(
        ["sh", "-c", script],
        input=verify_stdin("robot_user", "SECRET-push-pw", "k3s_pull", "SECRET-pull-pw"),
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=False,
        timeout=60,
    )


def test_verify_passes_when_every_answer_is_right(tmp_path: Path) -> None:
    result = _run_verify(
        tmp_path,
        {"anon GET": "401", "k3s_pull POST": "403", "robot_user POST": "202", "robot_user PUT": "201"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("verify: ok:") == 11  # 4 site checks, 2x(start, upload), manifest, pull read, k3s
    assert "verify: all checks passed for https://registry.example.com" in result.stdout
    argv = (tmp_path / "argv").read_text()
    assert "SECRET" not in argv
    assert "https://registry.example.com/v2/ops/verify-probe/blobs/uploads/u1?_state=x&digest=sha256:" in argv


def test_failed_check_names_it_with_got_and_expected_and_no_secret(tmp_path: Path) -> None:
    result = _run_verify(
        tmp_path,
        {"anon GET": "401", "k3s_pull POST": "201", "robot_user POST": "202", "robot_user PUT": "201"},
    )
    assert result.returncode == 1
    assert (
        "verify: FAILED: pull credential is refused a write (POST blob upload): got HTTP 201, expected 403"
        in result.stderr
    )
    assert "verify: 1 check(s) failed for https://registry.example.com" in result.stderr
    assert "SECRET" not in result.stdout + result.stderr


def test_probe_push_failure_skips_the_pull_checks(tmp_path: Path) -> None:
    result = _run_verify(tmp_path, {"anon GET": "401", "k3s_pull POST": "403", "robot_user POST": "401"})
    assert result.returncode == 1
    assert "got HTTP 401, expected 202" in result.stderr
    assert "the pull checks were skipped" in result.stderr
    assert "k3s" not in result.stdout
