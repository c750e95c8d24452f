"""udm-compare: hand-made sweep folders (overrides.yaml, eval JSONs, small PNGs), then one real train -> eval -> compare."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from PIL import Image

from udm.cli import CONF_DIR, compare_main
from udm.errors import UdmError
from udm.jobs.compare import compare

from .conftest import run_cli

COMMON = {"experiment": "digits_smoke", "trainer.max_steps": "3"}


def compare_cfg(folder: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="compare", overrides=[f"dir='{folder}'", *overrides])


def fake_eval(folder: Path, sampler: str, steps: int, fid: float, **extra) -> Path:
    """What udm-eval writes: a flat JSON and a grid PNG beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{sampler}-{steps}steps-n16-seed0"
    Image.new("L", (20, 20), color=int(fid) % 256).save(stem.with_suffix(".png"))
    result = {"schema": "udm-eval/1", "run": str(folder.parent), "modality": "image", "process": "Fake(T=50)",
              "sampler": sampler, "sampler_target": "udm.sampling.sample", "sampler_steps": steps, "sampler_eta": 0.0,
              "steps": steps, "n": 16, "seed": 0, "seconds_per_sample": steps / 1000, "nfe_per_sample": float(steps),
              "sampler_prepare_seconds": 0.001, "fid": fid, "kid_mean": fid / 1000, "fid_extractor": "digits-abc",
              "fid_extractor_accuracy": 0.975, "fid_real_images": 180, "samples_file": str(stem.with_suffix(".png")),
              **extra}
    stem.with_suffix(".json").write_text(json.dumps(result))
    return stem.with_suffix(".json")


def fake_run(sweep: Path, num: int, settings: dict, evals=(), checkpoint=True, hydra=True, record=False) -> Path:
    """A run folder; record: its evals hold the run's overrides as udm-eval now records them (run_overrides)."""
    overrides = [f"{k}={v}" for k, v in {**COMMON, **settings}.items()]
    run = sweep / f"{num}_{','.join(overrides)}"
    run.mkdir(parents=True)
    if hydra:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    for sampler, steps, fid in evals:
        fake_eval(run / "eval", sampler, steps, fid, **({"run_overrides": overrides} if record else {}))
    return run


