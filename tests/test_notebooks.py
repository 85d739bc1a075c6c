"""The notebooks in notebooks/ run top to bottom under JAXCNN_NOTEBOOK_QUICK=1, in a kernel of
this interpreter, with real MNIST where ../shared/data has it; every notebook asserts its own
claims (parameter counts, accuracy floors, residual below plain), so a failed claim or any
cell error fails the test with that cell's traceback."""
from __future__ import annotations

import pathlib
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from conftest import IN_CI, ROOT, SHARED_DATA

FOLDER = ROOT / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "jaxcnn-notebooks"
DEADLINE_S = 240  # per notebook (quick settings take well under a minute each on 2 CPU cores)
FIGURES = {"01": 3, "02": 4, "03": 4, "04": 2}  # PNG outputs each notebook must show
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_the_four_notebooks_are_committed_without_outputs():
    assert [path.name[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, \
                    f"{path.name}: clear the outputs before committing"
        source = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
        assert source.count('os.environ.get("JAXCNN_NOTEBOOK_QUICK")') == 1, path.name


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory) -> str:
    """A kernelspec that starts ipykernel under this very interpreter (sys.executable), so the
    notebooks run in the environment under test whatever other kernels the machine has."""
    from ipykernel.kernelspec import write_kernel_spec

    folder = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(folder / "kernels" / KERNEL, overrides={"display_name": "jaxcnn tests"})
    return str(folder)


def listing(folder: pathlib.Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, kernel_dirs, tfds_dir, monkeypatch, tmp_path):
    has_mnist = (SHARED_DATA / "mnist").is_dir()
    if IN_CI and not has_mnist:
        pytest.fail(f"the MNIST files are not at {SHARED_DATA / 'mnist'} (required under CI=true)")
    monkeypatch.setenv("JUPYTER_PATH", kernel_dirs)
    monkeypatch.setenv("JAXCNN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JAXCNN_SHARED_DATA", str(SHARED_DATA))
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)  # datasets are prepared there, once a session
    before = listing(FOLDER)
    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + DEADLINE_S
    client = NotebookClient(
        nb, kernel_name=KERNEL, resources={"metadata": {"path": str(FOLDER)}},
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())))
    failure = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as err:
        failure = ANSI.sub("", str(err))  # the cell's source and its traceback, uncoloured
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a look after a failure
    if failure:
        pytest.fail(f"{path.name}: a cell raised\n{failure}", pytrace=False)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    pngs = sum("image/png" in out.get("data", {}) for out in outputs)
    assert "settings: quick" in text
    assert pngs == FIGURES[path.name[:2]], f"{path.name} showed {pngs} figures"
    if path.name[:2] != "01":
        assert ("data: MNIST" if has_mnist else "data: the offline digits") in text
    assert listing(FOLDER) == before, "the notebook wrote files into the repository"
