"""``python -m pipeline report``: thin, bad input in one line before any work, the tables where asked."""

import numpy as np

from analysis.report import FILES, META_FILE
from analysis.widths import read_laws
from pipeline.cli import main
from tests.analysis_synth import write_results
from tests.answer_synth import planted_curves, planted_study


def _results(tmp_path):
    cells = [{"n": n, "k": k, "delta": 0.5, "m_inf": 8 * n**1.5 * max(k, 1), "m_held": 32 * n**1.5}
             for n in (8, 16) for k in (0, 2)]
    runs = planted_study(cells, widths=2 ** np.arange(5, 13), instances=2, seeds=3, rng_seed=0, t_max=96.0,
                         drift={"c": -0.5, "n": 1.0, "k": 0.5, "m": -0.5, "tau": 0.2, "sigma": 0.3}).assign(
        step_factor=1.0)
    write_results(tmp_path / "res", runs, planted_curves(runs))
    return tmp_path / "res"


def test_report_writes_the_tables(tmp_path, capsys):
    res = _results(tmp_path)
    rc = main(["report", str(res), "--to", str(tmp_path / "tables"), "--horizons", "24", "48", "96",
               "--drift-horizon", "12", "--n-boot", "10"])
    assert rc == 0
    said = capsys.readouterr().out
    for name in [*FILES.values(), META_FILE]:
        assert (tmp_path / "tables" / name).is_file() and f"wrote {tmp_path / 'tables' / name}" in said
    laws = read_laws(tmp_path / "tables")
    assert {"conv", "lazy", "drift", "known"} <= set(laws["quantity"])
    assert not (res / "laws.csv").exists()  # --to: the results directory is left alone


def test_report_bad_input_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: report: no results directory") and err.count("\n") == 1
    assert main(["report", str(tmp_path / "nothing"), "--to", str(tmp_path / "t"), "--n-boot", "-1"]) == 2
    err = capsys.readouterr().err
    assert "n_boot=-1" in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()  # refused before any work
