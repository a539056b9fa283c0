"""benchmarks/ablations.py: cached stages, pinned settings, the report from stored results, a --quick run."""

import json
import time

import pytest
import torch
from PIL import Image

from benchmarks import ablations as ab
from benchmarks import ablations_report as report
from minibigr.classifier import shipped_classifier_dir


# -- stages are computed once, then read back ---------------------------------------------------
def test_a_stage_runs_once_and_a_rerun_reads_its_json(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return {"value": {1: 2.5}}

    first = ab.Lab(tmp_path, ab.Settings()).stage("thing", fn)
    again = ab.Lab(tmp_path, ab.Settings()).stage("thing", fn)
    assert len(calls) == 1
    assert first == again == json.loads((tmp_path / "results" / "thing.json").read_text())
    assert first["value"] == {"1": 2.5}          # the first run returns what a re-run reads
    assert first["machine"] == ab.machine()      # CPU seconds compare only on one machine


def test_a_stage_not_asked_for_is_missing_not_computed(tmp_path):
    lab = ab.Lab(tmp_path, ab.Settings())
    lab.compute = False
    with pytest.raises(ab.MissingResult):
        lab.stage("absent", lambda: pytest.fail("computed a stage in read-only mode"))
    assert not (tmp_path / "results" / "absent.json").exists()


def test_a_failing_stage_writes_nothing(tmp_path):
    lab = ab.Lab(tmp_path, ab.Settings())

    def fail():
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        lab.stage("broken", fail)
    assert not (tmp_path / "results" / "broken.json").exists()
    assert lab.stage("broken", lambda: {"ok": True})["ok"]


def test_a_stored_stage_whose_files_are_not_in_out_is_computed_again(tmp_path):
    lab, cache = ab.Lab(tmp_path / "out", ab.Settings(), results=tmp_path / "results"), tmp_path / "out" / "cache"
    calls = []

    def encode():
        calls.append(1)
        cache.mkdir(parents=True, exist_ok=True)
        return {"images": len(calls)}

    assert lab.stage("codes", encode, makes=cache)["images"] == 1
    assert lab.stage("codes", encode, makes=cache)["images"] == 1        # its files are here: read back
    assert lab.stage("codes", lambda: pytest.fail("recomputed"))["images"] == 1   # a caller that needs no files
    cache.rmdir()                                                        # the results moved to another machine
    assert lab.stage("codes", encode, makes=cache)["images"] == 2
    assert json.loads((tmp_path / "results" / "codes.json").read_text())["images"] == 2


def test_a_training_resumed_across_invocations_counts_the_time_of_all_its_rounds():
    rounds = [{"step": 500, "cpu_seconds": 300.0, "seconds": 160.0}, {"step": 1000, "cpu_seconds": 280.0,
                                                                       "seconds": 150.0}]
    resumed = {"objective": "x0", "unconditional": False, "history": rounds, "cpu_seconds": 580.0,
               "stage_cpu_seconds": 290.0, "seconds": 151.0}                   # the last run did one round
    assert report.stage_time(resumed) == (310.0, 580.0)
    assert report.stage_time({"seconds": 5.0, "stage_cpu_seconds": 12.0, "cpu_seconds": 99.0}) == (5.0, 12.0)  # an eval
    assert report.untimed_trainings([resumed]) == []
    old = {**resumed, "history": [{"step": 500, "cpu_seconds": 300.0}, *rounds[1:]], "unconditional": True}
    assert report.untimed_trainings([resumed, old]) == ["x0 (unconditional)"]
    assert report.stage_time(old) == (151.0, 580.0)


def test_stage_seconds_exclude_the_stages_they_trigger(tmp_path):
    lab = ab.Lab(tmp_path, ab.Settings())

    def inner():
        time.sleep(0.3)
        return {}

    def busy():
        t = time.process_time()
        while time.process_time() - t < 0.3:
            pass
        return {}

    outer = lab.stage("outer", lambda: lab.stage("inner", inner) and lab.stage("busy", busy) and {})
    assert lab.stage("inner", inner)["seconds"] >= 0.3
    assert lab.stage("busy", busy)["stage_cpu_seconds"] >= 0.3
    assert outer["seconds"] < 0.15 and outer["stage_cpu_seconds"] < 0.15


def test_settings_are_pinned_per_results_directory(tmp_path):
    path, sampling = tmp_path / "settings.json", {"cfg": 2.0, "gumbel": 0.1, "temperature": 1.0}
    ab.pin_settings(path, ab.Settings(), sampling, "cnn-a")
    ab.pin_settings(path, ab.Settings(), dict(sampling), "cnn-a")
    with pytest.raises(ValueError, match="max_steps"):
        ab.pin_settings(path, ab.Settings(max_steps=5), sampling, "cnn-a")
    with pytest.raises(ValueError, match="sampling"):           # a setting no result name holds changed meanwhile
        ab.pin_settings(path, ab.Settings(), {**sampling, "temperature": 0.9}, "cnn-a")
    with pytest.raises(ValueError, match="classifier"):         # other features: FDs would not compare
        ab.pin_settings(path, ab.Settings(), sampling, "cnn-b")
    ab.pin_settings(path, ab.Settings(), {**sampling, "cfg": 3.0}, "cnn-a")  # new recommended CFG: other names
    ab.pin_settings(path, ab.Settings(order_gumbels=(0.03, 2.0)), sampling, "cnn-a")  # more points: more results


def test_the_shipped_classifier_scores_the_study(tmp_path):
    lab = ab.Lab(tmp_path, ab.Settings())
    assert lab.classifier_path == shipped_classifier_dir("fashion-mnist")
    assert len(lab.classifier_digest) == 16 and not (tmp_path / "classifier").exists()


def test_result_names_hold_every_sampling_setting_that_is_not_pinned():
    named = set(ab.NAMED)
    first = {"order": "entropy", "num_iter": 10, "diffusion_steps": 50, "deterministic": False, "cfg": 3.0,
             "gumbel": 0.03, "mask_schedule": "cosine", "precision": "bfloat16"}
    assert set(first) == named
    other = {"order": "random", "num_iter": 4, "diffusion_steps": 10, "deterministic": True, "cfg": 1.5,
             "gumbel": 0.5, "mask_schedule": "linear", "precision": "float32"}
    for key in named:                                           # each named setting changes the name on its own
        assert ab.eval_name("m", {**first, key: other[key]}) != ab.eval_name("m", first)
    for blind in ("random", "raster"):                          # ... but the blind orders never read the Gumbel
        assert ab.eval_name("m", {**first, "order": blind}) == ab.eval_name("m", {**first, "order": blind, "gumbel": 4})


def test_the_guidance_grid_is_the_random_order_and_the_best_certainty_arm_at_each_cfg():
    s = ab.Settings(guidance_cfgs=(1.0, 2.0))
    points = ab.guidance_points(s, {"order": "confidence", "gumbel": 0.1})
    assert points == [dict(cfg=1.0, order="random"), dict(cfg=2.0, order="random"),
                      dict(cfg=1.0, order="confidence", gumbel=0.1), dict(cfg=2.0, order="confidence", gumbel=0.1)]
    assert ab.guidance_points(s, None) == points[:2]              # before the order study has its results


def test_the_order_arms_are_each_certainty_order_at_the_authors_and_its_best_temperature():
    arms = ab.order_arms({"entropy": 0.3, "confidence": ab.AUTHORS_GUMBEL}, 64, "float32")
    assert list(arms) == ["entropy g=0.01", "entropy g=0.3", "confidence g=0.01", "random", "raster", "raster-1"]
    assert arms["entropy g=0.3"] == {"order": "entropy", "gumbel": 0.3, "precision": "float32"}
    assert arms["raster-1"] == {"order": "raster", "num_iter": 64, "mask_schedule": "linear", "precision": "float32"}
    sweep = {"entropy": [{"fd": 2.0, "sampling": {"gumbel": 0.0}}, {"fd": 1.5, "sampling": {"gumbel": 1.0}}],
             "confidence": []}
    assert ab.best_temperatures(sweep) == {"entropy": 1.0}


class IndexCodes:
    """A code cache of n rows (K = 4, 2 x 2 tokens) whose row i holds tokens all equal to i and label i % 3."""

    K, h, w = 4, 2, 2

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def get_batch(self, indices):
        indices = torch.as_tensor(indices)
        return indices[:, None, None].float().expand(-1, 4, 4), indices % 3


def test_null_labels_keep_the_tokens_and_null_every_label():
    data = ab.NullLabels(IndexCodes(6), null_class=10)
    tokens, labels = data.get_batch(torch.tensor([0, 4, 5]))
    assert torch.equal(tokens, IndexCodes(6).get_batch(torch.tensor([0, 4, 5]))[0])
    assert labels.tolist() == [10, 10, 10] and labels.dtype == torch.int64
    assert (data.K, data.h, data.w, len(data)) == (4, 2, 2, 6)


def test_rows_view_a_slice_of_the_cache():
    held = ab.Rows(IndexCodes(10), 7, 10)
    tokens, labels = held.get_batch(torch.tensor([0, 2]))
    assert len(held) == 3 and tokens[:, 0, 0].tolist() == [7, 9] and labels.tolist() == [1, 0]


def test_early_stopping_waits_patience_rounds_after_a_real_improvement():
    s = ab.Settings(patience=2, max_steps=10_000)
    rows = [{"step": 500 * (k + 1), "loss": loss} for k, loss in enumerate([1.0, 0.9, 0.8995, 0.95])]
    assert ab.best_round(rows) == 1                       # 0.8995 beats 0.9 by less than 0.1 %
    assert not ab.converged(rows[:3], s) and ab.converged(rows, s)
    assert not ab.converged([], s) and ab.converged(rows[:1], ab.Settings(max_steps=500))


def test_heldout_loss_is_the_same_at_every_call_and_covers_the_schedule():
    from minibigr.model import BiGR, BiGRConfig, mask_count

    torch.manual_seed(0)
    model = BiGR(BiGRConfig.preset("tiny-32", dim=32, n_layer=2, n_head=2, transcoder_width=32, K=8, num_tokens=16))

    class Codes:
        K, h, w = 8, 4, 4

        def __len__(self):
            return 40

        def get_batch(self, indices):
            g = torch.Generator().manual_seed(1)
            tokens = (torch.rand(40, 16, 8, generator=g) < 0.5).float()
            return tokens[indices], torch.as_tensor(indices) % 10

    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(int(args[2][0].sum())))
    first = ab.heldout_loss(model, Codes(), seed=0, batch_size=10)
    assert first == ab.heldout_loss(model, Codes(), seed=0, batch_size=10)
    assert 0 < first["bce"] < 2 and not model.training
    assert seen[:4] == [mask_count(s, 16) for s in (2, 6, 10, 14)]        # s = (j + 1/2) N / 4 for j = 0..3


