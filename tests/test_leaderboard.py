"""leaderboard: a small study written the way the search writes it, read back as a DataFrame, a rich table that
fits 80 columns, CSV, JSON and a plot, through the library and ``kdzero leaderboard``; bad locations fail with
one line and exit code 2."""
from __future__ import annotations

import io
import json

import optuna
import pandas as pd
import pytest
from rich.console import Console

from kdzero import Genome
from kdzero.cli import main
from kdzero.genome import FULL_SPACE
from kdzero.leaderboard import (
    COLUMNS,
    baseline,
    frame,
    genome_at,
    load_leaderboard,
    op_frequencies,
    open_study,
    rich_table,
)
from kdzero.proxy import ProxyResult
from kdzero.search import study as studies
from kdzero.search.runner import BASELINE_ATTR
from kdzero.search.space import genome_to_params, suggest_genome

# genome text, score (None: rejected), proxy accuracy
TRIALS = [
    ("logit[no,no,no]|kl|no|T4|x1", 0.30, 0.95),
    ("feat[pow2,channel,norm_HW]|l2|no|T1|x100", 0.20, 0.96),
    ("logit[catt,no,no]|l2|no|T4|x100", None, 0.0),
    ("feat[no,multi_scale_r4,natt]|pearson|entropy|T16|x0.01", 0.25, 0.97),
    ("emb[no,no,no]|kl|no|T4|x25", 0.40, 0.90),
]
REASON = "distillation loss 1.13e+05 swamps CE 2.33 (ratio 4.82e+04 > 1000)"
BASELINE = ProxyResult("", "complete", steps=10, seconds=1.5, val_ce=0.5, val_acc=0.93, s_gap=0.1, cka_gap=0.2,
                       score=0.8)


def _result(genome: str, score: float | None, acc: float) -> ProxyResult:
    if score is None:
        return ProxyResult(genome, "rejected", stage="first_batch", reason=REASON, steps=1, seconds=0.1)
    return ProxyResult(genome, "complete", steps=10, seconds=2.0, val_ce=score / 2, val_acc=acc, sharpness=1.0,
                       s_gap=score / 4, cka_gap=score / 4, score=score)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """runs/demo with a study of five trials (one rejected, one duplicate) and the CE-only baseline."""
    run = tmp_path_factory.mktemp("runs") / "demo"
    storage = studies.make_storage(f"sqlite:///{(run / 'study.db').as_posix()}")
    study = studies.create_or_load_study(storage, "demo", optuna.samplers.RandomSampler(seed=0))
    studies.initialise(study, {"name": "demo"}, FULL_SPACE, budget=len(TRIALS) + 1)
    for text, score, acc in TRIALS:
        study.enqueue_trial(genome_to_params(Genome.parse(text)))
        trial = study.ask()
        genome = suggest_genome(trial)
        studies.tell_result(study, trial, genome.key, _result(str(genome), score, acc), {"genome": str(genome)})
    study.enqueue_trial(genome_to_params(Genome.parse(TRIALS[1][0])))
    duplicate = study.ask()
    suggest_genome(duplicate)
    studies.copy_result(study, duplicate, study.get_trials(deepcopy=False)[1])
    study.set_user_attr(BASELINE_ATTR, {"result": BASELINE.to_dict(), "ce_curve": [1.0] * 10})
    return run


def test_frame_has_the_documented_columns_and_ranks_best_first(run_dir):
    df = load_leaderboard(run_dir)
    assert tuple(df.columns) == COLUMNS
    assert list(df["rank"]) == [1, 2, 3, 4]
    assert list(df.score) == sorted(df.score)
    assert df.iloc[0].genome == TRIALS[1][0]
    assert set(df.state) == {"complete"}


def test_all_includes_rejected_trials_with_their_reason_and_duplicates(run_dir):
    df = load_leaderboard(run_dir, include_all=True)
    rejected = df[df.state == "rejected"]
    assert len(rejected) == 1 and rejected.iloc[0].reason == REASON and rejected.iloc[0].stage == "first_batch"
    assert rejected["rank"].isna().all()
    duplicate = df[df.duplicate_of.notna()]
    assert list(duplicate.duplicate_of) == [1] and duplicate["rank"].isna().all()
    assert len(df) == len(TRIALS) + 1


