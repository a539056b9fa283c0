"""benchmarks/ablations.py: cached stages, pinned settings, the report from stored results, a --quick run."""

import json
import time

import pytest
import torch
from PIL import Image

from benchmarks import ablations as ab


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


def test_settings_are_pinned_per_output_directory(tmp_path):
    path, sampling = tmp_path / "settings.json", {"cfg": 2.0, "gumbel": 0.1}
    ab.pin_settings(path, ab.Settings(), sampling)
    ab.pin_settings(path, ab.Settings(), dict(sampling))
    with pytest.raises(ValueError, match="steps"):
        ab.pin_settings(path, ab.Settings(steps=5), sampling)
    with pytest.raises(ValueError, match="sampling"):           # the shipped model's defaults changed meanwhile
        ab.pin_settings(path, ab.Settings(), {"cfg": 3.0, "gumbel": 0.1})


def test_null_labels_keep_the_tokens_and_null_every_label():
    class Codes:
        K, h, w = 4, 2, 2

        def __len__(self):
            return 6

        def get_batch(self, indices):
            return torch.arange(len(indices) * 16.0).view(-1, 4, 4), torch.as_tensor(indices) % 3

    data = ab.NullLabels(Codes(), null_class=10)
    tokens, labels = data.get_batch(torch.tensor([0, 4, 5]))
    assert torch.equal(tokens, Codes().get_batch(torch.tensor([0, 4, 5]))[0])
    assert labels.tolist() == [10, 10, 10] and labels.dtype == torch.int64
    assert (data.K, data.h, data.w, len(data)) == (4, 2, 2, 6)


def test_unknown_stage_is_refused(capsys):
    with pytest.raises(SystemExit):
        ab.parse_args(["--out", "x", "--only", "order,speed"])
    assert "speed" in capsys.readouterr().err


# -- the report from stored results -------------------------------------------------------------
def fake_eval(model, fd, order="entropy", num_iter=10, steps=50, deterministic=False, seconds=0.8):
    return {"samples": 200, "fd": fd, "class_accuracy": 0.81, "precision": 0.83, "recall": 0.27, "knn_points": 200,
            "seconds_per_image": 2 * seconds, "cpu_seconds_per_image": seconds,
            "reference": {"fd_test_vs_train": 0.37}, "model": model, "seconds": 60.0,
            "sampling": {"order": order, "num_iter": num_iter, "diffusion_steps": steps,
                         "deterministic": deterministic}}


def fake_probe(top1):
    return {"layer": 2, "l2": 0.001, "heldout": {"0": 0.5, "1": 0.6, "2": top1 + 0.01, "3": 0.55},
            "test": {"top1": top1, "top5": 0.99}, "seconds": 10.0}


def store_fake_results(lab: ab.Lab, with_time: bool = True) -> None:
    evals = [fake_eval("shipped", fd, order=o) for o, fd in zip(ab.ORDERS, (3.0, 3.5, 9.0, 4.0), strict=True)]
    evals.append(fake_eval("shipped", 3.2, deterministic=True))
    evals += [fake_eval(o, fd, seconds=0.1 if o == "direct" else 0.8)
              for o, fd in zip(ab.OBJECTIVES, (5.0, 7.0, 6.0), strict=True)]
    if with_time:
        evals += [fake_eval("shipped", 10.0 / i + 5.0 / s, num_iter=i, steps=s, seconds=i * s / 500)
                  for i in lab.s.grid_iters for s in lab.s.grid_steps if (i, s) != (10, 50)]
    results = {ab.eval_name(r["model"], r["sampling"]): r for r in evals}
    cheapest = fake_eval("shipped", 0, num_iter=min(lab.s.grid_iters), steps=min(lab.s.grid_steps))
    for k, fd in zip(range(1, ab.NOISE_SEEDS), (3.5, 2.9), strict=True):
        results[f"{ab.eval_name('shipped', cheapest['sampling'])}-seed{lab.s.seed + k}"] = {**cheapest, "fd": fd}
    for name, (objective, unconditional) in ab.TRAINED.items():
        results[f"train-{name}"] = {"objective": objective, "unconditional": unconditional, "steps": 600,
                                    "cpu_seconds": 300.0, "final_loss": 0.3, "final_bce": 0.2, "seconds": 400.0}
    for name, top1 in (("flip", 0.74), ("unconditional", 0.78), ("shipped", 0.8)):
        results[f"probe-{name}"] = fake_probe(top1)
    results["probe-pixels"] = {"layer": "pixels", "heldout": {"pixels": 0.83}, "test": {"top1": 0.82, "top5": 0.99}}
    for name, result in results.items():
        ab.write_json(lab.results / f"{name}.json", result)