def test_two_settings_are_ranked_apart_only_when_their_means_differ_by_more_than_either_range():
    def fd(mean, low, high):
        return {"fd": mean, "fd_range": [low, high]}

    res = {"a": fd(1.0, 0.9, 1.1), "b": fd(1.15, 1.1, 1.2), "c": fd(1.5, 1.45, 1.55)}
    assert report.ranking(res, ["c", "b", "a", "absent"]) == "a ≈ b < c"     # a-b: 0.15 inside a's range of 0.2
    assert report.verdict(res, "a", "b") == "not resolved (within the seeds' ranges)"
    assert report.verdict(res, "c", "a") == "reversed"
    assert report.verdict({"x": fd(1.0, 0.99, 1.01), "y": fd(1.1, 1.09, 1.11)}, "x", "y") == "holds"
    assert report.paper_ranking({"random": 7.12, "entropy": 3.17, "raster-1": 4.51}) == "entropy < raster-1 < random"


def test_a_probe_shortfall_is_called_only_beyond_two_standard_errors_of_the_test_set():
    def probe(top1):
        return {"test": {"top1": top1}}

    gap, two_se, said = report.probe_verdict(probe(0.80), probe(0.79), n_test=5000)
    assert round(gap, 6) == -1.0 and said == "not resolved (within two standard errors)"
    assert abs(two_se - 200 * ((0.8 * 0.2 + 0.79 * 0.21) / 5000) ** 0.5) < 1e-9      # about 1.6 points
    assert report.probe_verdict(probe(0.80), probe(0.75), n_test=5000)[2] == "reversed"
    assert report.probe_verdict(probe(0.80), probe(0.79), n_test=100_000)[2] == "reversed"   # same gap, more images
    assert report.probe_verdict(probe(0.80), probe(0.80), n_test=5000)[2] == "holds"      # "no worse"


