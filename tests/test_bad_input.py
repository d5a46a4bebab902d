"""The bad-input battery: every kind of wrong input a user can give the ``kdzero`` command reaches them as exactly
one line on stderr, ``kdzero COMMAND: error: ...``, naming what is wrong, with exit code 2 and never a traceback;
and no bad input creates a study or damages an existing one.

Everything runs in-process through ``kdzero.cli.main`` (capsys captures the output). The one real search (a
two-genome digits run) is shared by the module-scoped ``tiny_study`` fixture.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdzero.cli import main
from kdzero.genome import Genome
from kdzero.presets import PRESETS

VALID_TEXTS = sorted({str(g) for g in PRESETS.values()})
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TINY_PROXY = """
max_steps = 1
confirm = 0
[proxy]
batch_size = 32
num_views = 1
sharpness_samples = 64
cka_samples = 64
"""


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run ``kdzero ARGV`` in-process; returns (exit code, stdout, stderr). Clears earlier captured output."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, command: str, *fragments: str, exit_code: int = 2) -> str:
    """Exit ``exit_code``; stderr is exactly one line ``kdzero COMMAND: error: ...`` holding every fragment
    (case-insensitive); no traceback anywhere. Returns the message."""
    assert "Traceback" not in out + err, err
    assert code == exit_code, f"exit code {code}, stderr: {err!r}"
    assert err.endswith("\n") and err.count("\n") == 1 and "\r" not in err, f"not one line: {err!r}"
    prefix = f"kdzero {command}: error: " if command else "kdzero: error: "
    assert err.startswith(prefix), err
    message = err[len(prefix):].strip()
    assert len(message) > 10, err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), f"{fragment!r} not in {err!r}"
    return message


def cli_error(capsys, argv: list[str], *fragments: str, command: str | None = None) -> str:
    code, out, err = run_cli(capsys, argv)
    return assert_one_line_error(code, out, err, command or argv[0], *fragments)


def no_study_below(folder: Path) -> None:
    found = [p for p in folder.rglob("*.db")] if folder.exists() else []
    assert not found, f"bad input created {found}"


def study_snapshot(db: Path) -> list[tuple]:
    """Trials (number, state, value, genome) and study attributes of the SQLite study at ``db``, read with
    sqlite3 directly so that the check itself cannot alter it."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        trials = con.execute("SELECT number, state, (SELECT group_concat(value) FROM trial_values v WHERE "
                             "v.trial_id = t.trial_id) FROM trials t ORDER BY number").fetchall()
        attrs = con.execute("SELECT key, value_json FROM study_user_attributes ORDER BY key").fetchall()
        trial_attrs = con.execute("SELECT trial_id, key, value_json FROM trial_user_attributes "
                                  "ORDER BY trial_id, key").fetchall()
    finally:
        con.close()
    return [tuple(trials), tuple(attrs), tuple(trial_attrs)]


