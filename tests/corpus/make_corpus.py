"""Write the malformed-input corpus: tiny files, one defect each (run from the repository root).

    python tests/corpus/make_corpus.py

The files are committed; this script documents how each was made and rewrites them identically.
Expected outcomes live in tests/test_malformed.py.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
N_DAYS = 12


def good_rows(n: int = N_DAYS) -> list[list[str]]:
    """Consistent bars: Low <= Open, Close <= High, positive volume, business days from 2021-01-04."""
    rows = []
    for k, day in enumerate(pd.bdate_range("2021-01-04", periods=n)):
        o = 100 + k
        rows.append([day.strftime("%Y-%m-%d"), f"{o:.2f}", f"{o + 2:.2f}", f"{o - 2:.2f}", f"{o + 1:.2f}",
                     f"{o + 0.5:.2f}", str(1000 + 10 * k)])  # fmt: skip
    return rows


def csv(rows: list[list[str]], header: str = HEADER) -> str:
    return "\n".join([header, *(",".join(r) for r in rows)]) + "\n"


def patched(row: int, col: int, value: str) -> str:
    rows = good_rows()
    rows[row][col] = value
    return csv(rows)


# Columns: 0 Date, 1 Open, 2 High, 3 Low, 4 Close, 5 Adj Close, 6 Volume
def data_cases() -> dict[str, str | bytes]:
    rows = good_rows()
    dup = good_rows()
    dup.insert(4, [dup[3][0], "1.00", "2.00", "0.50", "1.50", "1.50", "5"])  # same date, later line
    unsorted = good_rows()
    unsorted[2], unsorted[7] = unsorted[7], unsorted[2]
    zero_vol = good_rows()
    zero_vol[0][6] = zero_vol[1][6] = "0"
    mixed_dates = good_rows()
    mixed_dates[5][0] = "01/11/2021"
    all_nan = [[r[0], "", "", "", "", "", ""] for r in good_rows()]
    ragged = csv(rows).splitlines()
    ragged[4] += ",1,2"
    return {
        "good.csv": csv(rows),
        "nan-close.csv": patched(3, 4, ""),
        "inf-volume.csv": patched(3, 6, "inf"),
        "na-string.csv": patched(3, 1, "n/a"),
        "garbage-number.csv": patched(3, 2, "abc"),
        "zero-price.csv": patched(3, 4, "0"),
        "negative-price.csv": patched(3, 3, "-1.5"),
        "high-below-low.csv": patched(3, 2, "99.00"),  # High 99 < Low 101
        "close-above-high.csv": patched(3, 4, "106.00"),  # High 105
        "open-below-low.csv": patched(3, 1, "100.50"),  # Low 101, like HUBB 2021-05-05
        "duplicate-date.csv": csv(dup),
        "unsorted.csv": csv(unsorted),
        "zero-volume.csv": csv(zero_vol),
        "negative-volume.csv": patched(3, 6, "-5"),
        "bad-date.csv": patched(3, 0, "2021-13-45"),
        "mixed-date-formats.csv": csv(mixed_dates),
        "missing-volume.csv": csv([r[:6] for r in rows], HEADER.rsplit(",", 1)[0]),
        "missing-date.csv": csv([r[1:] for r in rows], HEADER.split(",", 1)[1]),
        "text-volume.csv": csv([[*r[:6], "1.2M"] for r in rows]),
        "empty-column.csv": csv([[*r[:6], ""] for r in rows]),
        "header-only.csv": HEADER + "\n",
        "empty.csv": "",
        "no-header.csv": "\n".join(",".join(r) for r in rows) + "\n",
        "short.csv": csv(rows[:3]),
        "unknown-date-format.csv": csv([["yesterday", *r[1:]] for r in rows]),
        "decimal-comma.csv": "\n".join(
            [HEADER.replace(",", ";"), *(";".join(v.replace(".", ",") for v in r) for r in rows)]
        )
        + "\n",
        "all-rows-bad.csv": csv(all_nan),
        "ragged.csv": "\n".join(ragged) + "\n",
        "latin1.csv": (HEADER + ",Cl\xf4ture\n" + "\n".join(",".join([*r, "x"]) for r in rows) + "\n").encode(
            "latin-1"
        ),
        "corrupt.csv.gz": gzip.compress(csv(rows).encode())[:40],
        "binary.csv": bytes(range(256)) * 4,
    }


def long_cases() -> dict[str, str]:
    body = [[t, *r] for t in ("AAA", "BBB") for r in good_rows()]
    no_ticker = [list(r) for r in body]
    no_ticker[2][0] = ""
    return {
        "long-no-ticker-values.csv": csv(no_ticker, "Symbol," + HEADER),
        "long-missing-volume.csv": csv([r[:-1] for r in body], "Symbol," + HEADER.rsplit(",", 1)[0]),
    }


def study_cases() -> dict[str, str]:
    base = "search: {lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}\n"
    return {
        "unknown-key.yaml": "trainig: {lr: 0.001}\n" + base,
        "wrong-type.yaml": "training: {batch_size: big}\n" + base,
        "low-above-high.yaml": "search: {lr: {type: float, low: 0.1, high: 0.01}}\n",
        "log-low-zero.yaml": "search: {lr: {type: float, low: 0.0, high: 0.01, log: true}}\n",
        "empty-categorical.yaml": "search: {hidden: {type: categorical, choices: []}}\n",
        "n-trials-zero.yaml": "n_trials: 0\n" + base,
        "unknown-family.yaml": "model: {family: cnn}\n" + base,
        "unknown-sampler.yaml": "sampler: {name: tpee}\n" + base,
        "unknown-pruner.yaml": "pruner: {name: medain}\n" + base,
        "top-level-list.yaml": "- name: x\n- n_trials: 3\n",
        "empty.yaml": "",
        "malformed.yaml": "name: x\nsearch: {lr: [1, 2\n",
        "python-tag.yaml": "name: !!python/object/apply:os.system ['echo hi']\n",
        "name-leaves-folder.yaml": "name: ../x\n" + base,
        "tab-indent.yaml": "training:\n\tlr: 0.001\n",
        "search-not-mapping.yaml": "search: [lr, c1]\n",
        "unknown-search-param.yaml": "search: {learning_rate: {type: float, low: 0.1, high: 1}}\n",
        "float-without-dot.yaml": "training: {lr: 3e-4}\n"
        "search: {lr: {type: float, low: 1e-5, high: 1e-2, log: true}}\n",
    }


def write(folder: Path, files: dict[str, str | bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


if __name__ == "__main__":
    write(HERE / "data", data_cases())
    write(HERE / "long", long_cases())
    write(HERE / "studies", study_cases())
    (HERE / "studies" / "not-utf8.yaml").write_bytes(b"name: \xff\xfe\x00x\n")