def test_the_rule_keeps_the_settings_within_the_best_ones_seed_range_fastest_first():
    results = {"best": {"fd": 1.0, "fd_range": [0.9, 1.2], "cpu_seconds_per_image": 3.0},
               "close": {"fd": 1.2, "fd_range": [1.1, 1.3], "cpu_seconds_per_image": 1.0},
               "far": {"fd": 1.21, "fd_range": [1.0, 1.4], "cpu_seconds_per_image": 0.5}}
    assert ab.fastest_within_range(results) == ["close", "best"]


def test_unknown_stage_is_refused(capsys):
    with pytest.raises(SystemExit):
        ab.parse_args(["--out", "x", "--only", "order,speed"])
    assert "speed" in capsys.readouterr().err


# -- the report from stored results -------------------------------------------------------------
REFERENCE = {"fd_test_vs_train": 0.37, "precision": 0.7, "recall": 0.75, "class_accuracy_test": 0.9}


def fake_eval(model, fd, seconds=0.8, **sampling):
    base = {"order": "random", "num_iter": 10, "diffusion_steps": 50, "deterministic": False, "cfg": 3.0,
            "gumbel": 0.01, "mask_schedule": "cosine", "precision": "bfloat16"}
    return {"samples": 200, "fd": fd, "class_accuracy": 0.81, "precision": 0.83, "recall": 0.27, "knn_points": 200,
            "seconds_per_image": 2 * seconds, "cpu_seconds_per_image": seconds, "reference": REFERENCE,
            "model": model, "seconds": 60.0, "sampling": {**base, **sampling}}


