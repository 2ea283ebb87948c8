"""The documentation: the site builds with warnings as errors, and its tested examples run.

An example is tested when its fenced block's info string is ``console tested`` or ``pycon tested``
(MyST and GitHub show it as a console or Python session; the second word is ignored there):

* ``console``: each ``$ command`` line (``\\`` continues it) runs in the page's folder, ``forcedphot``
  commands in this process (``forcedphot.cli.main``), anything with shell syntax through ``bash``;
  the lines up to the next ``$`` are its expected stdout and stderr, compared as doctest does with
  ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE`` (``...`` stands for any text). A command must exit 0
  unless it ends with ``; echo $?``, whose status is then part of the output.
* ``pycon``: a doctest; the blocks of one page share their names.

The README's examples run first, in an empty folder: they simulate and measure the ``tiny`` survey
into ``./repo``. Each page under ``docs/`` then runs its examples in a folder of its own holding a
copy of that repository.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
STATUS = "; echo $?"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # as forcedphot.cli.main configures logging


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    kind: str  # console or pycon
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def marked_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file marked ``tested``, in order (nested fences are content)."""
    from markdown_it import MarkdownIt

    blocks = []
    for token in MarkdownIt("commonmark").parse(path.read_text()):
        words = token.info.split() if token.type == "fence" else []
        if "tested" in words[1:]:
            if words[0] not in ("console", "pycon"):
                raise ValueError(f"{path}:{token.map[0] + 1}: only console and pycon blocks can be tested, "
                                 f"not {words[0]!r}")
            blocks.append(Block(path, token.map[0] + 1, words[0], token.content))
    return blocks


def doc_pages() -> list[Path]:
    """The site's Markdown pages (docs/incoming/ holds notes that are not part of it)."""
    return sorted(p for p in DOCS.rglob("*.md") if not {"incoming", "_build"} & set(p.relative_to(DOCS).parts))


def console_steps(text: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    steps: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            steps.append((command, []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"output before the first command: {line!r}")
        i += 1
    return [(command, "\n".join(out).strip()) for command, out in steps]


def _needs_shell(command: str) -> bool:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    return words[0] != "forcedphot" or any(set(w) <= set("();<>|&") for w in words)


def _forcedphot(command: str) -> tuple[int, str]:
    """Run ``forcedphot ...`` in this process: its exit code and its stdout, stderr and warnings in order."""
    from forcedphot.cli import main

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(shlex.split(command)[1:])
    finally:
        root.removeHandler(handler)
    return code, out.getvalue()


def _bash(command: str, cwd: Path) -> tuple[int, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONUNBUFFERED="1")  # stdout and stderr interleaved as on a terminal
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    return proc.returncode, proc.stdout


def run_console(block: Block, cwd: Path) -> list[str]:
    failures = []
    checker = doctest.OutputChecker()
    for command, want in console_steps(block.text):
        show_status = command.endswith(STATUS)
        core = command[: -len(STATUS)] if show_status else command
        if _needs_shell(core):
            code, got = _bash(command, cwd)
        else:
            code, got = _forcedphot(core)
            if show_status:
                got += f"{code}\n"
                code = 0
        want_text = want + "\n" if want else ""
        if code != 0 or not checker.check_output(want_text, got, FLAGS):
            failures.append(f"{block.where}: $ {command}\n(exit {code})\n--- expected\n{want_text}--- got\n{got}")
    return failures


def run_pycon(block: Block, globs: dict) -> list[str]:
    test = doctest.DocTestParser().get_doctest(block.text, globs, block.where, str(block.path), block.line)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    runner.run(test, out=report.write, clear_globs=False)
    globs.update(test.globs)  # the DocTest ran in a copy of them
    return [report.getvalue()] if runner.failures else []


def run_examples(path: Path, cwd: Path) -> list[str]:
    """Run the tested examples of one page in ``cwd``, in order; the failures (empty: all passed)."""
    failures: list[str] = []
    globs: dict = {"__name__": "__docs__"}
    before = Path.cwd()
    os.chdir(cwd)
    try:
        for block in marked_blocks(path):
            failures += run_console(block, cwd) if block.kind == "console" else run_pycon(block, globs)
    finally:
        os.chdir(before)
    return failures


@pytest.fixture(scope="module")
def readme_examples(tmp_path_factory):
    """The README's examples run in an empty folder: (the folder, their failures)."""
    from forcedphot.compile import ensure_compiled

    ensure_compiled(say=lambda line: None)  # a cold cache is not what the examples show
    work = tmp_path_factory.mktemp("readme")
    return work, run_examples(README, work)


def test_readme_examples(readme_examples):
    work, failures = readme_examples
    kinds = {b.kind for b in marked_blocks(README)}
    assert kinds == {"console", "pycon"}, f"the README should have tested console and pycon examples, has {kinds}"
    assert not failures, "\n\n".join(failures)
    assert (work / "repo" / "forced_source").is_dir()


PAGES_WITH_EXAMPLES = [p for p in doc_pages() if marked_blocks(p)]


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=[str(p.relative_to(DOCS)) for p in PAGES_WITH_EXAMPLES])
def test_page_examples(page, readme_examples, tmp_path):
    work, readme_failures = readme_examples
    assert not readme_failures, "the README's examples failed; they make the repository the pages start from"
    shutil.copytree(work / "repo", tmp_path / "repo")
    failures = run_examples(page, tmp_path)
    assert not failures, "\n\n".join(failures)


def test_the_guide_has_tested_examples():
    """The pages of each task keep examples that run (a rewrite that drops them is noticed)."""
    guide = {p.stem for p in PAGES_WITH_EXAMPLES if p.parent.name == "guide"}
    assert {"ingest", "run", "query", "report", "operations", "simulate"} <= guide, guide


def test_console_steps_parse_continuations_and_outputs():
    steps = console_steps("$ forcedphot sql --repo repo \\\n    'SELECT 1'\nx\n...\n$ ls; echo $?\n0\n")
    assert steps == [("forcedphot sql --repo repo 'SELECT 1'", "x\n..."), ("ls; echo $?", "0")]
    assert _needs_shell("ls notes") and _needs_shell("forcedphot run --repo r > /dev/null")
    assert not _needs_shell("forcedphot sql --repo r 'SELECT a > 1; SELECT 2'")


def test_docs_build_without_warnings(tmp_path):
    """sphinx-build -W into a fresh folder; the generated reference pages hold the code's parser,
    docstrings and every schema column."""
    out = tmp_path / "html"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout
    cli = (out / "reference" / "cli.html").read_text()
    for option in ("--max-rows", "--overwrite", "--history", "--patch-size", "--highest-order"):
        assert option in cli, option
    api = (out / "reference" / "api.html").read_text()
    for name in ("query.load_forced_source", "query.load_object", "query.sql", "runner.run_all",
                 "config.ForcedPhotConfig", "task.ForcedPhotCoaddTask", "ingest.ingest_fits", "report.write_report"):
        assert f'id="forcedphot.{name}"' in api, name
    columns = (out / "reference" / "columns.html").read_text()
    from forcedphot.schema import load_schema

    for dataset, table in (("forced_source", None), ("ref", None), ("coadd", None), ("ledger", "quanta")):
        schema = load_schema(dataset, table)
        missing = [c.name for c in schema.columns if f">{c.name}<" not in columns]
        assert not missing, f"{dataset}: columns missing from the reference: {missing[:5]}"
    assert "stat.error;phot.flux" in columns and "nJy" in columns
    assert not (out / "incoming").exists()