def fake_sweep(sweep: Path, *task: str) -> None:
    """The multirun.yaml Hydra's basic sweeper leaves in the sweep folder (what udm-compare reads of it)."""
    sweep.mkdir(parents=True, exist_ok=True)
    hydra = {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
             "overrides": {"task": [f"{k}={v}" for k, v in COMMON.items()] + list(task)}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


def test_table_holds_exactly_the_swept_keys_and_the_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    fake_sweep(sweep, "process=gaussian,blur")
    fake_run(sweep, 0, {"process": "gaussian"}, [("ddim", 10, 31.5), ("ddpm", 10, 40.25)])
    fake_run(sweep, 1, {"process": "blur"}, [("improved", 50, 55.0)])
    out = compare(compare_cfg(sweep))
    assert out["header"] == ["run", "process", "sampler", "steps", "FID", "KID", "s/sample", "NFE/sample"]
    assert out["rows"] == [["#0", "gaussian", "ddim", "10", "31.50", "0.0315", "0.01", "10"],
                           ["#0", "gaussian", "ddpm", "10", "40.25", "0.0403", "0.01", "10"],
                           ["#1", "blur", "improved", "50", "55.00", "0.0550", "0.05", "50"]]
    text = out["markdown"].read_text()
    assert "| #1 | blur | improved | 50 | 55.00 |" in text and "## Missing" not in text
    assert "`experiment=digits_smoke`" in text and "| experiment" not in text  # the same everywhere: a note, no column
    assert text.count("held-out accuracy 97.5%") == 1
    assert (sweep / "compare-samples.png").is_file() and "(compare-samples.png)" in text


def test_eval_settings_that_differ_within_one_sampler_get_a_column(tmp_path):
    run = fake_run(tmp_path, 0, {"process": "gaussian"}, [("ddim", 10, 30.0)])
    fake_eval(run / "eval", "ddim", 20, 33.0, sampler_eta=0.5)
    out = compare(compare_cfg(tmp_path))
    assert out["header"][:5] == ["run", "sampler", "steps", "eta", "FID"]
    assert [row[3] for row in out["rows"]] == ["0.0", "0.5"]


def test_failed_runs_are_listed_under_missing_and_the_rest_is_reported(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_sweep(sweep, "process=gaussian,blur,inpaint,pixelate,fade,noise")
    fake_run(sweep, 0, {"process": "gaussian"}, [("ddim", 10, 31.5)])
    fake_run(sweep, 1, {"process": "blur"})                                      # trained, never evaluated
    inpaint = fake_run(sweep, 2, {"process": "inpaint"})
    (inpaint / "eval").mkdir()
    (inpaint / "eval" / "improved-50steps.json").write_text('{"schema": "udm-eval/1", "fid": 1')  # cut short
    fake_run(sweep, 3, {"process": "pixelate"}, checkpoint=False)                # training crashed
    fake_run(sweep, 4, {"process": "fade"}, [("improved", 20, 60.0)], hydra=False)  # lost its .hydra folder
    out = compare(compare_cfg(sweep))                                            # job 5 never started

    missing = out["markdown"].read_text().split("## Missing")[1]
    lines = [line for line in missing.splitlines() if line.startswith("- ")]
    assert len(lines) == 5 == len(out["problems"])
    assert "1_experiment" in lines[0] and "no eval JSON in eval/; evaluate it with udm-eval ckpt=" in lines[0]
    assert "improved-50steps.json is not readable JSON" in lines[1]
    assert "3_experiment" in lines[2] and "no checkpoints/last.ckpt; training failed" in lines[2]
    assert "4_experiment" in lines[3] and "no .hydra folder; settings taken from the sweep's multirun.yaml (job 4)" in lines[3]
    assert lines[4].startswith("- job 5 (experiment=digits_smoke trainer.max_steps=3 process=noise): no run folder")
    assert [row[:2] for row in out["rows"]] == [["#0", "gaussian"], ["#4", "fade"]]
    err = capsys.readouterr().err
    assert err.count("udm-compare: ") == 5 and "Traceback" not in err


def test_fid_against_steps_is_plotted_only_when_steps_vary(tmp_path):
    same, varied = tmp_path / "same", tmp_path / "varied"
    fake_run(same, 0, {"process": "gaussian"}, [("ddim", 10, 31.5), ("ddpm", 10, 40.0)])
    fake_run(varied, 0, {"process": "gaussian"}, [("ddim", 10, 31.5), ("ddim", 50, 20.0), ("ddpm", 50, 25.0)])
    fake_run(varied, 1, {"process": "blur"}, [("improved", 50, 55.0)])
    assert not compare(compare_cfg(same))["figures"][1:] and not (same / "compare-fid-steps.png").exists()
    out = compare(compare_cfg(varied))
    assert out["figures"][1] == varied / "compare-fid-steps.png" and out["figures"][1].stat().st_size > 10_000
    assert "(compare-fid-steps.png)" in out["markdown"].read_text()


def test_sample_panels_keep_whole_cells_of_the_grid(tmp_path):
    import numpy as np
    import torch

    from udm.grid import save_grid
    from udm.jobs.compare import first_cells

    images = torch.linspace(-1, 1, 50).view(50, 1, 1, 1).expand(50, 1, 8, 6).contiguous()  # 8 per row, 7 rows
    grid = np.asarray(Image.open(save_grid(images, tmp_path / "all.png")))
    corner = images[[0, 1, 2, 8, 9, 10, 16, 17, 18]]  # the top-left 3 x 3 cells
    expected = np.asarray(Image.open(save_grid(corner, tmp_path / "corner.png", nrow=3, scale=10)))
    np.testing.assert_array_equal(first_cells(grid, 50, keep=9), expected)
    odd = grid[:-1]  # not udm.grid's layout: left whole
    assert first_cells(grid, 50, keep=None) is grid and first_cells(odd, 50, keep=9) is odd


def test_a_second_report_does_not_overwrite_the_first(tmp_path):
    fake_run(tmp_path, 0, {"process": "gaussian"}, [("ddim", 10, 31.5), ("ddim", 20, 25.0)])
    first = compare(compare_cfg(tmp_path))
    before = {p: p.read_bytes() for p in [first["markdown"], *first["figures"]]}
    second = compare(compare_cfg(tmp_path))
    assert second["markdown"] == tmp_path / "compare-1.md"
    assert [p.name for p in second["figures"]] == ["compare-1-samples.png", "compare-1-fid-steps.png"]
    assert all(p.read_bytes() == content for p, content in before.items())
    assert "(compare-1-samples.png)" in second["markdown"].read_text()


def test_a_plain_folder_of_eval_jsons_is_grouped_by_run(tmp_path):
    fake_eval(tmp_path / "a" / "eval", "ddim", 10, 30.0)
    fake_eval(tmp_path / "a" / "eval", "ddim", 20, 28.0)
    loose = tmp_path / "loose"
    for source in (tmp_path / "a" / "eval").glob("*.json"):
        (loose / source.name).parent.mkdir(exist_ok=True)
        (loose / source.name).write_text(source.read_text())
    (loose / "notes.json").write_text('{"not": "an eval"}')
    out = compare(compare_cfg(loose, f"out_dir={tmp_path / 'report'}"))
    assert [row[:3] for row in out["rows"]] == [["a", "ddim", "10"], ["a", "ddim", "20"]]
    assert out["problems"] == ["loose: notes.json is not a udm-eval result (no udm-eval schema key)"]
    assert out["markdown"] == tmp_path / "report" / "compare.md"


def test_settings_come_from_what_each_eval_recorded(tmp_path, capsys):
    """udm-eval records the run's overrides (run_overrides): a run that lost its .hydra folder, or eval JSONs
    copied out of their runs, keep their settings; older JSONs fall back to .hydra/overrides.yaml, then to '?'."""
    sweep = tmp_path / "sweep"
    fake_run(sweep, 0, {"process": "gaussian"}, [("ddim", 10, 31.5)], record=True)
    fake_run(sweep, 1, {"process": "blur"}, [("improved", 50, 55.0)], hydra=False, record=True)  # no multirun.yaml either
    fake_run(sweep, 2, {"process": "inpaint"}, [("improved", 50, 60.0)])                          # an older eval JSON
    fake_run(sweep, 3, {"process": "fade"}, [("improved", 50, 65.0)], hydra=False)                # older, no .hydra
    recorded = fake_run(sweep, 4, {"process": "pixelate"}, [("improved", 50, 70.0)], record=True)
    (recorded / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["process=changed_since"]))  # the record wins
    out = compare(compare_cfg(sweep))
    assert out["swept"] == ["process"]
    assert [row[1] for row in out["rows"]] == ["gaussian", "blur", "inpaint", "?", "pixelate"]  # no multirun.yaml
    assert len(out["problems"]) == 1 and "3_experiment" in out["problems"][0] and "its settings are unknown" in out["problems"][0]
    loose = tmp_path / "loose"
    for i, json_file in enumerate(sorted(sweep.glob("[01]_*/eval/*.json"))):
        (loose / f"{i}.json").parent.mkdir(exist_ok=True)
        (loose / f"{i}.json").write_text(json_file.read_text())
    out = compare(compare_cfg(loose))
    assert out["header"][:2] == ["run", "process"] and [row[1] for row in out["rows"]] == ["gaussian", "blur"]
    import udm.jobs.compare

    assert "hydra._internal" not in Path(udm.jobs.compare.__file__).read_text()  # what it reads is recorded, not rebuilt


def test_nothing_to_compare_is_one_clear_error(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(sys, "argv", ["udm-compare", str(empty)])  # what the console script runs, in-process
    with pytest.raises(SystemExit) as exit_:
        compare_main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip() == f"error: nothing to compare in {empty}: no run folders and no eval JSON files; " \
                          f"run udm-eval ckpt=<run> on the sweep's runs first"
    fake_run(tmp_path / "failed", 0, {"process": "blur"}, checkpoint=False)
    with pytest.raises(UdmError, match=r"nothing to compare in .*failed: 1 problem\(s\) above"):
        compare(compare_cfg(tmp_path / "failed"))
    with pytest.raises(UdmError, match="is not a folder"):
        compare(compare_cfg(tmp_path / "nowhere"))
    assert not list(tmp_path.rglob("compare*.md"))


@pytest.mark.slow  # ~30 s on 2 quiet cores, minutes on busy ones: run with -m slow
def test_train_eval_compare_through_the_console_scripts(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "features"
    run_cli("udm-train", "-m", "experiment=digits_smoke", "process=gaussian,blur", "trainer.max_steps=3",
            "trainer.val_check_interval=3", "val_samples=0", "final_samples=0", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    gaussian, blur = sorted(p for p in sweep.iterdir() if p.is_dir())
    for run, sampler in ((gaussian, ["sampler.steps=5"]), (blur, ["sampler=improved"])):
        run_cli("udm-eval", f"ckpt='{run}'", "n=16", "metrics=[fid]", f"cache_dir={cache}", "extractor.epochs=1",
                "progress=false", *sampler, cwd=tmp_path)
    proc = run_cli("udm-compare", str(sweep), cwd=tmp_path)
    assert "| run | process | sampler | steps | FID | s/sample | NFE/sample |" in proc.stdout
    assert "| #0 | gaussian | ddim | 5 |" in proc.stdout and "| #1 | blur | improved | 50 |" in proc.stdout
    assert {p.name for p in sweep.glob("compare*")} == {"compare.md", "compare-samples.png", "compare-fid-steps.png"}


def test_a_guidance_sweep_gets_its_column_and_a_fid_against_accuracy_figure(tmp_path):
    run = fake_run(tmp_path, 0, {"process": "gaussian"})
    for w, fid, acc in ((0, 30.0, 0.1), (1, 12.0, 0.87), (2, 4.0, 0.99)):
        path = fake_eval(run / "eval", "ddim", 50, fid, labels="all", guidance=w, class_accuracy=acc)
        path.rename(path.with_name(f"w{w}.json")), path.with_suffix(".png").rename(path.with_name(f"w{w}.png"))
    fake_run(tmp_path, 1, {"process": "blur"}, [("improved", 50, 55.0)])  # unconditional: the dashed reference
    out = compare(compare_cfg(tmp_path))
    assert out["header"][4] == "guidance" and [row[4] for row in out["rows"][:3]] == ["0", "1", "2"]
    figure = tmp_path / "compare-guidance.png"
    assert figure in out["figures"] and figure.stat().st_size > 10_000
    assert "(compare-guidance.png)" in out["markdown"].read_text()
    only_one = tmp_path / "one"
    fake_run(only_one, 0, {"process": "gaussian"}, [("ddim", 50, 4.0)])
    assert not (only_one / "compare-guidance.png").exists() and compare(compare_cfg(only_one))["figures"][1:] == []