def fake_probe(top1):
    return {"layer": 2, "l2": 0.001, "heldout": {"0": 0.5, "1": 0.6, "2": top1 + 0.01, "3": 0.55},
            "test": {"top1": top1, "top5": 0.99}, "seconds": 10.0}


def store_fake_results(lab: ab.Lab, with_time: bool = True) -> None:
    """Every evaluation for seeds 0, 1, 2 with FD mean - 0.1, mean, mean + 0.1 (a range of 0.2). The temperature sweep
    puts entropy's FD-best at 0.1 (FD 3.0) and confidence's at 0.03 (3.5); random scores 9.0 at every CFG but 3."""
    best = {"entropy": (0.1, 3.0), "confidence": (0.03, 3.5)}
    f32 = {"precision": lab.s.order_precision}                          # the order study's precision
    evals = [fake_eval("shipped", best[o][1] + abs(g - best[o][0]), order=o, gumbel=g, **f32)
             for o in best for g in lab.s.order_gumbels]
    evals += [fake_eval("shipped", fd, **ab.order_overrides(o, 64), **f32)
              for o, fd in (("random", 9.0), ("raster", 4.0), ("raster-1", 4.05))]
    evals += [fake_eval("shipped", 9.0), fake_eval("shipped", 9.05, deterministic=True)]   # the base, bfloat16
    evals += [fake_eval(o, fd, seconds=0.1 if o == "direct" else 0.8)
              for o, fd in zip(ab.OBJECTIVES, (5.0, 7.0, 6.0), strict=True)]
    evals += [fake_eval(name, fd, precision=lab.s.codes_precision)
              for name, fd in zip(ab.CODE_DRAWS, (6.0, 5.5), strict=True)]
    evals += [fake_eval("shipped", 2.5 + (cfg - 2) ** 2, cfg=cfg, order="entropy", gumbel=0.1, **f32)  # CFG 3: (a)
              for cfg in lab.s.guidance_cfgs if cfg != 3.0]
    evals += [fake_eval("shipped", 9.0 + (cfg - 3) ** 2, cfg=cfg, order="random")   # random at CFG 3: in the orders
              for cfg in lab.s.guidance_cfgs if cfg != 3.0]
    if with_time:     # every I >= 10 scores alike, so (h) takes the fastest of them: I = 10, S = 10
        evals += [fake_eval("shipped", 1.0 if i >= 10 else 2.0, num_iter=i, diffusion_steps=s, seconds=i * s / 500)
                  for i in lab.s.grid_iters for s in lab.s.grid_steps if (i, s) != (10, 50)]
        # (h): entropy g=0.01 is as good as (a)'s best arm and first among the equally fast, at (e)'s I and S
        evals += [fake_eval("shipped", 3.05, order="entropy", gumbel=0.01, num_iter=10, diffusion_steps=10, **f32)]
    results = {}
    for r in evals:
        for k, delta in enumerate((-0.1, 0.0, 0.1)):
            results[f"{ab.eval_name(r['model'], r['sampling'])}-seed{lab.s.seed + k}"] = {**r, "fd": r["fd"] + delta}
    for name, (objective, unconditional) in ab.TRAINED.items():
        history = [{"step": 500, "loss": 0.3, "bce": 0.2, "cpu_seconds": 200.0}]
        results[f"train-{name}"] = {"objective": objective, "unconditional": unconditional, "best_step": 1500,
                                    "stopped_at": 3500, "heldout_loss": 0.3, "heldout_bce": 0.2,
                                    "cpu_seconds": 1200.0, "history": history, "seconds": 1300.0}
    for name, draw in ab.CODE_DRAWS.items():
        results[f"train-{name}"] = {"draw": draw, "steps": lab.s.codes_steps, "loss": 0.3, "bce": 0.2,
                                    "seconds": 3000.0, "stage_cpu_seconds": 3600.0}
    for name, top1 in (("flip", 0.74), ("unconditional", 0.78), ("shipped", 0.8), ("threshold-codes", 0.75),
                       ("bernoulli-codes", 0.76)):
        results[f"probe-{name}"] = fake_probe(top1)
    results["probe-pixels"] = {"layer": "pixels", "heldout": {"pixels": 0.83}, "test": {"top1": 0.82, "top5": 0.99}}
    for name, result in results.items():
        ab.write_json(lab.results / f"{name}.json", result)


