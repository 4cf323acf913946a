"""The documentation tells the truth about the code: every command in README.md and docs/*.md names a module,
script, config and flags that exist; every relative link resolves; nothing points outside the repository."""
import importlib.util
import re
import shlex
import subprocess

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh)?\n(.*?)```", re.S)


def commands(path):
    """(line, argv) of every `python …` command in the file's shell blocks (continuations joined)."""
    for block in FENCE.findall(path.read_text()):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if "python " not in line or line.startswith("#"):
                continue
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith(("python ", "python3 ")) or " python " in f" {part}":
                    argv = shlex.split(part[part.index("python"):].replace("…", "ELLIPSIS"))
                    yield line, argv


def module_source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, name
    path = spec.origin
    if path.endswith("__init__.py"):
        path = path[: -len("__init__.py")] + "__main__.py"
    text = open(path).read()
    if name == "mvboost.infer":  # the parser lives in __main__, the config in run.py
        text += open(path.replace("__main__.py", "run.py")).read()
    return text


def all_commands():
    return [(p.relative_to(REPO).as_posix(), line, argv) for p in DOCS for line, argv in commands(p)]


def test_the_docs_have_commands_to_check():
    found = all_commands()
    assert len(found) >= 30 and {f for f, _, _ in found} >= {"README.md", "docs/cluster.md", "docs/training.md"}


@pytest.mark.parametrize("where,line,argv", all_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_every_documented_command_names_what_exists(where, line, argv):
    args = argv[1:]
    if args[:1] == ["-m"]:
        module = args[1]
        if module in ("pytest", "pip"):
            return
        source = module_source(module)
        flags = args[2:]
    elif args and args[0].endswith(".py"):
        script = REPO / args[0]
        assert script.is_file(), (where, line)
        source, flags = script.read_text(), args[1:]
    elif args[:1] == ["-c"]:
        return
    else:
        raise AssertionError(f"{where}: cannot read {line!r}")
    for i, a in enumerate(flags):
        if a.startswith("--"):
            flag = a.split("=")[0]
            assert f'"{flag}"' in source, f"{where}: {flag} is not a flag of {args[:2]}: {line}"
        prev = flags[i - 1] if i else ""
        if prev == "--config" or (a.endswith((".yaml", ".yml")) and "/" in a and not a.startswith("s3:")):
            assert (REPO / a).is_file(), f"{where}: config {a} does not exist: {line}"


def test_every_relative_link_resolves_and_nothing_points_outside_the_repository():
    outside = "shared" + "/spec"  # split so this file does not match itself
    for path in DOCS:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"
        assert outside not in text and "../" not in re.sub(r"```.*?```", "", text, flags=re.S), path.name
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for name in tracked:
        p = REPO / name
        if p.suffix in (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".json", ".txt", ".js") and p.is_file():
            text = p.read_text(errors="replace")
            assert outside not in text, name
            # the words of the machine lending of the place this was written in mean nothing to a user
            assert not re.search(r"\b(when one is " + r"lent|lent (GPU|machine)|device " + r"tool)\b", text), name
            # notes are cited as the repository's own pages (docs/models.md, ...), not as a document users lack
            assert not re.search(r"\bspec" + r"(\s+\w+\.md|\s*§|'s key list)", text), name
