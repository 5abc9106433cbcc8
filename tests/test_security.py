"""Security rules that hold for the whole code base: safe YAML, weights-only checkpoints, masked
passwords. Source scans, so that a new module cannot quietly break them."""

import ast
from pathlib import Path

import pytest

from hpsearch.cli import main
from hpsearch.errors import mask_url

PACKAGE = Path(__file__).resolve().parents[1] / "hpsearch"


def calls(name: str):
    """(file, line, call node) for every call of `module.name(...)` in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                yield path.name, node.lineno, node


def test_every_torch_load_is_weights_only():
    # A pickled checkpoint runs arbitrary code on load; weights_only=True refuses anything but tensors.
    for where, line, node in calls("load"):
        if ast.unparse(node.func.value) != "torch":
            continue
        kw = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in kw and ast.literal_eval(kw["weights_only"]) is True, f"{where}:{line}"


def test_yaml_is_only_read_with_the_safe_loader():
    for where, line, node in calls("load"):
        assert ast.unparse(node.func.value) != "yaml", f"{where}:{line}: use yaml.safe_load"
    assert not list(calls("unsafe_load")) and not list(calls("full_load"))


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://user:s3cret@host/db", "s3cret"),
        ("postgresql+psycopg2://user:p%40ss%2Fw@host:5432/db", "p%40ss"),
        ("postgresql://user:p@ss@host/db", "ss@"),  # an unencoded @ must not leave half the password
        ("postgresql://:s3cret@host/db", "s3cret"),  # no user name
        ("postgresql://host/db?user=u&password=s3cret&sslmode=require", "s3cret"),
        ("host=h port=5432 password=s3cret dbname=x", "s3cret"),  # libpq connection string
        ("mysql://a:s3cret@h/db and postgresql://b:0ther@h/db", "0ther"),
    ],
)
def test_passwords_are_masked(url, secret):
    masked = mask_url(f"cannot open storage '{url}': refused")
    assert secret not in masked and "***" in masked
    assert "s3cret" not in masked


def test_urls_without_password_are_unchanged():
    for url in ("sqlite:///runs/hpsearch.db", "postgresql://user@host/db", "sqlite:////abs/path.db"):
        assert mask_url(url) == url


def test_password_in_query_is_masked_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = "postgresql://127.0.0.1:1/none?user=u&password=s3cret"
    assert main(["studies", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "password=***" in err