def test_the_report_is_written_from_stored_results_without_computing(tmp_path):
    lab = ab.Lab(tmp_path / "out", ab.Settings(), results=tmp_path / "kept")     # nothing made <out> yet
    lab.__dict__["sampling"] = fake_eval("shipped", 0)["sampling"]       # the reference model is never loaded
    lab.__dict__["pretrained"] = (None, type("Shipped", (), {"config": type("C", (), {"num_tokens": 64})}))
    store_fake_results(lab)
    summary = ab.run_ablations(lab, only=())             # read-only: any missing result would be left out
    assert set(summary) == set(ab.STAGES)
    arms = summary["order"]["arms"]
    assert arms["random"]["fd"] == summary["bits"]["bernoulli"]["fd"] == 9.0
    assert arms["random"]["sampling"]["precision"] == "float32" != summary["bits"]["bernoulli"]["sampling"]["precision"]
    assert summary["order"]["best"] == {"entropy": 0.1, "confidence": 0.03}
    assert list(arms) == ["entropy g=0.01", "entropy g=0.1", "confidence g=0.01", "confidence g=0.03", "random",
                          "raster", "raster-1"]
    assert arms["entropy g=0.1"]["fd_range"] == [2.9, 3.1] and len(arms["entropy g=0.1"]["runs"]) == 3
    assert [len(summary["order"]["sweep"][o]) for o in ("entropy", "confidence")] == [len(lab.s.order_gumbels)] * 2
    assert len(summary["time"]) == len(lab.s.grid_iters) * len(lab.s.grid_steps)

    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "docs").mkdir()
    meta = ab.report_meta(lab, "python benchmarks/ablations.py --out x", 12.0)
    written = report.write_report(summary, meta, lab.out, publish=True, repo=tmp_path)
    md = (lab.out / "ablations.md").read_text()
    for header in ("## Which", "## (a)", "## (b)", "## (c)", "## (d)", "## (e)", "## (f)", "## (g)", "## (h)"):
        assert header in md
    assert ("| Bernoulli draw of a random flip (the authors' train_ddp.py) | 5.50 (5.40–5.60) | 81.0% | 0.83 | 0.27 "
            "| 0.800 | 76.0% | 2 | 0.3000 | 60 |") in md
    assert ("Ranking by FD: bernoulli-codes < threshold-codes; probe, Bernoulli minus threshold test top-1: +1.0 "
            "points (two standard errors ± 1.7). Verdict: bernoulli codes are better here") in md
    assert "| entropy g=0.1 | 3.00 (2.90–3.10) | 81.0% | 0.83 | 0.27 | 0.800 | 3.17 | 0.69 |" in md
    assert "| 0.01 (authors') | 2.99 | 0.27 | 3.42 | 0.27 |" in md and "| 0.1 | **2.90** | 0.27 | 3.47 | 0.27 |" in md
    assert ("Ranking by FD here: entropy g=0.1 ≈ entropy g=0.01 < confidence g=0.03 ≈ confidence g=0.01 < raster ≈ "
            "raster-1 < random") in md
    assert "entropy g=0.1 < raster-1 < random (paper: entropy < raster-1 < random)" in md
    assert "| entropy order beats random order (entropy g=0.01 vs random) | 3.09 vs 9.00 | holds |" in md
    assert "flip < direct < x0 (paper: flip < x0 < direct)" in md
    assert "| flip objective beats x0 | 5.00 vs 7.00 | holds |" in md
    assert "| x0 objective beats direct | 7.00 vs 6.00 | reversed |" in md
    assert "| final bits: Bernoulli ≈ deterministic (3.17 vs 3.19) | 9.00 vs 9.05 | holds (within" in md
    assert "+4.0 points, two standard errors ± 1.7 (paper: +0.8): holds." in md      # 5000 test images
    assert "| unconditional training probes no worse (+0.8 points) | +4.0 points (± 1.7) | holds |" in md
    assert "FD-best: CFG 2, entropy g=0.1, float32" in md
    assert "| **2** | entropy g=0.1, float32 | 2.50 (2.40–2.60) |" in md
    assert "scored so far: random at CFG 1, 1.5, 2, 3, 4; entropy g=0.1, float32 at CFG 1, 1.5, 2, 3, 4." in md
    assert "| 1 | random | 13.00 (12.90–13.10) |" in md
    assert "| I = 4 | " in md and "![FD vs seconds per image](ablations_time.png)" in md
    assert summary["defaults"]["order"] == ["entropy g=0.01", "entropy g=0.1"]       # raster's 4.0 is out of range
    assert summary["defaults"]["steps"][0] == [10, 10] and [4, 10] not in summary["defaults"]["steps"]
    assert "| entropy g=0.01, I = 10, S = 10 | 3.05 (2.95–3.15) |" in md
    assert "FD 3.05 against entropy g=0.1's range 2.90–3.10, within that range" in md
    published = (tmp_path / "benchmarks" / "ablations.md").read_text()
    assert "](../docs/ablations_time.png)" in published and "](../docs/ablations_guidance.png)" in published
    assert "| 1500 | 3500 | yes |" in md and "Not converged" not in md     # stopped by the rule, not the cap
    for png in ("ablations_order.png", "ablations_time.png", "ablations_bars.png", "ablations_guidance.png",
                "ablations_training.png"):
        for where in (lab.out, tmp_path / "docs"):
            assert where / png in written
            with Image.open(where / png) as image:
                assert image.size[0] > 300 and image.size[1] > 200
    stored = json.loads((lab.out / "summary.json").read_text())
    assert stored["order"]["arms"]["random"]["fd"] == 9.0 and stored["meta"]["command"] == meta["command"]
    assert meta["compute_minutes"] > 0 and meta["real_fd"] == 0.37
    assert meta["machine"] == f"machine not recorded ({len(list(lab.results.glob('*.json')))} results)"


