"""The malformed-input corpus (tests/corpus/, made by tests/corpus/make_corpus.py).

Each case pins its outcome: which rows a file keeps and why the others were dropped, or the
one-line reason naming the file and the rule when a ticker is skipped; for study files and
arguments, exit code 2, one line on stderr naming the file and rule, no traceback, and no storage.
"""

from pathlib import Path

import pytest
import yaml

from hpsearch.cli import main
from hpsearch.config import load_study
from hpsearch.data import load_bars
from tests.conftest import make_frame, tiny_study

CORPUS = Path(__file__).parent / "corpus"
MIN_ROWS = 5

# file -> (rows kept, {drop reason: rows}, first example, note) for files that stay usable
KEPT = {
    "good.csv": (12, {}, None, None),
    "nan-close.csv": (11, {"NaN or inf": 1}, "2021-01-07", None),
    "inf-volume.csv": (11, {"NaN or inf": 1}, "2021-01-07", None),
    "na-string.csv": (11, {"NaN or inf": 1}, "2021-01-07", None),
    "garbage-number.csv": (11, {"unparseable number": 1}, "2021-01-07", None),
    "zero-price.csv": (11, {"non-positive price": 1}, "2021-01-07", None),
    "negative-price.csv": (11, {"non-positive price": 1}, "2021-01-07", None),
    "negative-volume.csv": (11, {"negative volume": 1}, "2021-01-07", None),
    "high-below-low.csv": (11, {"OHLC inconsistent": 1}, "2021-01-07", None),
    "close-above-high.csv": (11, {"OHLC inconsistent": 1}, "2021-01-07", None),
    "open-below-low.csv": (11, {"OHLC inconsistent": 1}, "2021-01-07", None),
    "duplicate-date.csv": (12, {"duplicate date": 1}, "2021-01-07", "kept the first row of each"),
    "unsorted.csv": (12, {}, None, "dates were not in order; sorted them"),
    "zero-volume.csv": (12, {}, None, None),
    "bad-date.csv": (11, {"unparseable date": 1}, "line 5", None),
    "mixed-date-formats.csv": (11, {"unparseable date": 1}, "line 7", None),
    "latin1.csv": (12, {}, None, None),
}
# file -> the reason it is skipped (after "<file>: ")
SKIPPED = {
    "missing-volume.csv": "missing required column(s) volume (columns: Date, Open, High, Low, Close",
    "missing-date.csv": "missing required column(s) date",
    "no-header.csv": "missing required column(s) date, open, high, low, close, volume (columns: 2021-01-04",
    "text-volume.csv": "column 'Volume' is not numeric (e.g. '1.2M')",
    "decimal-comma.csv": "column 'Open' is not numeric (e.g. '100,00')",  # never silently 10000
    "empty-column.csv": "column 'Volume' has no values",
    "all-rows-bad.csv": "column 'Open' has no values",
    "unknown-date-format.csv": "column 'Date' holds no date in a known format (e.g. 'yesterday')",
    "empty.csv": "empty file",
    "header-only.csv": "too short: 0 usable rows, a window needs 5",
    "short.csv": "too short: 3 usable rows, a window needs 5",
    "ragged.csv": "not a readable CSV (Error tokenizing data. C error: Expected 7 fields in line 5, saw 9)",
    "corrupt.csv.gz": "corrupt gzip file",
    "binary.csv": "not a text file (binary content)",
}


def ticker(name: str) -> str:
    return name.split(".")[0].upper()


@pytest.fixture(scope="module")
def corpus_bars():
    return load_bars(CORPUS / "data", min_rows=MIN_ROWS)


def test_corpus_is_complete():
    on_disk = {p.name for p in (CORPUS / "data").iterdir()}
    assert on_disk == set(KEPT) | set(SKIPPED)
    studies = {p.name for p in (CORPUS / "studies").iterdir()}
    assert len(on_disk) + len(studies) + len(list((CORPUS / "long").iterdir())) >= 25


@pytest.mark.parametrize("name", sorted(KEPT))
def test_usable_file_keeps_what_it_can_and_counts_the_rest(corpus_bars, name):
    rows, dropped, example, note = KEPT[name]
    rep = corpus_bars.report.tickers[ticker(name)]
    assert rep.source == name and rep.skipped is None
    assert len(corpus_bars.frames[ticker(name)]) == rep.rows_kept == rows
    assert dict(rep.dropped) == dropped
    if example:
        assert rep.examples[next(iter(dropped))][0] == example
    if note:
        assert any(note in n for n in rep.notes), rep.notes
        assert any(n.startswith(f"{ticker(name)} ({name}): ") for n in corpus_bars.report.notes)


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_unusable_file_is_skipped_with_one_line_naming_file_and_rule(corpus_bars, name):
    why = corpus_bars.report.skipped[ticker(name)]
    assert why.startswith(f"{name}: "), why
    assert SKIPPED[name] in why, why
    assert "\n" not in why and ticker(name) not in corpus_bars.frames


