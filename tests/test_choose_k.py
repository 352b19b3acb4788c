"""`hf-topafa choose-k`: a TopK sweep trained from two seeds, k chosen by how far the seeds agree;
and `scripts/synth_choose_k.py`, which scores truth-free choices of k against a world's truth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from hf_topafa.evaluation.agreement import dictionary_agreement
from hf_topafa.training.choose_k import (
    DEAD_SHARE_GUARD,
    NEAR_TIE,
    agreement_by_k,
    choice,
    parse_command,
    self_consistent,
    self_consistent_line,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from synth_choose_k import main as synth_choose_k_main  # noqa: E402
from synth_read_again import command_again  # noqa: E402


def test_the_k_whose_seeds_share_their_dictionary_is_chosen():
    torch.manual_seed(0)
    shared = torch.randn(64, 16)
    decoders = {
        4: [torch.randn(64, 16), torch.randn(64, 16)],
        8: [shared, -2.0 * shared[torch.randperm(64)]],  # the same features, reordered
        16: [shared, shared + 0.5 * torch.randn(64, 16)],  # the same, blurred
    }
    rows = agreement_by_k(decoders)
    assert [row["k"] for row in rows] == [4, 8, 16]
    assert rows[1]["agreement"] == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["agreement"] < rows[2]["agreement"] < rows[1]["agreement"]
    assert choice(rows) == {
        "k": 8,
        "agreement": rows[1]["agreement"],
        "near_ties": [],
        "edge": None,
    }
    assert choice(rows[1:])["edge"] == "smallest" and choice(rows[:2])["edge"] == "largest"


def test_three_seeds_average_their_three_pairs_and_near_ties_are_named():
    torch.manual_seed(0)
    a, b, c = (torch.randn(32, 8) for _ in range(3))
    (row,) = agreement_by_k({5: [a, b, c]})
    pairs = [dictionary_agreement(x, y)["mcc"] for x, y in ((a, b), (a, c), (b, c))]
    assert row["agreement"] == pytest.approx(sum(pairs) / 3, abs=1e-6)
    rows = [{"k": 8, "agreement": 0.70}, {"k": 12, "agreement": 0.70 - NEAR_TIE / 2},
            {"k": 16, "agreement": 0.70 - 2 * NEAR_TIE}]  # fmt: skip
    assert choice(rows)["near_ties"] == [12]


def test_options_are_checked_and_the_rest_goes_to_train_with_a_plain_topk_objective():
    args, rest = parse_command(["--k", "8", "16", "--output", "out", "--max-tokens", "100"])
    assert args.k == [8, 16] and args.seeds == [0, 1] and args.activation == "topk"
    assert rest == ["--max-tokens", "100", "--afa-coef", "0"]
    _, rest = parse_command(["--k", "8", "16", "--output", "o", "--afa_coef=0.03125"])
    assert rest == ["--afa_coef=0.03125"]
    for argv, message in (
        (["--k", "8", "--output", "o"], "two or more distinct positive"),
        (["--k", "8", "8", "--output", "o"], "two or more distinct positive"),
        (["--k", "0", "8", "--output", "o"], "two or more distinct positive"),
        (["--k", "8", "16", "--seeds", "3", "--output", "o"], "two or more distinct seeds"),
        (["--k", "8", "16", "--output", "o", "--seed", "3"], "--seed is set by choose-k"),
        (["--k", "8", "16", "--output", "o", "--resume"], "--resume is set by choose-k"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_command(argv)


@pytest.fixture(scope="module")
def tiny_caches(tmp_path_factory, smollm2):
    """Real SmolLM2 activations (layer 3): a small train cache and a held-out cache."""
    from hf_topafa.data import harvest

    root = tmp_path_factory.mktemp("choose_k")
    base = dict(layer=3, context_length=64, batch_windows=16, shuffle_buffer=0)
    return tuple(
        harvest.write_cache(
            harvest.HarvestConfig(**base, holdout=h, max_tokens=n), root / h, progress=False
        )
        for h, n in (("train", 2048), ("eval", 256))
    )


def procedure_d_count(folder, eval_dir, reader: str = "risk_floor", reading: str = "exclusive"):
    """Per held-out token (the eval cache's first 256), what procedure D's reading by ``reader``
    keeps of the run's dictionary, counted here from the pieces: the reading's code, unfolded
    by levels with no group of latents that fire nested, its atoms counted as ``reading`` says
    (``choose-k --reading``)."""
    from hf_topafa import SparseAutoencoder
    from hf_topafa.data.harvest import ActivationCache
    from hf_topafa.sae.absorption import (
        FoldedView,
        doubled_atoms,
        unabsorbed_directions,
        unfolded_by_levels,
    )
    from hf_topafa.sae.reading import read_with

    acts = ActivationCache(eval_dir).first_activations(256)
    sae = read_with(SparseAutoencoder.from_pretrained(folder), reader)
    with torch.no_grad():
        codes = sae(acts).feature_acts
    fired = (codes != 0).float()
    if reading in ("exclusive", "hubs"):
        view = unfolded_by_levels(sae, codes=fired, hubs=reading == "hubs")
    else:
        triangles = "lone" if reading == "lone" else None
        grouped = unabsorbed_directions(sae.W_dec, codes=fired, triangles=triangles)
        folded = unfolded_by_levels(sae, grouped, codes=fired, hubs=True, fold=True)
        view = FoldedView(folded, doubled_atoms(folded, fired) if reading == "doubles" else None)
    return float((view.unfold(codes) != 0).sum(-1).float().mean())


def test_the_command_trains_every_k_and_seed_once_then_reports_the_choice(
    tiny_caches, tmp_path, capsys
):
    from hf_topafa.cli import cli

    train_dir, eval_dir = tiny_caches
    out = tmp_path / "sweep"
    argv = ["choose-k", "--k", "4", "16", "--output", str(out),
            "--activation-cache", str(train_dir), "--eval-cache", str(eval_dir),
            "--max-tokens", "1024", "--batch-size", "256", "--d-sae", "64", "--eval-tokens",
            "256", "--checkpoint-every", "0", "--log-with", "none", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["topk-k16-seed0", "topk-k16-seed1", "topk-k4-seed0", "topk-k4-seed1"]
    result = json.loads((out / "choose_k.json").read_text())
    assert (out / "choose_k.png").stat().st_size > 1000
    assert [row["k"] for row in result["rows"]] == [4, 16]
    from hf_topafa import SparseAutoencoder

    for row in result["rows"]:  # the agreement is the saved decoders' own
        a, b = (SparseAutoencoder.from_pretrained(r["folder"]).W_dec for r in row["runs"])
        assert row["agreement"] == pytest.approx(dictionary_agreement(a, b)["mcc"], abs=1e-6)
        assert [r["l0"] for r in row["runs"]] == [pytest.approx(row["k"])] * 2
        assert 0 < row["from_start"] <= 1
    best = max(result["rows"], key=lambda r: r["agreement"])["k"]
    assert result["chosen"]["k"] == best and f"agreement: k = {best}" in printed
    # each dictionary read as procedure D reads it, on the held-out cache
    for row in result["rows"]:
        for run in row["runs"]:
            assert run["reading"] == pytest.approx(procedure_d_count(run["folder"], eval_dir))
        assert row["reading"] == pytest.approx(sum(r["reading"] for r in row["runs"]) / 2)
        dead = [r["dead"] / SparseAutoencoder.from_pretrained(r["folder"]).config.d_sae
                for r in row["runs"]]  # fmt: skip
        assert row["dead_share"] == pytest.approx(sum(dead) / 2)
        (line,) = [line for line in printed.splitlines() if line.startswith(f"{row['k']:>6} ")]
        assert f"{row['dead_share']:.1%}" in line.split()  # the table's dead column
    fits = [row["k"] for row in result["rows"]
            if row["reading"] <= row["k"] and row["dead_share"] <= DEAD_SHARE_GUARD]  # fmt: skip
    assert result["self_consistent"]["k"] == (min(fits) if fits else None)
    assert self_consistent_line(result) in printed
    assert result["chosen"]["edge"] in ("smallest", "largest") and "add a k" in printed  # of two
    config = json.loads((out / "topk-k4-seed1" / "training_config.json").read_text())
    assert config["optim"]["seed"] == 1 and config["sae"]["afa_coef"] == 0.0

    # Again: every run is finished, so none is trained again and the choice is the same.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")}
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")} == stamps
    assert json.loads((out / "choose_k.json").read_text())["chosen"] == result["chosen"]
    assert "left as it is" in capsys.readouterr().out


def test_the_self_consistent_k_is_the_smallest_whose_reading_fits_its_slots():
    rows = [{"k": 4, "reading": 5.2}, {"k": 8, "reading": 7.9}, {"k": 16, "reading": 9.0}]
    assert self_consistent(rows)["k"] == 8
    assert self_consistent(rows[:1])["k"] is None
    result = {"rows": rows, "self_consistent": self_consistent(rows[:1])}
    assert "add a larger k" in self_consistent_line(result)
    result = {"rows": rows[1:], "self_consistent": self_consistent(rows[1:])}  # 8 is smallest
    line = self_consistent_line(result)
    assert "k = 8" in line and "a k below may fit" in line
    result["rows"] = rows
    assert "k = 8" in self_consistent_line(result) and "below" not in self_consistent_line(result)
    assert "needs --eval-cache" in self_consistent_line({"rows": rows})


def test_a_k_whose_dictionary_left_many_latents_dead_is_passed_over_unread():
    # k = 4 fits its slots only because a sixth of its latents never fire (the flat world's k = 5)
    rows = [{"k": 4, "reading": 3.5, "dead_share": 0.16}, {"k": 8, "reading": 7.9, "dead_share": 0.0},
            {"k": 16, "reading": 9.0, "dead_share": DEAD_SHARE_GUARD}]  # fmt: skip
    chosen = self_consistent(rows)
    assert chosen["k"] == 8 and chosen["passed_over"] == [4]
    assert self_consistent([{**row, "dead_share": None} for row in rows])["k"] == 4  # unknown: kept
    rows[0]["reading"] = None  # a passed-over k needs no reading
    assert self_consistent(rows)["k"] == 8
    line = self_consistent_line({"rows": rows, "self_consistent": chosen})
    assert "k = 8" in line and "dead: k = 4" in line
    none = self_consistent([rows[0]])
    assert none["k"] is None and "dead: k = 4" in self_consistent_line(
        {"rows": [rows[0]], "self_consistent": none}
    )


def test_the_reading_is_procedure_ds_risk_floor_unfolded_without_nested_groups(monkeypatch):
    from hf_topafa.data import harvest
    from hf_topafa.evaluation import evaluate
    from hf_topafa.training.choose_k import READING_TOKENS, held_out_activations, reading_counts

    class Cache:  # a held-out cache of 20,000 tokens
        num_tokens = 20_000

        def __init__(self, path):
            assert path == "eval-cache"

        def first_activations(self, n):
            return torch.zeros(n, 4)

    calls = []

    def fake_evaluate(folder, acts, **options):
        calls.append((folder, len(acts), options))
        sparsity = {"l0_unfolded_by_levels_mean": 9.0, "l0_unfolded_by_levels_stars_mean": 8.0,
                    "l0_unfolded_by_levels_exclusive_mean": 7.0, "l0_mean": 5.0,
                    "l0_unfolded_by_levels_exclusive_hubs_mean": 6.0,
                    "l0_unfolded_by_levels_exclusive_hubs_folded_mean": 5.5,
                    "l0_unfolded_by_levels_exclusive_hubs_folded_doubles_mean": 5.25,
                    "l0_unfolded_by_levels_exclusive_hubs_folded_lone_mean": 5.75}  # fmt: skip
        return {"sparsity": sparsity}, None

    monkeypatch.setattr(harvest, "ActivationCache", Cache)
    monkeypatch.setattr(evaluate, "evaluate_activations", fake_evaluate)
    counts = {"exclusive": 7.0, "hubs": 6.0, "folded": 5.5, "doubles": 5.25, "lone": 5.75}
    assert reading_counts("run", held_out_activations("eval-cache")) == counts
    assert calls == [("run", READING_TOKENS, {"read_with": "risk_floor", "unfold": True})]
    # --reader risk_refit: the same unfolded reading, the amplitudes re-fit
    assert reading_counts("run", held_out_activations("eval-cache"), "risk_refit") == counts
    assert calls[-1][2] == {"read_with": "risk_refit", "unfold": True}
    rows = [{"k": 8, "reading": 7.0}]
    chosen = self_consistent(rows, "risk_refit")
    assert chosen["rule"] == "risk_refit, unfolded by levels, exclusive"
    assert "reading (risk_refit, absorbed" in self_consistent_line(
        {"rows": rows, "self_consistent": chosen}
    )
    assert parse_command(["--k", "4", "8", "--output", "o"])[0].reader == "risk_floor"
    with pytest.raises(SystemExit):  # argparse names the valid readers
        parse_command(["--k", "4", "8", "--output", "o", "--reader", "topk"])


def test_a_bad_choose_k_option_is_one_line_naming_what_is_valid(capsys):
    from hf_topafa.cli import cli

    assert cli.main(["choose-k", "--k", "8", "--output", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--k needs two or more distinct positive values" in err
    argv = ["choose-k", "--k", "8", "16", "--output", "o", "--hubs", "--reading", "folded"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--hubs is --reading hubs" in err
    assert (
        parse_command(["--k", "4", "8", "--output", "o", "--hubs", "--reading", "hubs"])[0].reading
        == "hubs"
    )


def write_ladder(
    folder,
    counts: dict[int, float],
    held: float = 10.0,
    dead: dict[int, int] | None = None,
    world: str = "world",
) -> list[str]:
    """A bench summary of plain TopK runs on ``world`` (1,000 latents, ``dead`` of them dead,
    default none) and one procedure D reading per k, as the bench and ``synth_reread.py`` write
    them; each reading's F1 and MCC beat the summary's best. A k whose count is None is trained,
    not read."""
    dead = dead or {}
    rows = [{"world": world, "activation": "topk", "trainer": "hf_topafa", "k": k, "f1": 0.6,
             "mcc": 0.7, "dead": dead.get(k, 0), "d_sae": 1000} for k in counts]  # fmt: skip
    # another world's TopK in the same summary sets no bar here
    rows.append({**rows[0], "world": f"{world}-other", "f1": 0.99, "mcc": 0.99})
    summary = {"rows": rows}
    files = [str(folder / "summary.json")]
    (folder / "summary.json").write_text(json.dumps(summary))
    for k, count in ((k, c) for k, c in counts.items() if c is not None):
        row = {"rule": "risk_floor, unfolded", "l0": count, "true_l0_top_width": held,
               "f1": 0.8, "mcc": 0.75, "l0_corr": 0.9}  # fmt: skip
        path = folder / f"reading-k{k}.json"
        path.write_text(json.dumps({"run": f"runs/{world}/topk-k{k}", "rows": [row]}))
        files.append(str(path))
    return files


def test_the_self_consistent_k_is_the_smallest_whose_reading_fits_and_bars_are_scored(
    tmp_path, monkeypatch
):
    # k = 4 and 8 read more than they have slots for; k = 12 is the first that leaves room
    files = write_ladder(tmp_path, {4: 6.0, 8: 9.5, 12: 10.5, 16: 12.0})
    agreement = tmp_path / "seeds.json"
    agreement.write_text(json.dumps({"rows": [{"name": "topk-k8", "seeds_mcc": 0.8},
                                              {"name": "topk-k16", "seeds_mcc": 0.7},
                                              {"name": "jumprelu", "seeds_mcc": 0.9}]}))  # fmt: skip
    out = tmp_path / "choice.json"
    argv = [
        "synth_choose_k.py",
        "--ladder",
        *files,
        "--agreement",
        str(agreement),
        "--json",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    synth_choose_k_main()
    (ladder,) = json.loads(out.read_text())["ladders"]
    assert ladder["self_consistent_k"] == 12 and ladder["agreed_k"] == 8
    bars = {r["k"]: r["bars"] for r in ladder["readings"]}
    assert bars[12] == {"count": True, "f1": True, "mcc": True, "corr": True}
    assert bars[4]["count"] is False and bars[16]["count"] is False  # 0.6x and 1.2x
    tally = {"ladders": 1, "bars": 4, "of": 4, "count_in_band": 1, "all_four": 1}
    assert json.loads(out.read_text())["own_k_tally"] == tally

    # with k = 8 unread the choice would hang on it, so none is made
    monkeypatch.setattr(sys, "argv", [*argv[:3], *files[2:], "--json", str(out)])
    synth_choose_k_main()
    (ladder,) = json.loads(out.read_text())["ladders"]
    assert ladder["self_consistent_k"] is None and ladder["unread_k"] == [4]
    tally = json.loads(out.read_text())["own_k_tally"]  # no choice: no bar
    assert (tally["bars"], tally["count_in_band"], tally["all_four"]) == (0, 0, 0)


def test_two_seeds_ladders_also_choose_on_their_mean_reading(tmp_path, monkeypatch):
    # seed 1's k = 6 reads 6.02, over its slots; the seeds' mean (5.97) fits
    first, second = tmp_path / "seed0", tmp_path / "seed1"
    first.mkdir(), second.mkdir()
    files0 = write_ladder(first, {4: 5.6, 6: 5.92, 8: 7.0})
    files1 = write_ladder(second, {4: 5.4, 6: 6.02, 8: 7.7})
    out = tmp_path / "choice.json"
    argv = ["synth_choose_k.py", "--ladder", *files0, "--ladder", *files1, "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    synth_choose_k_main()
    result = json.loads(out.read_text())
    assert [ladder["self_consistent_k"] for ladder in result["ladders"]] == [6, 8]
    assert result["seeds_mean_self_consistent_k"] == 6
    # a seed that left k = 4 unread leaves the mean no choice
    monkeypatch.setattr(sys, "argv", [*argv[:3], *files0[2:], *argv[len(files0) + 2 :]])
    synth_choose_k_main()
    assert json.loads(out.read_text())["seeds_mean_self_consistent_k"] is None
    # ladders of two worlds are not seeds of one: no mean is taken across them
    third = tmp_path / "other"
    third.mkdir()
    files2 = write_ladder(third, {4: 5.6, 6: 5.92, 8: 7.0}, world="other")
    monkeypatch.setattr(sys, "argv", [*argv[:2], *files0, "--ladder", *files2, "--json", str(out)])
    synth_choose_k_main()
    result = json.loads(out.read_text())
    assert [ladder["self_consistent_k"] for ladder in result["ladders"]] == [6, 6]
    assert result["seeds_mean_self_consistent_k"] is None  # the same readings, one world: 6


def test_synth_choose_k_passes_over_a_k_with_many_dead_latents(tmp_path, monkeypatch):
    # k = 4 fits (3.5) on a dictionary with 16% of its latents dead; k = 2 is dead and unread
    files = write_ladder(tmp_path, {2: None, 4: 3.5, 8: 7.5, 16: 9.0}, dead={2: 400, 4: 160})
    out = tmp_path / "choice.json"
    monkeypatch.setattr(sys, "argv", ["synth_choose_k.py", "--ladder", *files, "--json", str(out)])
    synth_choose_k_main()
    (ladder,) = json.loads(out.read_text())["ladders"]
    assert ladder["self_consistent_k"] == 8 and ladder["unread_k"] == [2]
    assert ladder["self_consistent_k_unguarded"] is None  # k = 2 unread: no choice without it
    # two seeds: the mean dead share passes k = 4 over where one seed alone would not
    second = tmp_path / "seed1"
    second.mkdir()
    files1 = write_ladder(second, {2: None, 4: 3.5, 8: 7.5, 16: 9.0}, dead={2: 400, 4: 10})
    argv = ["synth_choose_k.py", "--ladder", *files, "--ladder", *files1, "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    synth_choose_k_main()
    result = json.loads(out.read_text())
    assert [ladder["self_consistent_k"] for ladder in result["ladders"]] == [8, 4]
    assert result["seeds_mean_self_consistent_k"] == 8  # mean share 8.5%
    assert result["seeds_mean_self_consistent_k_unguarded"] is None


def test_synth_choose_k_refuses_a_reading_of_a_k_the_summary_did_not_train(tmp_path, monkeypatch):
    files = write_ladder(tmp_path, {4: 3.0})
    reading = json.loads((tmp_path / "reading-k4.json").read_text())
    reading["run"] = "runs/world/topk-k5"
    (tmp_path / "reading-k4.json").write_text(json.dumps(reading))
    monkeypatch.setattr(sys, "argv", ["synth_choose_k.py", "--ladder", *files])
    with pytest.raises(SystemExit) as exc:
        synth_choose_k_main()
    message = str(exc.value)
    assert message.count("\n") == 0 and "reads TopK k = 5" in message and "[4]" in message


def test_a_reading_is_read_again_by_its_recorded_command_with_the_reader_swapped():
    recorded = ("python scripts/synth_reread.py runs/w/topk-k8 runs/w/cache-eval risk_floor "
                "--samples 10000 --stars --exclusive runs/w/cache-train --json old.json")  # fmt: skip
    command = command_again(recorded, "risk_refit", Path("new/r.json"))
    assert command[0] == sys.executable
    assert command[1:] == ["scripts/synth_reread.py", "runs/w/topk-k8", "runs/w/cache-eval",
                           "risk_refit", "--samples", "10000", "--stars", "--exclusive",
                           "runs/w/cache-train", "--json", "new/r.json", "--last-only"]  # fmt: skip
    with pytest.raises(ValueError, match="not a synth_reread.py reading by risk_floor"):
        command_again("python scripts/synth_bench.py --topk 8", "risk_refit", Path("r.json"))


@pytest.mark.parametrize(
    "reader", ["risk_refit", "risk_calibrated", "risk_tail", "risk_balance", "risk_switch"]
)
def test_the_reader_option_reads_every_dictionary_with_it(reader, tiny_caches, tmp_path, capsys):
    from hf_topafa.cli import cli

    train_dir, eval_dir = tiny_caches
    out = tmp_path / "sweep"
    argv = ["choose-k", "--k", "4", "16", "--output", str(out), "--reader", reader,
            "--activation-cache", str(train_dir), "--eval-cache", str(eval_dir),
            "--max-tokens", "1024", "--batch-size", "256", "--d-sae", "64", "--eval-tokens",
            "256", "--checkpoint-every", "0", "--log-with", "none", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "choose_k.json").read_text())
    assert result["self_consistent"]["rule"] == f"{reader}, unfolded by levels, exclusive"
    assert "reading keeps" in printed and "self-consistent k" in printed
    for row in result["rows"]:
        for run in row["runs"]:
            assert run["reading"] == pytest.approx(
                procedure_d_count(run["folder"], eval_dir, reader)
            )


def test_the_hubs_option_reads_every_dictionary_with_hubs(tiny_caches, tmp_path, capsys):
    from hf_topafa.cli import cli

    train_dir, eval_dir = tiny_caches
    out = tmp_path / "sweep"
    argv = ["choose-k", "--k", "4", "16", "--output", str(out), "--hubs",
            "--activation-cache", str(train_dir), "--eval-cache", str(eval_dir),
            "--max-tokens", "1024", "--batch-size", "256", "--d-sae", "64", "--eval-tokens",
            "256", "--checkpoint-every", "0", "--log-with", "none", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "ancestors unfolded, hubs) keeps" in capsys.readouterr().out
    chosen = json.loads((out / "choose_k.json").read_text())["self_consistent"]
    assert chosen["reading"] == "hubs"
    assert chosen["rule"] == "risk_floor, unfolded by levels, exclusive, hubs"
    for row in json.loads((out / "choose_k.json").read_text())["rows"]:
        for run in row["runs"]:
            assert run["reading"] == pytest.approx(
                procedure_d_count(run["folder"], eval_dir, reading="hubs")
            )
    # the finished sweep read again with each other way of counting its atoms, nothing trained
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")}
    for reading, tail in (("folded", ", hubs folded"), ("doubles", ", hubs folded, doubles dropped"),
                          ("lone", ", hubs folded, lone triangles")):  # fmt: skip
        again = [a for a in argv if a != "--hubs"] + ["--reading", reading]
        assert cli.main(again) == 0
        printed = capsys.readouterr().out
        assert f"ancestors unfolded{tail}) keeps" in printed
        result = json.loads((out / "choose_k.json").read_text())
        assert result["self_consistent"]["reading"] == reading
        # every way of counting is read at once; each names its own self-consistent k
        by_reading = result["self_consistent_by_reading"]
        assert by_reading[reading] == result["self_consistent"]["k"]
        assert set(by_reading) == {"exclusive", "hubs", "folded", "doubles", "lone"}
        assert f"{reading} {by_reading[reading] or 'none'}" in printed.split("(--reading): ")[1]
        assert (
            result["self_consistent"]["rule"] == "risk_floor, unfolded by levels, exclusive" + tail
        )
        for row in result["rows"]:
            for run in row["runs"]:
                assert (
                    run["reading"]
                    == run["readings"][reading]
                    == pytest.approx(procedure_d_count(run["folder"], eval_dir, reading=reading))
                )
            assert row["reading"] == pytest.approx(sum(r["reading"] for r in row["runs"]) / 2)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")} == stamps


def test_synth_check_choice_scores_each_readings_choice_against_the_truth(tmp_path, monkeypatch):
    from synth_check_choice import main as check_main

    def row(l0: float, f1: float, mcc: float, corr: float = 0.9, **named) -> dict:
        made = {"true_pos": l0 * f1, "false_pos": l0 * (1 - f1)}
        return {"l0": l0, "true_l0_top_width": 10.0, "f1": f1, "mcc": mcc, "l0_corr": corr,
                **made, **named}  # fmt: skip

    trained = {"results": [row(k, 0.5 + k / 100, 0.6 + s / 10, sae=f"topk-k{k}-seed{s}")
                           for k in (4, 8) for s in (0, 1)]}  # fmt: skip
    folded = "risk_tail@3, unfolded by levels, exclusive, hubs folded"
    readings = {  # synth_reread.py --last-only files: (run, its last row)
        "k4-seed0-folded": ("topk-k4-seed0", row(7.0, 0.7, 0.75)),
        "k4-seed0-doubles": (
            "topk-k4-seed0",
            row(6.0, 0.7, 0.75, rule=f"{folded}, doubles dropped"),
        ),
        "k8-seed0-folded": ("topk-k8-seed0", row(9.5, 0.57, 0.75)),  # under seed 0's best F1
        "k4-seed1-folded": ("topk-k4-seed1", row(9.0, 0.7, 0.65, corr=0.7)),  # seed 1's MCC: 0.7
        "k8-seed1-folded": ("topk-k8-seed1", row(10.5, 0.7, 0.75)),
    }
    paths = []
    for name, (run, last) in readings.items():
        earlier = row(1.0, 0.1, 0.1, rule="risk_tail@3")  # a reading's earlier rows are not read
        data = {"run": f"runs/w/choose/{run}", "rows": [earlier, {"rule": folded, **last}]}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(data))
    choice = {"chosen": {"k": 4}, "self_consistent_by_reading": {"folded": 8, "doubles": None}}
    for name, data in (("c", choice), ("t", trained)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = tmp_path / "check.json"
    monkeypatch.setattr(sys, "argv", ["synth_check_choice.py", str(tmp_path / "c.json"), "--trained",
                                      str(tmp_path / "t.json"), "--read", *map(str, paths),
                                      "--json", str(out), "--plot", str(tmp_path / "c.png")])  # fmt: skip
    check_main()
    assert (tmp_path / "c.png").stat().st_size > 10_000
    result = json.loads(out.read_text())
    assert result["best_topk"] == {"0": {"f1": 0.58, "mcc": 0.6}, "1": {"f1": 0.58, "mcc": 0.7}}
    assert result["agreed_k"] == 4 and result["command"].startswith("python scripts/synth_check")
    folded_seeds = result["readings"]["folded"]["seeds"]
    assert result["readings"]["folded"]["self_consistent_k"] == 8
    assert folded_seeds["0"]["8"]["bars"] == {"count": True, "f1": False, "mcc": True, "corr": True}
    assert folded_seeds["0"]["4"]["bars"]["count"] is False  # 0.7x
    assert folded_seeds["1"]["4"]["bars"] == {
        "count": True,
        "f1": True,
        "mcc": False,
        "corr": False,
    }
    assert folded_seeds["1"]["8"]["ratio"] == pytest.approx(1.05)
    assert folded_seeds["1"]["8"]["true"] == pytest.approx(7.35)  # what the count is made of
    assert folded_seeds["1"]["8"]["false"] == pytest.approx(3.15)
    # a reading's rows are only its own: the doubles file is not a folded one
    assert list(result["readings"]["doubles"]["seeds"]) == ["0"]
    assert result["readings"]["doubles"]["seeds"]["0"]["4"]["count"] == 6.0
    no_firings = {key: v for key, v in row(7.0, 0.7, 0.75).items() if key != "true_pos"}
    paths[0].write_text(
        json.dumps({"run": "runs/w/choose/topk-k4-seed0", "rows": [{"rule": folded, **no_firings}]})
    )
    with pytest.raises(SystemExit, match="k = 4, seed 0 holds no true and false firings"):
        check_main()
    paths[0].write_text(
        json.dumps({"run": "runs/w/topk-k4", "rows": [{"rule": folded, **row(1, 1, 1)}]})
    )
    with pytest.raises(SystemExit, match="names no choose-k run folder"):
        check_main()  # one line naming the file's run, no traceback
    choice.pop("self_consistent_by_reading")
    (tmp_path / "c.json").write_text(json.dumps(choice))
    with pytest.raises(SystemExit, match="run choose-k again with --eval-cache"):
        check_main()