def test_settings_with_missing_results_are_left_out_and_named_in_the_report(tmp_path):
    lab = ab.Lab(tmp_path, ab.Settings())
    lab.__dict__["sampling"] = fake_eval("shipped", 0)["sampling"]
    lab.__dict__["pretrained"] = (None, type("Shipped", (), {"config": type("C", (), {"num_tokens": 64})}))
    store_fake_results(lab, with_time=False)
    raster = ab.eval_name("shipped", fake_eval("shipped", 0, order="raster", precision="float32")["sampling"])
    (lab.results / f"{raster}-seed1.json").unlink()                  # one seed short
    (lab.results / "train-x0.json").unlink()
    entropy_cfg2 = ab.eval_name("shipped", fake_eval("shipped", 0, order="entropy", gumbel=0.1, cfg=2.0,
                                                     precision="float32")["sampling"])
    (lab.results / f"{entropy_cfg2}-seed2.json").unlink()            # a certainty guidance point one seed short
    for probe in lab.results.glob("probe-*.json"):
        probe.unlink()
    summary = ab.run_ablations(lab, only=())
    assert "probe" not in summary and "raster" not in summary["order"]["arms"] and "x0" not in summary["objective"]
    assert [r["sampling"]["num_iter"] for r in summary["time"]] == [10]     # only the reference cell is there
    written = report.write_report(summary, ab.report_meta(lab, "cmd", 1.0), tmp_path)
    md = (tmp_path / "ablations.md").read_text()
    assert "## (d)" not in md and "| raster |" not in md and "| x0 |" not in md
    assert "scored so far: random at CFG 1, 1.5, 2, 3, 4; entropy g=0.1, float32 at CFG 1, 1.5, 3, 4." in md
    assert f"`{raster}`" in md and "`train-x0`" in md and "`probe-flip`" in md and "`probe-pixels`" in md
    assert tmp_path / "ablations_bars.png" in written