def test_sort_by_accuracy_is_descending_and_top_keeps_k_rows(run_dir):
    df = load_leaderboard(run_dir, sort="val_acc", top=2)
    assert list(df.val_acc) == [0.97, 0.96]


def test_genome_at_rank_and_a_missing_rank(run_dir):
    assert genome_at(run_dir, 1) == TRIALS[1][0]
    with pytest.raises(Exception, match=r"no rank 9; its leaderboard holds ranks 1\.\.4"):
        genome_at(run_dir, 9)


def test_rich_table_fits_80_columns_keeps_genomes_whole_and_shows_the_baseline(run_dir):
    study = open_study(run_dir)
    for include_all in (False, True):
        out = io.StringIO()
        df = frame(study, include_all)
        Console(file=out, width=80).print(rich_table(df, baseline=baseline(study)))
        text = out.getvalue()
        assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
        for genome in df.genome:
            assert genome in text  # brackets escaped, no wrapping
        assert "CE-only baseline" in text and "0.8000" in text


def test_rich_table_lists_the_reasons_under_the_table_when_their_column_does_not_fit(run_dir):
    study = open_study(run_dir)
    narrow, wide = io.StringIO(), io.StringIO()
    Console(file=narrow, width=80).print(rich_table(frame(study, True), baseline=baseline(study)))
    Console(file=wide, width=220).print(rich_table(frame(study, True), baseline=baseline(study)))
    lines = narrow.getvalue().splitlines()
    assert "reason" not in lines[1]  # the header: no room for the column at 80
    notes = lines[lines.index("why (too narrow for the reason column):") + 1:]
    text = " ".join(line.strip() for line in notes)
    assert f"{TRIALS[2][0]} (trial 2): first_batch: {REASON}" in text
    assert f"{TRIALS[1][0]} (AT) (trial 5): same as trial 1" in text
    assert len(notes) >= 2 and max(len(line.rstrip()) for line in lines) <= 80
    assert "why (" not in wide.getvalue()


def test_rich_table_shows_every_column_when_wide(run_dir):
    study = open_study(run_dir)
    out = io.StringIO()
    Console(file=out, width=220).print(rich_table(frame(study, True), baseline=baseline(study)))
    header = out.getvalue().splitlines()[1].split("   ")
    assert [h.strip() for h in header if h.strip()] == ["rank", "trial", "genome", "score", "acc %", "CE", "S-gap",
                                                        "CKA-gap", "state", "reason", "s"]
    assert "swamps CE" in out.getvalue()


def test_op_frequencies_count_transforms_distances_and_weights():
    counts = op_frequencies([TRIALS[1][0], TRIALS[3][0]])
    assert counts["transforms"] == {"pow2": 1, "channel": 1, "norm_HW": 1, "multi_scale_r4": 1, "natt": 1}
    assert counts["distances"] == {"l2": 1, "pearson": 1}
    assert counts["weights"] == {"no": 1, "entropy": 1}


def test_cli_table(run_dir, capsys):
    assert main(["leaderboard", str(run_dir), "--all"]) == 0
    out = capsys.readouterr().out
    assert TRIALS[1][0] in out and TRIALS[2][0] in out and "CE-only baseline" in out


