"""Ray runs without a cluster: the message when ray is not installed, the flags' checks, and how
workers and threads are fitted to the cluster's nodes (pure arithmetic over the nodes Ray reports)."""
import sys

import pytest

from lmql_lite import api, cli, ray_batch
from lmql_lite.errors import LmqlError, QueryArgumentError


@pytest.fixture
def files(tmp_path):
    query = tmp_path / "q.lmq"
    query.write_text('"Row {i}: [S]" where len(TOKENS(S)) < 3\n')
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"i": 1}\n')
    return str(query), str(rows)


def test_without_ray_installed_the_error_names_the_install_command(files, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    query, rows = files
    out = tmp_path / "out.jsonl"
    code = cli.main(["run", query, "--inputs", rows, "--output", str(out), "--ray"])
    err = capsys.readouterr().err
    assert code == LmqlError.exit_code
    assert "pip install 'lmql_lite[ray]'" in err and "Traceback" not in err
    assert not out.exists()  # refused before the output file was made
    with pytest.raises(LmqlError, match=r"lmql_lite\[ray\]"):
        list(api.run_batch('"[S]"\n', [{}], ray=True))


@pytest.mark.parametrize("argv, fragment", [
    (["--ray"], "--ray needs --inputs"),
    (["--inputs", "ROWS", "--workers", "2"], "--workers needs --ray"),
    (["--inputs", "ROWS", "--ray", "--workers", "0"], "--workers must be at least 1"),
])
def test_ray_flags_are_checked(files, argv, fragment, capsys):
    query, rows = files
    assert cli.main(["run", query, *[rows if a == "ROWS" else a for a in argv]]) == QueryArgumentError.exit_code
    assert fragment in capsys.readouterr().err


def test_workers_without_ray_and_a_loaded_model_are_refused(files):
    with pytest.raises(QueryArgumentError, match="needs ray="):
        list(api.run_batch('"[S]"\n', [{}], workers=2))
    with pytest.raises(QueryArgumentError, match="cannot travel"):
        list(api.run_batch('"[S]"\n', [{}], ray=True, model=object()))


class Nodes:
    """What `ray.nodes()` reports, for nodes of these CPU counts (and one dead node, which does not count)."""

    def __init__(self, *cpus):
        self.cpus = cpus

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": float(c)}} for c in self.cpus] + \
               [{"Alive": False, "Resources": {"CPU": 64.0}}]


@pytest.mark.parametrize("cpus, workers, shape", [
    ((2,), None, (1, 2)),        # default: one worker per node, with all of its CPUs
    ((2,), 2, (2, 1)),
    ((16,), 3, (3, 5)),
    ((8, 8), None, (2, 8)),
    ((8, 8), 3, (3, 4)),         # 5 threads each would leave the third worker no node with room
    ((8, 4), 2, (2, 4)),
    ((8, 4), 3, (3, 4)),
])
def test_workers_times_threads_fit_on_the_nodes(cpus, workers, shape):
    count, threads = ray_batch._shape(Nodes(*cpus), workers)
    assert (count, threads) == shape
    assert sum(c // threads for c in cpus) >= count


def test_more_workers_than_cpus_is_an_error():
    with pytest.raises(QueryArgumentError, match="3 Ray workers need at least 3 CPUs, and the cluster has 2"):
        ray_batch._shape(Nodes(2), 3)
