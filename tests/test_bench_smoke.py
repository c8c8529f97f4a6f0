"""The benchmarks run (tiny model, one repeat); structure only: benchmarks are not tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from dbnet.bench import BENCHMARKS, header
from dbnet.bench.commands import handler


def check_rows(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        assert isinstance(r["name"], str) and isinstance(r["unit"], str)
        if r["value"] is None:  # only the "torch not installed" row
            assert "torch not installed" in r["note"]
        else:
            assert r["value"] > 0 and math.isfinite(r["value"]), r
        if "target" in r and r["value"] is not None and r["target"].startswith(">= "):
            assert r["pass"] == (r["value"] >= float(r["target"][3:])), r  # the verdict matches the number


def test_train_quick():
    rows = BENCHMARKS["train"]([8], 1, quick=True)
    check_rows(rows)
    names = " ".join(r["name"] for r in rows)
    assert "dbnet batch 8" in names and "FLOP rate" in names


def test_train_quick_against_torch():
    pytest.importorskip("torch", reason="torch is a benchmark-only dependency (make bench installs it)")
    rows = BENCHMARKS["train"]([8], 1, quick=True)
    names = " ".join(r["name"] for r in rows)
    assert "torch batch 8" in names and "dbnet/torch" in names and "peak RSS batch 8: torch" in names


@pytest.mark.parametrize("name", ["matmul", "memory", "update"])
def test_micro_quick(name):
    check_rows(BENCHMARKS[name]([8], 1, quick=True))


def test_header():
    h = header()
    assert {"machine", "versions", "blas", "dbnet tuning"} <= set(h)
    assert "OPENBLAS_CORETYPE=" in h["blas"]


def test_module_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-m", "dbnet.bench", "memory", "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "machine" in p.stdout and "np.copyto" in p.stdout
    data = json.loads(out.read_text())
    check_rows(data["results"]["memory"])


def test_dbnet_cli_has_bench(capsys):
    from dbnet.cli import build_parser

    args = build_parser().parse_args(["bench", "nosuch", "--quick"])
    assert args.func is handler
    assert args.func(args) == 2
    assert "valid: train, matmul, memory, update" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ps", "downpour"])
def test_mpi_benchmarks_quick(name, monkeypatch, tmp_path):
    """The MPI benchmarks start real mpiexec jobs; quick mode proves they run end to end."""
    monkeypatch.setenv("DBNET_CACHE", str(tmp_path))  # downpour imports FSDD: not into the user's cache
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    rows = BENCHMARKS[name]([8], 1, quick=True)
    assert rows and all(r["value"] is not None and r["value"] > 0 for r in rows), rows


def test_lc_quick():
    check_rows(BENCHMARKS["lc"]([8], 1, quick=True))


def test_mp_quick(tmp_path, monkeypatch):
    """Figure 3's benchmark on small models: P = 1, 2 (and 4, correctness) under mpiexec, the model's curves."""
    monkeypatch.setenv("DBNET_BENCH_MP_OUT", str(tmp_path / "figure3_mp.png"))
    check_rows(BENCHMARKS["mp"]([8], 1, quick=True))
    assert (tmp_path / "figure3_mp.png").is_file() and (tmp_path / "figure3_mp.json").is_file()
