"""scripts/bench.py --quick end to end on tiny data: every section reports (timings are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_folder

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.mark.slow
def test_quick_benchmark_prints_one_table_with_every_section(tmp_path):
    folder = write_folder(tmp_path / "bars", n_tickers=4, n_days=400)
    record = tmp_path / "bench.json"
    args = ["--quick", "--data", str(folder), "--threads", "1", "--device", "cpu", "--json", str(record)]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.count("hpsearch speed") == 1  # one table
    rows = json.loads(record.read_text())["rows"]
    sections = ("1 data prep", "2 CNN train", "3 validation", "4 time to answer", "5 search", "6 Transformer")
    for section in sections:
        assert section in text and any(r["section"].startswith(section) for r in rows), section
    assert "4 of 4 tickers" in rows[0]["what"]  # section 1 ran on the folder given
    assert all(r["ours"] for r in rows)
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_missing_data_folder_skips_the_full_size_run_with_a_message(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "1", "--data", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "not found: the full-size run is skipped" in out.stdout
    assert "shipped sample, 24 tickers" in out.stdout