def test_cli_csv_loads_back_with_the_documented_columns(run_dir, capsys, tmp_path):
    assert main(["leaderboard", str(run_dir), "--format", "csv"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert tuple(df.columns) == COLUMNS and list(df["rank"][:4]) == [1, 2, 3, 4]
    last = df.iloc[-1]  # the CE-only baseline row, as in the table
    assert pd.isna(last["rank"]) and (last["genome"], last["state"], last["score"]) == ("ce-only", "reference", 0.8)
    target = tmp_path / "board.csv"
    assert main(["leaderboard", str(run_dir), "--format", "csv", "--all", "-o", str(target)]) == 0
    assert len(pd.read_csv(target)) == len(TRIALS) + 2


def test_cli_json_records(run_dir, capsys):
    assert main(["leaderboard", str(run_dir), "--format", "json", "--sort", "val_acc", "--top", "3"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["val_acc"] for r in records] == [0.97, 0.96, 0.95, 0.93]
    assert tuple(records[0]) == COLUMNS
    assert records[-1]["genome"] == "ce-only" and records[-1]["rank"] is None and records[-1]["score"] == 0.8


def test_cli_json_document_holds_rows_baseline_and_what_the_run_recorded(run_dir, capsys):
    from kdzero.search.record import RunPair, save_pair, start_session

    save_pair(run_dir, RunPair(teacher="resnet56", student="resnet20", dataset="cifar100", normalize="dataset",
                               num_classes=100, in_chans=3, image_size=[32, 32]))
    start_session(run_dir, "cpu")
    assert main(["leaderboard", str(run_dir), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [r["genome"] for r in document["rows"]] == [TRIALS[1][0], TRIALS[3][0], TRIALS[0][0], TRIALS[4][0]]
    assert document["baseline"]["score"] == 0.8
    assert document["pair"]["teacher"] == "resnet56" and document["meta"]["device"] == "cpu"
    assert document["meta"]["kdzero_version"] and document["meta"]["torch_version"]


def test_table_names_presets_beside_their_genome_and_says_which_columns_it_hid(run_dir):
    study = open_study(run_dir)
    narrow, wide = io.StringIO(), io.StringIO()
    Console(file=narrow, width=80).print(rich_table(frame(study), baseline=baseline(study)))
    Console(file=wide, width=220).print(rich_table(frame(study), baseline=baseline(study)))
    assert f"{TRIALS[0][0]} (KD)" in wide.getvalue() and f"{TRIALS[1][0]} (AT)" in wide.getvalue()
    assert f"{TRIALS[4][0]} (" not in wide.getvalue()
    text = " ".join(narrow.getvalue().split())
    hidden = "not shown at this width: trial, CE, S-gap, CKA-gap, s (widen the terminal, or use --format csv or json"
    assert f"{hidden} for every column)" in text
    assert "not shown" not in wide.getvalue()


def test_a_student_search_leaderboard_plots_without_the_op_panels(tmp_path):
    pytest.importorskip("matplotlib")
    from kdzero.leaderboard import plot

    storage = studies.make_storage(f"sqlite:///{(tmp_path / 'study.db').as_posix()}")
    study = studies.create_or_load_study(storage, "students", optuna.samplers.RandomSampler(seed=0))
    for i, arch in enumerate(["resnet[1,1,1]x[16,32,64]", "resnet[2,2,2]x[16,32,64]", "wrn_d16_w2"]):
        study.add_trial(optuna.trial.create_trial(value=-0.1 * (i + 1), user_attrs={"genome": arch, "seconds": 0.1}))
    target = plot(frame(study, include_all=True), tmp_path / "students.png", title="students")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reads_a_storage_url_and_study_name(run_dir, capsys):
    url = f"sqlite:///{(run_dir / 'study.db').as_posix()}"
    assert main(["leaderboard", "--storage", url, "--study", "demo", "--format", "csv"]) == 0
    assert TRIALS[1][0] in capsys.readouterr().out


def test_cli_plot_writes_a_png(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "search.png"
    assert main(["leaderboard", str(run_dir), "--plot", str(target), "--top", "3"]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(run_dir, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["leaderboard", str(run_dir), "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'kdzero[plot]'" in err


def test_cli_exports_a_ranked_genome(run_dir, capsys):
    assert main(["export", str(run_dir), "--rank", "2"]) == 0
    source = capsys.readouterr().out
    assert f"Genome:  {TRIALS[3][0]}" in source and f"rank 2 of search run {run_dir}" in source


@pytest.mark.parametrize("argv, message", [
    (["leaderboard", "{tmp}/nowhere"], "no search run at"),
    (["leaderboard", "--storage", "sqlite:///{run}/study.db", "--study", "other"], "no study 'other'"),
    (["leaderboard", "--storage", "nosuchdb://x/y", "--study", "demo"], "storage"),
    (["leaderboard", "--storage", "sqlite:///{tmp}/missing.db", "--study", "demo"], "no database file"),
    (["leaderboard", "{run}", "--sort", "scroe"], "did you mean score"),
    (["leaderboard"], "give a run folder"),
])
def test_cli_bad_locations_are_one_line_and_exit_2(run_dir, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdzero leaderboard: error:") and message in err
    assert not (tmp_path / "missing.db").exists()


def test_kdzero_leaderboard_stays_callable_after_the_submodule_is_imported(tmp_path):
    import importlib

    import kdzero

    importlib.import_module("kdzero.leaderboard")
    assert callable(kdzero.leaderboard)
    from kdzero.errors import ConfigError

    with pytest.raises(ConfigError, match="no search run"):
        kdzero.leaderboard(tmp_path / "missing")
