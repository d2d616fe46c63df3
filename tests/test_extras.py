"""The lighter base install (spdsim/contract/extras.py): pyarrow is the 'parquet' extra, the executor extra holds
only what is imported, and a missing extra is one line naming it, not a traceback."""

from __future__ import annotations

import ast
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path

import pytest

from spdsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
PARQUET_LINE = "error: Parquet output needs the 'parquet' extra: pip install 'spdsim[parquet]'\n"


@pytest.fixture
def no_pyarrow(monkeypatch):
    """As if pyarrow were not installed: importing it raises ModuleNotFoundError."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)


def _imported_packages() -> set[str]:
    found: set[str] = set()
    for folder in ("spdsim", "executor", "studies"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def test_the_extras_hold_what_is_imported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [req.split(">")[0].split("[")[0].split(";")[0].strip() for req in project["dependencies"]]
    assert "pyarrow" not in names
    extras = project["optional-dependencies"]
    assert [r.split(">")[0] for r in extras["parquet"]] == ["pyarrow"]
    executor = {r.split(">")[0] for r in extras["executor"]}
    imported = _imported_packages()
    assert {"accelerate", "tqdm"}.isdisjoint(executor | imported)
    assert executor <= imported | {"gguf"}  # gguf: transformers' GGUF reader, checked for by executor.models
    assert "parquet" in (ROOT / ".ci" / "run").read_text()  # CI installs what the tests need


def test_parquet_output_without_the_extra_is_one_line(tmp_path, capsys, no_pyarrow):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[method]\nname = "ar"\n[workload]\nnew_tokens = 8\nnum_requests = 1\n')
    for argv in (
        ["sweep", str(scenario), "--grid", "acceptance.alpha=0.5,0.9", "--out", str(tmp_path / "t.parquet")],
        ["optimize", "--stages", "2", "--spec-layers", "1", "--out", str(tmp_path / "f.parquet")],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert capsys.readouterr().err == PARQUET_LINE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_parquet_input_and_the_executor_trace_name_the_extra(tmp_path, no_pyarrow):
    from spdsim.errors import SpdsimError
    from spdsim.scenario.acceptance import load_trace

    trace = tmp_path / "trace.parquet"
    trace.write_bytes(b"PAR1")
    with pytest.raises(
        SpdsimError, match=r"^Parquet input needs the 'parquet' extra: pip install 'spdsim\[parquet\]'$"
    ):
        load_trace(trace)
    pytest.importorskip("torch")
    from executor.rundir import write_trace

    with pytest.raises(SpdsimError, match=r"^Parquet output needs the 'parquet' extra"):
        write_trace(None, tmp_path / "out.parquet")  # type: ignore[arg-type]
    assert not (tmp_path / "out.parquet").exists()


def test_a_missing_module_of_an_extra_names_the_extra():
    from spdsim.boundary import message_of

    code, text = message_of(
        ImportError("Unable to find a usable engine; tried using: 'pyarrow', 'fastparquet'.")
    )
    assert (code, text) == (
        2,
        "Parquet input and output needs the 'parquet' extra: pip install 'spdsim[parquet]'",
    )
    code, text = message_of(ModuleNotFoundError("No module named 'distributed'", name="distributed"))
    assert code == 2 and text.startswith("this command needs the 'dask' extra: pip install 'spdsim[dask]'")


def test_the_base_install_simulates_and_writes_csv_without_pyarrow(tmp_path):
    """A fresh interpreter where pyarrow cannot be imported: simulate, compare and a CSV sweep work."""
    code = "import sys; sys.modules['pyarrow'] = None\nfrom spdsim.cli import main\nmain(sys.argv[1:])\n"
    args = ["--set", "workload.new_tokens=8", "--set", "workload.num_requests=1"]
    for argv in (
        ["simulate", *args, "--out", str(tmp_path / "run")],
        [
            "sweep",
            str(ROOT / "spdsim" / "scenarios" / "default.toml"),
            "--grid",
            "method.num_stages=2,4",
            *args,
            "--workers",
            "1",
            "--out",
            str(tmp_path / "t.csv"),
        ],
    ):
        result = subprocess.run(
            [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "t.csv").is_file()
