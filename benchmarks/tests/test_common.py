"""benchmarks.common.write_results: the JSON and markdown pair every benchmark writes."""

import json

from benchmarks.common import write_results


def test_write_results_writes_both_files_and_prints_the_table(tmp_path, capsys):
    write_results(tmp_path / "new" / "bench", {"s": 1.5}, "| a |\n|---|")
    assert json.loads((tmp_path / "new" / "bench.json").read_text()) == {"s": 1.5}
    assert (tmp_path / "new" / "bench.md").read_text() == "| a |\n|---|"
    assert capsys.readouterr().out == "| a |\n|---|\n"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["bench.json", "bench.md"]  # no temp files left
