"""The README's runnable Python example runs as written (its output folders moved under the test's tmp_path,
its data read from where the tests read it) and finds what it says."""

from __future__ import annotations

import contextlib
import io
import re

from hashindex import ShardSet
from tests.conftest import CIFAR_TEST, CIFAR_TRAIN, DATA, ROOT, need


def runnable_example() -> str:
    """The first ```python block after the words 'A runnable example' in README.md."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index("A runnable example"):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    need(CIFAR_TEST)
    need(CIFAR_TRAIN)
    code = runnable_example().replace('"/tmp/', f'"{tmp_path}/').replace("../shared/data", str(DATA))
    assert str(tmp_path) in code and "/tmp/api" not in code
    monkeypatch.chdir(ROOT)
    out, names = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), names)
    last = out.getvalue().splitlines()[-1]  # after extract's summary line
    match = re.fullmatch(r"(\S+) -> \[([\d ]+)\] \[[\d ]+\]", last)
    assert match, last
    member, ids = match.groups()
    ids = [int(i) for i in ids.split()]
    shards = ShardSet(names["shards"])
    assert shards.rows == 2000 and len(ids) == 5 and all(0 <= i < 2000 for i in ids)
    labels = shards.load(("ids", "labels"))  # the training photo's class is among what it finds
    found = {shards.class_names[labels["labels"][list(labels["ids"]).index(i)]] for i in ids}
    assert member.split("/")[-2] in found, (member, found)


def test_tools_readme_lists_every_script_and_only_scripts_that_exist():
    text = (ROOT / "tools" / "README.md").read_text()
    listed = set(re.findall(r"`([\w-]+\.(?:py|sh))`", text))
    scripts = {p.name for p in (ROOT / "tools").iterdir() if p.suffix in (".py", ".sh")}
    assert scripts - listed == set(), "scripts missing from tools/README.md"
    assert listed - scripts == set(), "tools/README.md names scripts that do not exist"