# -- the whole pipeline on tiny numbers -------------------------------------------------------
@pytest.mark.slow              # about 95 s on a 2-core CPU: outside the default run's 15 minutes (pytest -m slow)
@pytest.mark.fashion_mnist
def test_quick_run_writes_every_table_and_a_rerun_recomputes_nothing(tmp_path):
    out, kept = tmp_path / "quick", tmp_path / "kept"          # bulky files, and the results to commit
    ab.main(["--out", str(out), "--results", str(kept), "--quick", "--threads", "2"])
    assert not (out / "results").exists() and (kept / "settings.json").exists()
    md = (out / "ablations.md").read_text()
    for header in ("## Which", "## (a)", "## (b)", "## (c)", "## (d)", "## (e)", "## (f)", "## (g)", "## (h)"):
        assert header in md
    s = ab.Settings(**ab.QUICK)
    results = {p.name: p.stat().st_mtime_ns for p in kept.glob("*.json")}
    evals = [n for n in results if n.startswith("eval-")]
    summary = json.loads((out / "summary.json").read_text())
    scored = [*summary["order"]["arms"].values(), *summary["bits"].values(), *summary["objective"].values(),
              *summary["guidance"], *summary["time"], *summary["codes"].values(), summary["defaults"]["scored"]]
    assert summary["defaults"]["chosen"]["precision"] == s.order_precision
    swept = [r for results in summary["order"]["sweep"].values() for r in results]
    assert len(swept) == 2 * len(s.order_gumbels) and len(summary["guidance"]) == 2 * len(s.guidance_cfgs)
    # every stored evaluation is one seed of a reported setting, and every reported setting has all its seeds (the
    # temperature sweep: the first seed)
    def names(results, seeds):
        return {f"{ab.eval_name(r['model'], r['sampling'])}-seed{s.seed + k}.json" for r in results for k in seeds}

    expected = names(scored, range(s.seeds)) | names(swept, [0])
    assert set(evals) == expected
    assert {f"train-{n}.json" for n in ab.TRAINED} <= set(results)
    for name in ab.TRAINED:
        train = json.loads((kept / f"train-{name}.json").read_text())
        rows = [json.loads(line) for line in (out / "train" / name / "heldout.jsonl").read_text().splitlines()]
        assert rows == train["history"] and ab.converged(rows, s) and not ab.converged(rows[:-1], s)
        assert train["best_step"] <= train["stopped_at"] <= s.max_steps
        assert (out / "train" / name / "best" / "model.safetensors").exists()
    for name, draw in ab.CODE_DRAWS.items():             # equal budget: the same steps, lr decayed to zero
        train = json.loads((kept / f"train-{name}.json").read_text())
        assert (train["draw"], train["steps"]) == (draw, s.codes_steps)
        log = [json.loads(line) for line in (out / "train" / name / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == s.codes_steps and log[-1]["lr"] < 0.1 * s.lr      # the recipe's cosine ends at 0.1
        assert 0 <= summary["codes"][name]["probe"]["test"]["top1"] <= 1
    cost = {name: r["cpu_seconds_per_image"] for name, r in summary["objective"].items()}
    assert cost["direct"] < cost["flip"]          # no reverse chain
    assert all(0 <= r["test"]["top1"] <= 1 for r in summary["probe"].values())
    raster_1 = summary["order"]["arms"]["raster-1"]["sampling"]
    assert (raster_1["order"], raster_1["num_iter"], raster_1["mask_schedule"]) == ("raster", 64, "linear")

    t0 = time.perf_counter()
    ab.main(["--out", str(out), "--results", str(kept), "--quick"])
    assert time.perf_counter() - t0 < 10
    assert {p.name: p.stat().st_mtime_ns for p in kept.glob("*.json")} == results
    with pytest.raises(ValueError, match="num_samples"):
        ab.main(["--out", str(out), "--results", str(kept), "--quick", "--num-samples", "12"])


def test_the_report_says_when_the_step_cap_ended_a_training_still_improving():
    s = {"max_steps": 3000, "eval_every": 500, "patience": 4}
    losses = [0.5, 0.4, 0.3, 0.25, 0.24, 0.238]
    history = [{"step": 500 * (k + 1), "loss": loss, "bce": loss} for k, loss in enumerate(losses)]
    still = {"best_step": 3000, "stopped_at": 3000, "history": history, "heldout_loss": 0.238, "heldout_bce": 0.238,
             "cpu_seconds": 600.0}
    assert report.still_improving(still, s)
    assert report.converged_cell(still, s) == "no: −40.50% in its last 2000 steps"     # 1 - 0.238 / 0.4
    assert not report.still_improving({**still, "best_step": 1000}, s)                 # 4 rounds without a best
    assert not report.still_improving({**still, "stopped_at": 2500}, s)                # the rule stopped it
    fd = {"fd": 2.0, "fd_range": [1.9, 2.1], "class_accuracy": 0.9, "precision": 0.9, "recall": 0.5,
          "cpu_seconds_per_image": 0.1}
    summary = {"objective": {o: {**fd, "train": still} for o in ("flip", "x0")}}
    md = "\n".join(report.objective_section(summary["objective"], s, "") + report.claims_section(summary, {
        **s, "probe_test": 5000}))
    assert "Not converged: flip, x0 reached the 3000-step cap" in md
    assert "The objective claims compare flip, x0 as they stood at the 3000-step cap" in md


def test_the_training_codes_verdict_takes_fd_first_then_the_probe():
    def arm(fd, top1):
        return {"fd": fd, "fd_range": [fd - 0.1, fd + 0.1], "probe": {"test": {"top1": top1}}}

    n_test = 5000                                        # two standard errors of the gap: about 1.7 points at 75 %
    assert report.codes_verdict({"threshold-codes": arm(6.0, 0.80), "bernoulli-codes": arm(5.5, 0.70)},
                                n_test) == "bernoulli"   # FD apart: the probe is not asked
    assert report.codes_verdict({"threshold-codes": arm(5.0, 0.75), "bernoulli-codes": arm(5.1, 0.78)},
                                n_test) == "bernoulli"   # FD within the ranges, the probe 3 points apart
    assert report.codes_verdict({"threshold-codes": arm(5.0, 0.75), "bernoulli-codes": arm(5.1, 0.76)},
                                n_test) == "neither"


# -- the committed study and what the project says of it ----------------------------------------
def test_the_shipped_model_samples_with_the_settings_the_committed_study_chose(tmp_path):
    """config.json's recommended settings are (h)'s choice from benchmarks/ablations-results, and that choice held."""
    lab = ab.Lab(tmp_path, ab.Settings(), results=report.REPO / "benchmarks" / "ablations-results")
    lab.compute = False                                 # reads the committed results, computes nothing
    chosen = ab.ablate_defaults(lab)
    assert chosen["scored"]["fd"] <= max(chosen["best"]["fd_range"]) and chosen["holds"]
    sampling = lab.shipped.config.sampling
    picked = chosen["chosen"]
    assert (sampling.order, sampling.num_iter, sampling.diffusion_steps) == (
        picked["order"], picked["num_iter"], picked["diffusion_steps"])
    assert sampling.cfg == chosen["scored"]["sampling"]["cfg"]
    if picked["order"] in ab.CERTAINTY:
        assert sampling.gumbel == picked["gumbel"]
