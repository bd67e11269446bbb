"""`dtf report` for real: a `dtf serve` with two agents runs a small pytest suite twice (13 passed,
1 failed, a benchmark giving metrics), then the report of the second run comes out as PDF, JUnit
XML and CSV, and each is read back: the PDF's pages, its embedded plot image and its text (the
run's name and numbers), JUnit's counts, the CSV rows against the database."""

from __future__ import annotations

import csv
import re
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pypdf import PdfReader

from tests.helpers import Serve, dtf_command, serve_lab

NAME = "report-suite"
SUITE = {
    "test_many.py": """
        import pytest

        @pytest.mark.parametrize("n", range(12))
        def test_square(n):
            assert n * n >= 0

        def test_broken():
            assert 2 + 2 == 5, "arithmetic is broken"
    """,
    "test_bench.py": """
        def test_sum(benchmark):
            assert benchmark(sum, range(100)) == 4950
    """,
}


@dataclass
class Lab:
    serve: Serve
    env: dict[str, str]
    root: Path
    run_id: str
    first_run: str

    def dtf(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(dtf_command("dtf") + list(args), env=self.env, capture_output=True, text=True,
                              timeout=180, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("report")
    suite = root / "suite"
    suite.mkdir()
    for name, text in SUITE.items():
        (suite / name).write_text(textwrap.dedent(text))
    with serve_lab(root, {"report-a": 2, "report-b": 2}) as (serve, env):
        ids = []
        for _ in range(2):  # two runs of one name: a history for the trend plots
            proc = subprocess.run(dtf_command("dtf") + ["pytest", "--name", NAME], cwd=suite, env=env,
                                  capture_output=True, text=True, timeout=180, check=False)
            assert proc.returncode == 1, proc.stdout + proc.stderr  # test_broken fails
            m = re.search(r"dtf pytest: run (\S+)", proc.stdout)
            assert m, proc.stdout
            ids.append(m.group(1))
        yield Lab(serve, env, root, ids[1], ids[0])


def pdf_text(reader: PdfReader) -> str:
    # Qt separates words with tabs in the text it embeds: compare with single spaces.
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


def image_xobjects(reader: PdfReader) -> int:
    n = 0
    for page in reader.pages:
        xobjects = page["/Resources"].get_object().get("/XObject")
        for ref in (xobjects.get_object().values() if xobjects else []):
            n += ref.get_object().get("/Subtype") == "/Image"
    return n


def test_pdf_report_of_a_run_by_name(lab: Lab) -> None:
    out = lab.root / "report.pdf"
    proc = lab.dtf("report", "--run", NAME, "--format", "pdf", "-o", str(out))  # a name: its latest run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lab.run_id in proc.stdout and str(out) in proc.stdout
    reader = PdfReader(out)
    assert len(reader.pages) >= 2
    assert image_xobjects(reader) >= 2  # the run trend and at least one metric plot
    text = pdf_text(reader)
    assert NAME in text and lab.run_id in text
    assert "1 failed, 13 passed" in text and "13 passed" in text
    assert "Pass rate 92.9 %" in text  # 13 of 14
    assert "test_many.py::test_broken" in text and "arithmetic is broken" in text
    assert "report-a" in text and "report-b" in text  # the worker table
    assert "bench_mean_s [s] — test_bench.py::test_sum" in text  # the benchmark's metric has a trend plot
    assert f"page 1 of {len(reader.pages)}" in text


def test_junit_counts_match_the_run(lab: Lab) -> None:
    out = lab.root / "run.xml"
    proc = lab.dtf("report", "--run", lab.run_id, "--format", "junit", "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == lab.run_id
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("14", "1", "0", "0")
    failed = [tc for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert [(tc.get("classname"), tc.get("name")) for tc in failed] == [("test_many", "test_broken")]


def test_csv_rows_match_the_database(lab: Lab) -> None:
    db = lab.serve.db()
    for what in ("results", "tasks", "findings"):
        out = lab.root / f"{what}.csv"
        proc = lab.dtf("report", "--run", lab.run_id, "--format", "csv", "--what", what, "-o", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if what == "results":
            expect = {r[0]: r for r in db.execute("SELECT result_id, outcome, test_id, worker_id FROM results "
                                                  "WHERE run_id = ?", (lab.run_id,))}
            assert {r["result_id"] for r in rows} == set(expect) and len(rows) == len(expect)
            for r in rows:
                # A shard task's own row has no outcome: an empty cell.
                assert (r["outcome"], r["test_id"], r["worker_id"]) == tuple(v or "" for v in expect[r["result_id"]][1:])
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["timestamp"]), r["timestamp"]
            assert "metric.bench_mean_s" in rows[0]
            bench = [r for r in rows if r["test_id"] == "test_bench.py::test_sum"]
            assert len(bench) == 1 and float(bench[0]["metric.bench_mean_s"]) > 0
        elif what == "tasks":
            expect_ids = {r[0] for r in db.execute("SELECT DISTINCT task_id FROM results WHERE run_id = ?",
                                                   (lab.run_id,))}
            assert {r["task_id"] for r in rows} == expect_ids and {r["run_id"] for r in rows} == {lab.run_id}
            assert f"{len(rows)} tasks rows" in proc.stdout
        else:
            with open(out, encoding="utf-8") as f:
                assert f.readline().startswith("time,kind,metric,test_id")


def test_an_unknown_run_is_named_and_recent_runs_listed(lab: Lab) -> None:
    proc = lab.dtf("report", "--run", "no-such-run", "--format", "pdf", "-o", str(lab.root / "x.pdf"))
    assert proc.returncode == 1
    assert "no run 'no-such-run'" in proc.stderr and lab.run_id in proc.stderr and lab.first_run in proc.stderr
    assert not (lab.root / "x.pdf").exists()


def test_an_unwritable_path_is_refused_before_any_work(lab: Lab) -> None:
    proc = lab.dtf("report", "--run", lab.run_id, "--format", "csv", "-o", str(lab.root / "missing" / "x.csv"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr, proc.stderr