def test_the_report_is_written_from_stored_results_without_computing(tmp_path):
    lab = ab.Lab(tmp_path / "out", ab.Settings())
    store_fake_results(lab)
    summary = ab.run_ablations(lab, only=())             # read-only: any missing result would be left out
    assert set(summary) == set(ab.STAGES)
    assert summary["order"]["entropy"] == summary["bits"]["bernoulli"]     # one result serves both
    assert len(summary["time"]) == len(lab.s.grid_iters) * len(lab.s.grid_steps)

    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "docs").mkdir()
    meta = ab.report_meta(lab, "python benchmarks/ablations.py --out x", 12.0)
    written = ab.write_report(summary, meta, lab.out, publish=True, repo=tmp_path)
    md = (lab.out / "ablations.md").read_text()
    for header in ("## (a)", "## (b)", "## (c)", "## (d)", "## (e)"):
        assert header in md
    assert "| **entropy** | 3.00 | 81.0% | 0.83 | 0.27 | 0.800 | 3.17 | 0.69 |" in md
    assert "Ranking by FD here: entropy < confidence < raster < random" in md
    assert "entropy < raster < random (paper: entropy < raster < random)" in md
    assert "flip < direct < x0 (paper: flip < x0 < direct)" in md
    assert "+4.0 points (paper: +0.8)" in md
    assert "seeds 0, 1, 2 gives FD 3.00 / 3.50 / 2.90 (a spread of 0.60)" in md
    assert "| I = 4 | " in md and "![FD vs seconds per image](ablations_time.png)" in md
    published = (tmp_path / "benchmarks" / "ablations.md").read_text()
    assert "](../docs/ablations_time.png)" in published and "](../docs/ablations_bars.png)" in published
    for png in ("ablations_time.png", "ablations_bars.png"):
        for where in (lab.out, tmp_path / "docs"):
            assert where / png in written
            with Image.open(where / png) as image:
                assert image.size[0] > 300 and image.size[1] > 200
    stored = json.loads((lab.out / "summary.json").read_text())
    assert stored["order"]["random"]["fd"] == 9.0 and stored["meta"]["command"] == meta["command"]
    assert meta["compute_minutes"] > 0 and meta["real_fd"] == 0.37


def test_a_stage_with_missing_results_is_left_out_of_the_report(tmp_path):
    lab = ab.Lab(tmp_path, ab.Settings())
    store_fake_results(lab, with_time=False)
    summary = ab.run_ablations(lab, only=())
    assert "time" not in summary and "noise" not in summary and {"order", "objective", "bits", "probe"} <= set(summary)
    written = ab.write_report(summary, ab.report_meta(lab, "cmd", 1.0), tmp_path)
    assert "## (e)" not in (tmp_path / "ablations.md").read_text()
    assert tmp_path / "ablations_time.png" not in written and tmp_path / "ablations_bars.png" in written


# -- the whole pipeline on tiny numbers -------------------------------------------------------
@pytest.mark.fashion_mnist
def test_quick_run_writes_every_table_and_a_rerun_recomputes_nothing(tmp_path):
    out = tmp_path / "quick"
    ab.main(["--out", str(out), "--quick"])
    md = (out / "ablations.md").read_text()
    for header in ("## (a)", "## (b)", "## (c)", "## (d)", "## (e)"):
        assert header in md
    s = ab.Settings(**ab.QUICK)
    results = {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    evals = [n for n in results if n.startswith("eval-")]
    # 4 orders + 1 deterministic + 3 objectives + the grid, less the grid cell equal to the base setting, + 2 seeds
    assert len(evals) == 4 + 1 + 3 + len(s.grid_iters) * len(s.grid_steps) - 1 + ab.NOISE_SEEDS - 1
    assert {f"train-{n}.json" for n in ab.TRAINED} <= set(results)
    for name in ab.TRAINED:
        log = [json.loads(line) for line in (out / "train" / name / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == s.steps
    summary = json.loads((out / "summary.json").read_text())
    cost = {name: r["cpu_seconds_per_image"] for name, r in summary["objective"].items()}
    assert cost["direct"] < cost["flip"]          # no reverse chain
    assert all(0 <= r["test"]["top1"] <= 1 for r in summary["probe"].values())

    t0 = time.perf_counter()
    ab.main(["--out", str(out), "--quick"])
    assert time.perf_counter() - t0 < 10
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")} == results
    with pytest.raises(ValueError, match="num_samples"):
        ab.main(["--out", str(out), "--quick", "--num-samples", "12"])
