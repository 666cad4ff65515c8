"""scripts/debian-mirror: image builds take the Debian mirror from the host's apt sources."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "debian-mirror"


def _mirror(etc: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        check=False,
        env={"APT_ETC": str(etc), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )


def test_deb822_sources_give_the_main_archive_not_security(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://mirror.example.org/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    result = _mirror(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "http://mirror.example.org/debian"


def test_one_line_sources_list_with_options(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb-src http://src.example.org/debian bookworm main\n"
        "deb [arch=arm64 signed-by=/usr/share/keyrings/x.gpg] http://ftp.example.net/debian bookworm main\n"
    )
    result = _mirror(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "http://ftp.example.net/debian"


def test_no_sources_is_a_clear_error(tmp_path: Path) -> None:
    result = _mirror(tmp_path)
    assert result.returncode == 1
    assert "no Debian mirror found" in result.stderr


def test_this_machine_has_a_mirror() -> None:
    result = _mirror(Path("/etc/apt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(("http://", "https://"))