# ------------------------------------------------------------------------------------------------ shared files
def _cut_raising(path: Path, error: str, folder: Path) -> int:
    """The first length at which ``path`` cut short makes ``torch.load`` raise ``error`` (``module.Class``);
    half the file when no cut does (a later torch may fail differently)."""
    data = path.read_bytes()
    probe = folder / "probe.pt"
    for length in range(1, min(len(data), 4096)):
        probe.write_bytes(data[:length])
        try:
            torch.load(probe, weights_only=True)
        except Exception as exc:
            if f"{type(exc).__module__}.{type(exc).__name__}" == error:
                return length
    return len(data) // 2


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints and a tiny config: a random-init digits resnet8 teacher (the good one), one of another
    architecture, one with 100 classes, a truncated one and random bytes."""
    from kdzero.models import create_model

    folder = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    paths = {"folder": folder}
    for name, model, classes in (("resnet8", "resnet8", 10), ("resnet20", "resnet20", 10),
                                 ("vgg8", "vgg8", 10), ("resnet20_c100", "resnet20", 100)):
        paths[name] = folder / f"{name}.pt"
        torch.save(create_model(model, num_classes=classes, in_chans=1).state_dict(), paths[name])
    data = paths["resnet20"].read_bytes()
    paths["truncated"] = folder / "truncated.pt"
    paths["truncated"].write_bytes(data[: len(data) // 3])
    paths["random"] = folder / "random.pt"
    paths["random"].write_bytes(os.urandom(4096))
    # The legacy (pre-1.6, non-zip) format, which akamaster's .th files use: cut inside its pickled header,
    # torch.load raises struct.error or IndexError rather than anything a checkpoint reader would expect.
    legacy = folder / "legacy.pt"
    torch.save(create_model("resnet20", num_classes=10, in_chans=1).state_dict(), legacy,
               _use_new_zipfile_serialization=False)
    for name, error in (("legacy_struct", "struct.error"), ("legacy_index", "builtins.IndexError")):
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(legacy.read_bytes()[:_cut_raising(legacy, error, folder)])
    paths["empty"] = folder / "empty.pt"
    paths["empty"].write_bytes(b"")
    paths["directory"] = folder / "afolder.pt"
    paths["directory"].mkdir()
    paths["config"] = folder / "tiny.toml"
    paths["config"].write_text(TINY_PROXY)
    return paths


# ------------------------------------------------------------------------------------------------ 1. genomes
def _mutations() -> st.SearchStrategy[str]:
    """Near misses of valid genome texts: separators dropped or doubled, fields swapped, unknown ops, numbers
    out of range, unicode look-alikes."""
    base = st.sampled_from(VALID_TEXTS)

    def drop_or_double(text: str, data) -> str:
        spots = [i for i, c in enumerate(text) if c in "|[],"]
        i = data.draw(st.sampled_from(spots))
        return text[:i] + text[i + 1:] if data.draw(st.booleans()) else text[:i] + text[i] + text[i:]

    def swap_fields(text: str, data) -> str:
        parts = text.split("|")
        i, j = data.draw(st.lists(st.integers(0, 4), min_size=2, max_size=2, unique=True))
        parts[i], parts[j] = parts[j], parts[i]
        return "|".join(parts)

    def unknown_op(text: str, data) -> str:
        head, distance, weight, temp, mag = text.split("|")
        name = data.draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10))
        field = data.draw(st.integers(0, 4))
        if field == 0:
            head = name + head[head.index("["):]
        elif field == 1:
            slots = head[head.index("[") + 1:-1].split(",")
            slots[data.draw(st.integers(0, 2))] = name
            head = head[:head.index("[") + 1] + ",".join(slots) + "]"
        elif field == 2:
            distance = name
        elif field == 3:
            weight = name
        else:
            head = head.replace("]", "," + name + "]")  # a fourth slot
        return "|".join((head, distance, weight, temp, mag))

    def number(text: str, data) -> str:
        parts = text.split("|")
        if data.draw(st.booleans()):
            parts[3] = "T" + data.draw(st.sampled_from(["0", "3", "-4", "4.5", "1e9", "nan", "inf", "", "T4", "x4"]))
        else:
            parts[4] = "x" + data.draw(st.sampled_from(["0", "2", "-1", "1000", "1e400", "nan", "-inf", "", "0.1.1",
                                                        "½"]))
        return "|".join(parts)

    lookalikes = {"l": "ⅼ", "o": "о", "|": "｜", ",": "，", "x": "×", "T": "Т", "[": "［", "a": "а", "e": "е",
                  "1": "１"}

    def lookalike(text: str, data) -> str:
        spots = [i for i, c in enumerate(text) if c in lookalikes]
        i = data.draw(st.sampled_from(spots))
        return text[:i] + lookalikes[text[i]] + text[i + 1:]

    @st.composite
    def mutated(draw):
        text = draw(base)
        how = draw(st.sampled_from([drop_or_double, swap_fields, unknown_op, number, lookalike]))
        return how(text, _Drawer(draw))

    return mutated()


class _Drawer:
    """Lets the mutation helpers above call ``data.draw`` inside a composite strategy."""

    def __init__(self, draw) -> None:
        self.draw = draw


def check_genome_text(capsys, text: str) -> None:
    """``kdzero genome check TEXT`` either accepts a text Genome.parse accepts, or refuses it in one line."""
    code, out, err = run_cli(capsys, ["genome", "check", "--", text])
    try:
        genome = Genome.parse(text)
    except Exception:
        genome = None
    if genome is not None:
        assert code == 0 and not err and str(genome) in out, (text, code, err)
    else:
        assert_one_line_error(code, out, err, "genome")


@FUZZ
@given(text=st.text(max_size=60))
@example(text="")
@example(text="\n")
@example(text="|||||")
@example(text="logit[no,no,no]|kl|no|T4|x1\nfeat[no,no,no]|l2|no|T1|x100")
@example(text="logit[no,no,no]|kl|no|T4|x1\x00")
@example(text="\u2028|\u2029|\x85|\x1c|\x1d")
def test_genome_check_refuses_arbitrary_text_in_one_line(capsys, text):
    check_genome_text(capsys, text)


@FUZZ
@given(text=st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_genome_check_refuses_arbitrary_bytes_in_one_line(capsys, text):
    check_genome_text(capsys, text)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_mutations())
def test_genome_check_refuses_near_misses_in_one_line(capsys, text):
    check_genome_text(capsys, text)


@pytest.mark.parametrize("text, fragments", [
    ("logit[no,no,no]|kl|no|T0|x1", ("temperature 0", "T4")),
    ("logit[no,no,no]|kl|no|T+4|x1", ("temperature 'T+4'", "T4")),
    ("logit[no,no,no]|kl|no|T4|x-2", ("magnitude 'x-2'", "x1")),
    ("logit[no,no,no]|kll|no|T4|x1", ("kll", "kl")),
    ("logit[no,no,nope]|kl|no|T4|x1", ("nope",)),
    ("logits[no,no,no]|kl|no|T4|x1", ("logits", "logit")),
    ("logit[no,no,no]kl|no|T4|x1", ("4", "5")),
    ("logit[no,no,no]||kl|no|T4|x1", ("6", "5")),
    ("logit[no,no]|kl|no|T4|x1", ("3",)),
    ("logit[no,no,no]|kl|no|x1|T4", ("temperature",)),
    ("logit[no,no,no]|kl|no|T4|x1e400", ("magnitude",)),
    ("ⅼogit[no,no,no]|kl|no|T4|x1", ("logit",)),
    ("logit[no,no,no]|kl|no|Т4|x1", ("temperature",)),
])
def test_genome_errors_name_the_bad_token_and_the_right_ones(capsys, text, fragments):
    cli_error(capsys, ["genome", "check", "--", text], *fragments)


@pytest.mark.parametrize("text", ["logit[no,no,no]|kl|no|T0|x1", "feat[no,no,no]|l3|no|T1|x100", "garbage", "|"])
def test_export_refuses_a_bad_genome_in_one_line(capsys, tmp_path, text):
    out = tmp_path / "distiller.py"
    cli_error(capsys, ["export", "--genome", text, "-o", out])
    assert not out.exists()


@pytest.mark.parametrize("text", ["logit[no,no,no]|kl|no|T0|x1", "feat[bogus,no,no]|l2|no|T1|x100", "x|y"])
def test_replay_refuses_a_bad_genome_before_training(capsys, tmp_path, files, text):
    cli_error(capsys, ["replay", "--genome", text, "--teacher", "resnet8", "--teacher-ckpt", files["resnet8"],
                       "--epochs", "1", "--out", tmp_path / "out"])


@pytest.mark.parametrize("argv, prefix, fragments", [
    (["search", "--population", "abc"], "kdzero search", ("--population", "abc")),
    (["search", "--steps", "2.5"], "kdzero search", ("--steps", "2.5")),
    (["search", "--normalize", "imgnet"], "kdzero search", ("imgnet", "imagenet")),
    (["genome", "check"], "kdzero genome check", ("genome",)),
    (["genome", "chek", "x"], "kdzero genome", ("chek", "check")),
    (["serch"], "kdzero", ("serch", "search")),
    (["leaderboard", "x", "--format", "xml"], "kdzero leaderboard", ("xml", "csv")),
    (["replay", "--seeds", "many"], "kdzero replay", ("--seeds", "many")),
    (["worker", "--study", "s"], "kdzero worker", ("--storage",)),
])
def test_option_syntax_errors_are_one_line_too(capsys, argv, prefix, fragments):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert_one_line_error(exit_info.value.code, out, err, prefix[len("kdzero "):] if " " in prefix else "",
                          *fragments)


# ------------------------------------------------------------------------------------------------ 2. configs
@pytest.mark.parametrize("body, fragments", [
    ('populaton = 4\n', ("populaton", "population")),
    ('[proxy]\nstep = 5\n', ("proxy.step", "steps")),
    ('population = "4"\n', ("population", "integer", "'4'")),
    ('population = 4.0\n', ("population", "integer", "4.0")),
    ('iterations = 2.5\n', ("iterations", "integer")),
    ('student = ["resnet8"]\n', ("student", "string")),
    ('population = true\n', ("population", "integer", "True")),
    ('seed = false\n', ("seed", "integer")),
    ('[proxy]\nbatch_size = "32"\n', ("batch_size", "integer")),
    ('proxy = 3\n', ("proxy", "table")),
    ('population = -3\n', ("population", ">= ", "-3")),
    ('iterations = -1\n', ("iterations", "-1")),
    ('population = = 4\n', ("not valid TOML",)),
    ('[proxy\nsteps = 4\n', ("not valid TOML",)),
    ('name = "a/b"\n', ("name", "plain folder name")),
    ('normalize = "imgnet"\n', ("normalize", "imagenet")),
])
def test_search_refuses_a_bad_config_before_creating_anything(capsys, tmp_path, body, fragments):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    runs = tmp_path / "runs"
    cli_error(capsys, ["search", "--config", config, "--runs-dir", runs, "--quiet"], "bad.toml", *fragments)
    no_study_below(runs)
    assert not runs.exists() or not any(runs.rglob("*")), list(runs.rglob("*"))


def test_search_refuses_a_config_that_is_not_utf8_or_missing(capsys, tmp_path):
    runs = tmp_path / "runs"
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    cli_error(capsys, ["search", "--config", bad, "--runs-dir", runs], "latin.toml")
    cli_error(capsys, ["search", "--config", tmp_path / "nope.toml", "--runs-dir", runs], "nope.toml",
              "does not exist")
    cli_error(capsys, ["search", "--config", tmp_path, "--runs-dir", runs], str(tmp_path))
    no_study_below(runs)
    assert not runs.exists()


def test_search_refuses_bad_numbers_on_the_command_line(capsys, tmp_path):
    runs = tmp_path / "runs"
    cli_error(capsys, ["search", "--population", "-2", "--runs-dir", runs], "population", "-2")
    cli_error(capsys, ["search", "--population", "1", "--runs-dir", runs], "population", ">= 2")
    cli_error(capsys, ["search", "--workers", "0", "--runs-dir", runs], "workers")
    cli_error(capsys, ["search", "--device", "tpu", "--runs-dir", runs], "tpu", "cpu")
    assert not runs.exists()


# ------------------------------------------------------------------------------------------------ 3. corrupt DBs
def _sqlite_not_optuna(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('keep me')")
    con.commit()
    con.close()


CORRUPT = {
    "random": lambda p: p.write_bytes(os.urandom(8192)),
    "empty": lambda p: p.write_bytes(b""),
    "sqlite_not_optuna": _sqlite_not_optuna,
    "sqlite_header_then_garbage": lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(4096)),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_leaderboard_refuses_a_corrupt_study_database_and_leaves_it_alone(capsys, tmp_path, kind):
    db = tmp_path / "runs" / "x" / "study.db"
    db.parent.mkdir(parents=True)
    CORRUPT[kind](db)
    before = db.read_bytes()
    cli_error(capsys, ["leaderboard", db.parent], "study.db")
    cli_error(capsys, ["leaderboard", "--storage", f"sqlite:///{db.as_posix()}", "--study", "x"], "study.db")
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["study.db"]


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_search_refuses_a_corrupt_study_database_and_never_overwrites_it(capsys, tmp_path, files, kind):
    runs = tmp_path / "runs"
    db = runs / "x" / "study.db"
    db.parent.mkdir(parents=True)
    CORRUPT[kind](db)
    before = db.read_bytes()
    cli_error(capsys, ["search", "--config", files["config"], "--name", "x", "--runs-dir", runs, "--teacher",
                       "resnet8", "--teacher-ckpt", files["resnet8"], "--population", "2", "--iterations", "1",
                       "--steps", "5", "--quiet"], "study.db")
    assert db.read_bytes() == before
    # and a worker pointed at it refuses it the same way
    cli_error(capsys, ["worker", "--storage", f"sqlite:///{db.as_posix()}", "--study", "x", "--quiet"], "study.db")
    assert db.read_bytes() == before


# ------------------------------------------------------------------------------------------------ 4. storage URLs
@pytest.mark.parametrize("url, fragment", [
    ("notascheme://x", "notascheme"),
    ("postgresql://nouser@127.0.0.1:1/nodb", "127.0.0.1"),
    ("sqlite:////nonexistent_dir_kdzero/sub/x.db", "nonexistent_dir_kdzero"),
    ("not a url at all", "not a url at all"),
])
@pytest.mark.parametrize("command", ["leaderboard", "worker", "export"])
def test_a_wrong_storage_url_fails_fast_in_one_line(capsys, command, url, fragment):
    import time

    argv = {"leaderboard": ["leaderboard", "--storage", url, "--study", "s"],
            "worker": ["worker", "--storage", url, "--study", "s", "--quiet"],
            "export": ["export", "--storage", url, "--study", "s", "--rank", "1"]}[command]
    start = time.monotonic()
    message = cli_error(capsys, argv, fragment)
    assert time.monotonic() - start < 15
    assert "nouser@" not in message or "***@" in message
    assert not Path("/nonexistent_dir_kdzero").exists(), "reading a storage created folders"


def test_search_with_an_unreachable_storage_refuses_before_creating_a_study(capsys, tmp_path, files):
    runs = tmp_path / "runs"
    cli_error(capsys, ["search", "--config", files["config"], "--name", "pg", "--runs-dir", runs, "--teacher",
                       "resnet8", "--teacher-ckpt", files["resnet8"], "--storage",
                       "postgresql://nouser@127.0.0.1:1/nodb", "--quiet"], "127.0.0.1")
    cli_error(capsys, ["search", "--config", files["config"], "--name", "ns", "--runs-dir", runs, "--teacher",
                       "resnet8", "--teacher-ckpt", files["resnet8"], "--storage", "notascheme://x", "--quiet"],
              "notascheme")
    no_study_below(runs)


# ------------------------------------------------------------------------------------------------ 5. datasets
def _dataset_cases(tmp: Path) -> list[tuple[list[str], tuple[str, ...]]]:
    empty = tmp / "empty"
    empty.mkdir()
    no_images = tmp / "noimages"
    (no_images / "train" / "cat").mkdir(parents=True)
    (no_images / "train" / "cat" / "readme.txt").write_text("not an image")
    (no_images / "test" / "cat").mkdir(parents=True)
    return [
        (["--dataset", "imagefolder:/nonexistent_kdzero"], ("nonexistent_kdzero",)),
        (["--dataset", f"imagefolder:{empty}"], (str(empty),)),
        (["--dataset", f"imagefolder:{no_images}"], ("no images",)),
        (["--dataset", "imagefolder:"], ("imagefolder",)),
        (["--dataset", "cifar10", "--data-root", "/nonexistent_kdzero"], ("cifar10", "/nonexistent_kdzero")),
        (["--dataset", "cifar100", "--data-root", str(empty)], ("cifar100", str(empty))),
        (["--dataset", "cifar-10"], ("cifar-10", "cifar10")),
        (["--dataset", "digit"], ("digit", "digits")),
    ]


def test_bad_datasets_are_refused_in_one_line_by_search_replay_and_train_teacher(capsys, tmp_path, files):
    runs = tmp_path / "runs"
    for extra, fragments in _dataset_cases(tmp_path):
        cli_error(capsys, ["search", "--config", files["config"], "--name", "d", "--runs-dir", runs, "--teacher",
                           "resnet8", "--teacher-ckpt", files["resnet8"], "--quiet", *extra], *fragments)
        cli_error(capsys, ["replay", "--method", "kd", "--teacher", "resnet8", "--teacher-ckpt", files["resnet8"],
                           "--epochs", "1", "--out", tmp_path / "replay", *extra], *fragments)
        cli_error(capsys, ["train-teacher", "--model", "resnet8", "--epochs", "1", "--out", tmp_path / "teacher",
                           *extra], *fragments)
    no_study_below(runs)


def test_a_failed_start_does_not_lock_the_run_name_to_its_bad_settings(capsys, tmp_path, files):
    """A search that fails on bad input before it started must not remember that input: fixing the input and
    re-running under the same name is not 'a run with other settings'."""
    runs = tmp_path / "runs"
    common = ["search", "--config", files["config"], "--name", "n", "--runs-dir", runs, "--quiet",
              "--teacher", "resnet8"]
    cli_error(capsys, [*common, "--teacher-ckpt", files["random"]], "random.pt")
    message = cli_error(capsys, [*common, "--teacher-ckpt", files["truncated"]], "truncated.pt")
    assert "other settings" not in message
    message = cli_error(capsys, [*common, "--teacher-ckpt", files["resnet8"], "--dataset", "digit"], "digits")
    assert "other settings" not in message
    no_study_below(runs)


# ------------------------------------------------------------------------------------------------ 6/7. checkpoints
CHECKPOINT_CASES = [
    ("truncated", "resnet20", ("truncated.pt",)),
    ("legacy_struct", "resnet20", ("legacy_struct.pt", "truncated")),
    ("legacy_index", "resnet20", ("legacy_index.pt", "truncated")),
    ("empty", "resnet20", ("empty.pt",)),
    ("directory", "resnet20", ("afolder.pt", "directory")),
    ("random", "resnet20", ("random.pt",)),
    ("vgg8", "resnet20", ("vgg8.pt", "another architecture")),
    ("resnet20_c100", "resnet20", ("100 classes", "has 10")),
    ("resnet8", "resnet20", ("resnet8.pt",)),
    ("missing", "resnet20", ("missing.pt",)),
]


@pytest.mark.parametrize("ckpt, teacher, fragments", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_replay_refuses_a_checkpoint_that_does_not_fit(capsys, tmp_path, files, ckpt, teacher, fragments):
    path = files.get(ckpt, files["folder"] / "missing.pt")
    out = tmp_path / "out"
    cli_error(capsys, ["replay", "--method", "kd", "--teacher", teacher, "--teacher-ckpt", path, "--epochs", "1",
                       "--out", out], *fragments)
    assert not any(out.rglob("*.pt")) if out.exists() else True


@pytest.mark.parametrize("ckpt, teacher, fragments", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_search_refuses_a_checkpoint_that_does_not_fit_before_creating_a_study(capsys, tmp_path, files, ckpt,
                                                                                 teacher, fragments):
    path = files.get(ckpt, files["folder"] / "missing.pt")
    runs = tmp_path / "runs"
    cli_error(capsys, ["search", "--config", files["config"], "--teacher", teacher, "--teacher-ckpt", path,
                       "--name", "t", "--runs-dir", runs, "--quiet"], *fragments)
    no_study_below(runs)


@pytest.mark.parametrize("flag, name, suggestion", [
    ("--teacher", "resnet2O", "resnet20"), ("--student", "resnet_8", "resnet8"), ("--teacher", "vgg", "vgg8"),
])
def test_unknown_model_names_are_refused_with_a_suggestion(capsys, tmp_path, files, flag, name, suggestion):
    runs = tmp_path / "runs"
    base = ["--teacher", "resnet8", "--teacher-ckpt", files["resnet8"]]
    cli_error(capsys, ["search", "--config", files["config"], "--name", "m", "--runs-dir", runs, "--quiet",
                       *base, flag, name], name, suggestion)
    cli_error(capsys, ["replay", "--method", "kd", *base, flag, name, "--epochs", "1", "--out", tmp_path / "o"],
              name, suggestion)
    no_study_below(runs)
    if flag == "--teacher":
        cli_error(capsys, ["train-teacher", "--model", name, "--epochs", "1", "--out", tmp_path / "t"], name,
                  suggestion)


def test_unknown_method_and_bad_replay_options_are_refused(capsys, tmp_path, files):
    base = ["replay", "--teacher", "resnet8", "--teacher-ckpt", files["resnet8"], "--epochs", "1", "--out",
            tmp_path / "o"]
    cli_error(capsys, [*base, "--method", "kdd"], "kdd", "kd")
    cli_error(capsys, [*base, "--method", "kd", "--genome", "logit[no,no,no]|kl|no|T4|x1"], "exactly one")
    cli_error(capsys, [*base, "--method", "kd", "--seeds", "0"], "seeds")
    cli_error(capsys, ["replay", "--method", "kd", "--teacher-ckpt", files["resnet8"], "--epochs", "1", "--out",
                       tmp_path / "o"], "--teacher")


@pytest.mark.parametrize("genome, extra, fragments", [
    ("logit[no,no,no]|kl|no|T0|x1", [], ("temperature", "T4")),
    ("logit[no,no,no]|kl|no|T4|x1", ["--teacher-ckpt", "vgg8"], ("vgg8.pt", "another architecture")),
    ("logit[no,no,no]|kl|no|T4|x1", ["--teacher-ckpt", "resnet20_c100"], ("100 classes", "has 10")),
    ("logit[no,no,no]|kl|no|T4|x1", ["--dataset", "digit"], ("digit", "digits")),
    ("logit[no,no,no]|kl|no|T4|x1", ["--student", "resnet_8"], ("resnet_8", "resnet8")),
])
def test_evaluate_refuses_bad_input_in_one_line(capsys, tmp_path, files, genome, extra, fragments):
    extra = [str(files[e]) if e in files else e for e in extra]
    runs = tmp_path / "runs"
    cli_error(capsys, ["evaluate", "--config", files["config"], "--teacher", "resnet8", "--teacher-ckpt",
                       files["resnet8"], "--runs-dir", runs, "--steps", "5", *extra, "--", genome], *fragments)
    no_study_below(runs)


# ------------------------------------------------------------------------------------------------ 8. whole studies
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, files):
    """A real, finished two-genome search on digits: runs/tiny/study.db."""
    runs = tmp_path_factory.mktemp("tiny_runs")
    args = ["search", "--config", files["config"], "--name", "tiny", "--runs-dir", runs, "--teacher", "resnet8",
            "--teacher-ckpt", files["resnet8"], "--student", "resnet8", "--population", "2", "--iterations", "1",
            "--steps", "5", "--quiet", "--no-guided"]
    code = main([str(a) for a in args])
    assert code == 0
    db = runs / "tiny" / "study.db"
    assert db.is_file()
    return {"runs": runs, "db": db, "args": args}


@pytest.mark.parametrize("change, setting", [
    (["--student", "resnet20"], "student"),
    (["--seed", "7"], "seed"),
    (["--space", "full"], "space"),
    (["--teacher-ckpt", "OTHER"], "teacher_ckpt"),
])
def test_resuming_with_a_changed_identity_setting_is_refused_and_the_study_is_untouched(capsys, tiny_study, files,
                                                                                        change, setting):
    db = tiny_study["db"]
    before = study_snapshot(db)
    config_before = (db.parent / "config.json").read_text()
    change = [str(files["resnet20"]) if c == "OTHER" else c for c in change]
    message = cli_error(capsys, [*tiny_study["args"], *change], setting, "--name")
    assert "tiny" in message
    assert study_snapshot(db) == before
    assert (db.parent / "config.json").read_text() == config_before
    code, out, err = run_cli(capsys, ["leaderboard", db.parent, "--format", "csv"])
    assert code == 0 and not err and out.startswith("rank,")


def test_leaderboard_and_export_of_a_real_study_refuse_bad_ranks_and_columns(capsys, tiny_study):
    run = tiny_study["db"].parent
    before = study_snapshot(tiny_study["db"])
    cli_error(capsys, ["leaderboard", run, "--sort", "scroe"], "scroe", "score")
    cli_error(capsys, ["leaderboard", run, "--top", "0"], "top")
    cli_error(capsys, ["leaderboard", run, "--study", "nope"], "nope", "tiny")
    cli_error(capsys, ["export", run, "--rank", "99"], "99")
    cli_error(capsys, ["export", run, "--rank", "0"], "rank")
    cli_error(capsys, ["replay", run, "--rank", "99", "--epochs", "1"], "99")
    cli_error(capsys, ["leaderboard", run.parent / "tinyy"], "tinyy", "tiny")
    assert study_snapshot(tiny_study["db"]) == before


def test_a_worker_with_a_bad_override_leaves_the_study_untouched(capsys, tiny_study, files):
    db = tiny_study["db"]
    before = study_snapshot(db)
    url = f"sqlite:///{db.as_posix()}"
    cli_error(capsys, ["worker", "--storage", url, "--study", "nope", "--quiet"], "nope", "tiny")
    cli_error(capsys, ["worker", "--storage", url, "--study", "tiny", "--teacher-ckpt", files["vgg8"], "--quiet"],
              "vgg8.pt")
    cli_error(capsys, ["worker", "--storage", url, "--study", "tiny", "--device", "tpu", "--quiet"], "tpu")
    assert study_snapshot(db) == before
