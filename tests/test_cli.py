import pytest

from forcedphot.cli import build_parser, main


@pytest.mark.parametrize("cmd", [[], ["simulate"], ["run"], ["sql"], ["status"], ["report"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as info:
        main(cmd + ["--help"])
    assert info.value.code == 0
    assert "usage: forcedphot" in capsys.readouterr().out


def test_simulate_refuses_to_overwrite(tiny_repo, capsys):
    assert main(["simulate", "--recipe", "tiny", "--repo", str(tiny_repo), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_parser_lists_every_command():
    text = build_parser().format_help()
    for cmd in ("simulate", "run", "sql", "status", "report"):
        assert cmd in text