def test_totals_add_up(corpus_bars):
    report = corpus_bars.report
    assert report.rows_dropped == sum(sum(r.dropped.values()) for r in report.tickers.values())
    assert report.dropped["OHLC inconsistent"] == 3 and report.zero_volume_rows == 2


def test_duplicate_date_keeps_the_first_row(corpus_bars):
    frame = corpus_bars.frames["DUPLICATE-DATE"].set_index("date")
    assert frame.loc["2021-01-07", "open"] == 103.0  # the later line's 1.00 was dropped


def test_zero_volume_switch(tmp_path):
    kept = load_bars(CORPUS / "data", tickers=("zero-volume",))
    dropped = load_bars(CORPUS / "data", tickers=("zero-volume",), drop_zero_volume=True)
    assert len(kept.frames["ZERO-VOLUME"]) == 12 and kept.report.zero_volume_rows == 2
    assert len(dropped.frames["ZERO-VOLUME"]) == 10 and dropped.report.dropped == {"zero volume": 2}
    assert dropped.report.zero_volume_rows == 2  # counted either way


def test_long_file_defects():
    bars = load_bars(CORPUS / "long")
    assert sorted(bars.frames) == ["AAA", "BBB"]
    assert bars.report.dropped == {"no ticker": 1} and len(bars.frames["AAA"]) == 11
    assert "long-no-ticker-values.csv: 1 row(s) without a ticker in 'Symbol'; dropped" in bars.report.notes
    # a long file without a required column is skipped once, by its name, not once per ticker
    assert bars.report.skipped == {"long-missing-volume.csv": "missing required column(s) volume"}


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    return tmp_path


def one_line_error(capsys, code: int, expected_code: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_data_check_on_the_corpus(workdir, capsys):
    assert main(["data", "check", "--data", str(CORPUS / "data"), "--seq-len", "4", "--horizon", "1"]) == 0
    out = capsys.readouterr().out
    assert "tickers: 31 found, 17 used, 14 skipped" in out
    assert "skipped 2 ticker(s) too short for seq_len + horizon + output_window - 1 = 5 rows" in out
    assert "OPEN-BELOW-LOW (open-below-low.csv): OHLC inconsistent 1 (2021-01-07)" in out
    assert "skipped TEXT-VOLUME: text-volume.csv: column 'Volume' is not numeric" in out
    assert "usable: 17 tickers" in out


def test_data_check_when_nothing_is_usable(workdir, capsys):
    bad = workdir / "bad"
    bad.mkdir()
    for name in ("text-volume.csv", "missing-date.csv", "empty.csv"):
        (bad / name).write_bytes((CORPUS / "data" / name).read_bytes())
    code = main(["data", "check", "--data", str(bad)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "tickers: 3 found, 0 used, 3 skipped" in out  # the summary still says why
    assert err.startswith(f"hpsearch: error: {bad}: no usable ticker (") and err.count("\n") == 1


def test_run_on_unusable_data_leaves_storage_alone(workdir, capsys):
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny_study(None)))
    code = main(["run", "--study", "tiny.yaml", "--data", str(CORPUS / "data" / "empty-column.csv")])
    err = one_line_error(capsys, code)
    assert "no usable ticker (EMPTY-COLUMN: empty-column.csv: column 'Volume' has no values)" in err
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d.mkdir(), "data folder holds no CSV files"),
        (lambda d: (d.mkdir(), (d / "prices.xlsx").write_bytes(b"PK")), "(it holds: prices.xlsx)"),
        (lambda d: None, "data folder not found"),
        (lambda d: d.write_text("hello"), "data path is a file but not a CSV"),
    ],
    ids=["empty-folder", "only-xlsx", "not-found", "not-a-csv-file"],
)
def test_whole_run_fatal_data_paths(workdir, capsys, setup, message):
    target = workdir / "input"
    setup(target)
    err = one_line_error(capsys, main(["data", "check", "--data", str(target)]))
    assert message in err and str(target) in err


def test_unreadable_folder(workdir, capsys, monkeypatch):
    (workdir / "locked").mkdir()

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    err = one_line_error(capsys, main(["data", "check", "--data", "locked"]))
    assert "cannot read data path locked: permission denied" in err


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    for name in ("good.csv", "short.csv"):
        (folder / name).write_bytes((CORPUS / "data" / name).read_bytes())
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "short.csv":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    bars = load_bars(folder)
    assert bars.report.skipped == {"SHORT": "short.csv: cannot read the file: permission denied"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seq-len", "2"], "data check: seq_len >= 4 must hold, got seq_len=2"),
        (["--horizon", "0"], "data check: horizon >= 1 must hold"),
    ],
)
def test_data_check_argument_rules(workdir, capsys, args, message):
    assert message in one_line_error(capsys, main(["data", "check", *args]))


