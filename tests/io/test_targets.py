"""--overwrite's shared rule: an existing target only with the flag, and only a folder of the command's kind."""

from __future__ import annotations

import pytest

from forcedphot.errors import InputError
from forcedphot.io.targets import check_target, first_foreign


def _never_ours(path):
    return "not ours"


def test_a_missing_target_is_free_and_an_existing_one_needs_the_flag(tmp_path):
    assert check_target(tmp_path / "new", overwrite=False, foreign=_never_ours) is False
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match=r"out: exists; pass --overwrite to replace it$"):
        check_target(tmp_path / "out", overwrite=False, foreign=_never_ours)


def test_overwrite_takes_an_empty_folder_or_one_of_ours_and_refuses_anything_else(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert check_target(out, overwrite=True, foreign=_never_ours) is True  # empty: nothing to lose
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(InputError, match=r"out: not ours; refusing to overwrite it$"):
        check_target(out, overwrite=True, foreign=_never_ours)
    assert check_target(out, overwrite=True, foreign=lambda p: None) is True
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder; refusing to overwrite it"):
        check_target(tmp_path / "file", overwrite=True, foreign=lambda p: None)
    assert (out / "thesis.tex").read_text() == "mine" and (tmp_path / "file").read_text() == "x"


def test_first_foreign_names_one_entry_and_counts_the_rest():
    assert first_foreign([], what="forcedphot") is None
    assert first_foreign(["b", "a", "c"], what="forcedphot") == "holds a (and 2 more), which forcedphot did not write"