@pytest.mark.parametrize(
    "args",
    [
        ["data", "check", "--seq-len", "abc"],
        ["run", "--study", "smoke", "--n-trials", "many"],
        ["data"],
        ["frobnicate"],
    ],
)
def test_argument_type_errors_are_usage_lines_not_tracebacks(workdir, capsys, args):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


# file -> the rule its one-line error states (after "<path>: ")
STUDIES = {
    "unknown-key.yaml": "unknown key 'trainig' (did you mean 'training'?)",
    "wrong-type.yaml": "training.batch_size: must be an integer, got 'big'",
    "low-above-high.yaml": "low <= high must hold, got low=0.1 high=0.01",
    "log-low-zero.yaml": "log=true needs low > 0, got low=0.0",
    "empty-categorical.yaml": "categorical needs a non-empty 'choices' list",
    "n-trials-zero.yaml": "n_trials >= 1 must hold, got n_trials=0",
    "unknown-family.yaml": "unknown family 'cnn' (did you mean 'cnn2d'?); valid: cnn2d",
    "unknown-sampler.yaml": "unknown sampler 'tpee' (did you mean 'tpe'?)",
    "unknown-pruner.yaml": "unknown pruner 'medain' (did you mean 'median'?)",
    "top-level-list.yaml": "a study file must be a mapping of sections, got list",
    "empty.yaml": "the study file is empty",
    "malformed.yaml": "malformed YAML at line 3",
    "python-tag.yaml": "malformed YAML",  # the safe loader knows no Python object tags
    "name-leaves-folder.yaml": "name may hold only letters, digits",
    "tab-indent.yaml": "malformed YAML at line 2",
    "search-not-mapping.yaml": "search must be a mapping",
    "unknown-search-param.yaml": "search.learning_rate: not a searchable parameter",
    "not-utf8.yaml": "not a text file (not UTF-8 at byte 6)",
}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_bad_study_file_is_one_line_and_leaves_storage_alone(workdir, capsys, name):
    path = CORPUS / "studies" / name
    err = one_line_error(capsys, main(["run", "--study", str(path)]))
    assert err.startswith(f"hpsearch: error: {path}: "), err
    assert STUDIES[name] in err, err
    assert not (workdir / "runs").exists()


def test_study_corpus_is_complete():
    on_disk = {p.name for p in (CORPUS / "studies").iterdir()}
    assert on_disk == set(STUDIES) | {"float-without-dot.yaml"}


def test_float_written_without_dot_is_a_number():
    cfg = load_study(str(CORPUS / "studies" / "float-without-dot.yaml"))
    assert cfg.training.lr == 3e-4 and cfg.search[0].low == 1e-5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--study", "../x"], "study name may hold only"),
        (["run", "--study", "/etc/passwd"], "study name may hold only"),
        (["run", "--study", "adir.yaml"], "study file is a directory, not a YAML file: adir.yaml"),
        (["run", "--study", "nope.yaml"], "study file not found: nope.yaml"),
    ],
)
def test_study_paths(workdir, capsys, args, message):
    (workdir / "adir.yaml").mkdir()
    assert message in one_line_error(capsys, main(args))
    assert not (workdir / "runs").exists()


def test_unreadable_study_file(workdir, capsys, monkeypatch):
    (workdir / "mine.yaml").write_text("n_trials: 2\n")

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    assert "mine.yaml: cannot read: Permission denied" in one_line_error(
        capsys, main(["run", "--study", "mine.yaml"])
    )


def test_unexpected_errors_are_one_line_unless_debug(workdir, capsys, monkeypatch):
    import hpsearch.datacheck

    def broken(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(hpsearch.datacheck, "check_data", broken)
    err = one_line_error(capsys, main(["data", "check"]), expected_code=1)
    assert "internal error: RuntimeError: boom (rerun with --debug for the traceback)" in err
    with pytest.raises(RuntimeError):
        main(["--debug", "data", "check"])


def test_data_check_when_rows_suffice_but_the_split_leaves_no_windows(workdir, capsys):
    make_frame(120).to_csv(workdir / "ONE.csv", index=False)  # 120 >= 96 + 20 rows, but 6:2:2 of it
    code = main(["data", "check", "--data", str(workdir)])
    out, err = capsys.readouterr()
    assert code == 2 and "tickers: 1 found, 1 used, 0 skipped" in out
    assert "no train windows" in err and err.count("\n") == 1
