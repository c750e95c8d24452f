"""Distillation through the console scripts, as a user runs it: udm-train teacher=RUN distill=..., the students'
checkpoints, resuming inside a round, and udm-sample / udm-eval taking the student's own sampler and refusing others."""

import json
from pathlib import Path

import pytest
import torch

from .conftest import run_cli, run_main, train_in_process

FAST = ["final_samples=0", "val_samples=0", "callbacks.progress=null"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny flow teacher, trained in this process; the students are distilled and sampled by subprocesses."""
    tmp = tmp_path_factory.mktemp("distill")
    run = tmp / "teacher"
    train_in_process("experiment=digits_smoke", "process=flow", "trainer.max_steps=12", *FAST, f"hydra.run.dir={run}")
    return tmp, run


def weights(path: Path, prefix: str) -> dict:
    state = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_progressive_rounds_keep_every_student_and_resume_inside_a_round(teacher):
    """Three rounds of 3 steps (16 -> 8 -> 4 -> 2 teacher steps); every round's student is written and recorded with
    its steps; each round's teacher is the previous round's student, also after a resume from step 4 (inside round 2)."""
    tmp, teacher_run = teacher
    common = ["experiment=distill_mnist", f"teacher={teacher_run}", "distill.steps_per_round=3",
              "trainer.val_check_interval=2", "callbacks.checkpoint.save_top_k=-1", *FAST]
    run = tmp / "progressive"
    proc = run_cli("udm-train", *common, f"hydra.run.dir={run}", cwd=tmp)
    assert "distillation round 3 of 3: 4 teacher steps -> 2" in proc.stdout
    folder = run / "checkpoints"
    for steps in (8, 4, 2):
        recipe = torch.load(folder / f"student-{steps}steps.ckpt", weights_only=True)["udm"]
        assert recipe["distilled"]["steps"] == steps and recipe["distilled"]["method"] == "progressive"
        assert recipe["distilled"]["sampler"] == {"_target_": "udm.samplers.Euler", "grid": "uniform", "power": 1.0,
                                                  "steps": steps}
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == 9 and last["udm"]["distilled"]["steps"] == 2
    teacher_weights = weights(teacher_run / "checkpoints" / "last.ckpt", "net.")
    assert last["udm"]["process"] == torch.load(teacher_run / "checkpoints" / "last.ckpt", weights_only=True)["udm"]["process"]
    student_4 = weights(folder / "student-4steps.ckpt", "net.")
    for key, value in weights(folder / "last.ckpt", "teacher.").items():  # round 3's teacher: round 2's student
        torch.testing.assert_close(value, student_4[key], rtol=0, atol=0)
    # the student starts as the teacher: an early Adam step moves a weight by at most (1 - b1) / sqrt(1 - b2) lr
    student_8 = weights(folder / "student-8steps.ckpt", "net.")
    assert max(float((student_8[k] - v).abs().max()) for k, v in teacher_weights.items()) < 3 * 3.17 * 2e-4
    assert any(not torch.equal(student_8[k], v) for k, v in teacher_weights.items())

    resumed = tmp / "resumed"
    step_4 = tmp / "step4.ckpt"  # Hydra's override grammar takes no '=' in a path
    step_4.write_bytes(next(folder.glob("*step=4.ckpt")).read_bytes())
    proc = run_cli("udm-train", *common, f"resume={step_4}", f"hydra.run.dir={resumed}", cwd=tmp)
    assert "round 3 of 3" in proc.stdout and "round 2 of" not in proc.stdout  # round 2 came with the checkpoint
    assert sorted(p.name for p in (resumed / "checkpoints").glob("student-*")) == ["student-2steps.ckpt", "student-4steps.ckpt"]
    resumed_4 = weights(resumed / "checkpoints" / "student-4steps.ckpt", "net.")
    for key, value in weights(resumed / "checkpoints" / "last.ckpt", "teacher.").items():
        torch.testing.assert_close(value, resumed_4[key], rtol=0, atol=0)
    for key, value in weights(resumed / "checkpoints" / "student-4steps.ckpt", "teacher.").items():  # round 2's teacher
        torch.testing.assert_close(value, weights(folder / "student-4steps.ckpt", "teacher.")[key], rtol=0, atol=0)
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9


def test_a_student_samples_with_its_own_sampler_and_refuses_what_it_did_not_learn(teacher):
    tmp, teacher_run = teacher
    run = tmp / "student"
    run_cli("udm-train", "experiment=distill_mnist", f"teacher={teacher_run}", "distill.teacher_steps=4",
            "distill.steps_per_round=1", *FAST, f"hydra.run.dir={run}", cwd=tmp)
    proc = run_cli("udm-sample", f"ckpt={run}", "n=4", "progress=false", cwd=tmp)
    assert "with student-euler, 2 steps" in proc.stdout
    proc = run_main("udm-sample", f"ckpt={run}", "n=4", "sampler.steps=4", "progress=false")
    assert proc.returncode != 0 and "distilled for 2 steps and this sampler needs 4 network evaluations" in proc.stderr
    assert run_main("udm-eval", f"ckpt={run}", "n=8", "metrics=[]", "progress=false").returncode == 0
    result = json.loads((run / "eval" / "student-euler-2steps-n8-seed0.json").read_text())
    assert result["nfe_per_sample"] == 2 and result["sampler_target"] == "udm.samplers.Euler"
    # as a teacher, the student teaches on the grid it learned: another grid is refused before anything is written
    proc = run_main("udm-train", "experiment=distill_mnist", f"teacher={run}", "distill.teacher_steps=2",
                    "distill.student_steps=1", "distill.sampler.grid=power", "distill.sampler.power=0.5", *FAST,
                    f"hydra.run.dir={tmp / 'regridded'}")
    assert proc.returncode != 0 and "was distilled on the times" in proc.stderr
    assert "give distill.sampler the teacher's grid (grid=uniform, power=1.0)" in proc.stderr
    assert not (tmp / "regridded" / "checkpoints").exists()


@pytest.fixture(scope="module")
def consistency(teacher):
    """A consistency student, distilled in this process (the default suite's udm-train distill=... subprocess is the
    progressive student's, above)."""
    tmp, teacher_run = teacher
    run = tmp / "consistency"
    train_in_process("experiment=distill_mnist_consistency", f"teacher={teacher_run}", "distill.steps_per_round=3", *FAST,
                     f"hydra.run.dir={run}")
    return run


# covered by default: test_a_student_samples_with_its_own_sampler_and_refuses_what_it_did_not_learn (distillation through the scripts), test_distill::test_a_consistency_student_samples_by_the_baseline_step_at_any_steps
@pytest.mark.slow
def test_consistency_distillation_samples_by_the_naive_step_at_any_steps(teacher, consistency):
    tmp, run = teacher[0], consistency
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3 and last["udm"]["distilled"]["method"] == "consistency"
    assert any(k.startswith("target.") for k in last["state_dict"])  # the EMA target resumes with the run
    proc = run_cli("udm-sample", f"ckpt={run}", "n=4", "sampler.steps=8", "progress=false", cwd=tmp)
    assert "with student-naive, 8 steps" in proc.stdout
    proc = run_cli("udm-sample", f"ckpt={run}", "n=4", "sampler=ddim", "progress=false", cwd=tmp, check=False)
    assert proc.returncode != 0 and "consistency model" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["experiment=distill_mnist", "teacher=TEACHER", "net.channels=8"], "net.channels cannot apply"),
    (["experiment=distill_mnist", "teacher=TEACHER", "trainer.max_steps=5"], "set distill.steps_per_round instead"),
])
def test_distillation_refuses_settings_it_cannot_apply(teacher, args, message):
    tmp, teacher_run = teacher
    args = [a.replace("TEACHER", str(teacher_run)) for a in args]
    proc = run_cli("udm-train", *args, *FAST, f"hydra.run.dir={tmp / 'refused'}", cwd=tmp, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp / "refused" / "checkpoints").exists()  # refused before anything was written


@pytest.mark.parametrize("args, message", [
    (["distill=progressive"], "give its checkpoint or run folder as teacher=RUN"),
    (["teacher=TEACHER"], "choose how, with distill=progressive"),
    (["experiment=distill_mnist", "teacher=CONSISTENCY"], "is a consistency model"),
])
def test_distillation_needs_a_teacher_and_a_method(teacher, consistency, args, message):
    from udm.errors import UdmError
    from udm.jobs.train import open_teacher

    from .conftest import compose_train

    cfg = compose_train(*[a.replace("TEACHER", str(teacher[1])).replace("CONSISTENCY", str(consistency)) for a in args])
    with pytest.raises(UdmError, match=message):
        open_teacher(cfg)


def test_a_student_can_start_from_other_weights_of_the_teachers_net(teacher):
    """student=RUN: the student starts from those weights (an earlier student, say) while the teacher teaches; refused
    without a teacher and for weights of another net."""
    tmp, teacher_run = teacher
    other = tmp / "other"
    train_in_process("experiment=digits_smoke", "process=flow", "trainer.max_steps=3", "seed=1", *FAST, f"hydra.run.dir={other}")
    run = tmp / "from_other"
    train_in_process("experiment=distill_mnist", f"teacher={teacher_run}", f"student={other}", "distill.teacher_steps=2",
                     "distill.student_steps=1", "distill.steps_per_round=1", *FAST, f"hydra.run.dir={run}")
    last = run / "checkpoints" / "last.ckpt"
    start, taught_by = weights(other / "checkpoints" / "last.ckpt", "net."), weights(teacher_run / "checkpoints" / "last.ckpt", "net.")
    for key, value in weights(last, "teacher.").items():
        torch.testing.assert_close(value, taught_by[key], rtol=0, atol=0)
    student = weights(last, "net.")  # one Adam step from `other`: within (1 - b1) / sqrt(1 - b2) lr of it
    assert max(float((student[k] - v).abs().max()) for k, v in start.items()) < 3.17 * 2e-4 * 1.01
    assert max(float((student[k] - v).abs().max()) for k, v in taught_by.items()) > 10 * 3.17 * 2e-4

    assert torch.load(last, weights_only=True)["udm"]["distilled"]["start"] == str(other / "checkpoints" / "last.ckpt")
    consistency = tmp / "consistency_from_other"  # its EMA target starts as the student, from `other`
    train_in_process("experiment=distill_mnist_consistency", f"teacher={teacher_run}", f"student={other}",
                     "distill.steps_per_round=1", *FAST, f"hydra.run.dir={consistency}")
    ema = weights(consistency / "checkpoints" / "last.ckpt", "target.")
    assert max(float((ema[k] - v).abs().max()) for k, v in start.items()) < 3.17 * 2e-4

    refused = run_main("udm-train", "experiment=digits_smoke", f"student={other}", *FAST, f"hydra.run.dir={tmp / 'r1'}")
    assert refused.returncode != 0 and "it needs teacher=RUN and distill=" in refused.stderr
    foreign = torch.load(other / "checkpoints" / "last.ckpt", weights_only=True)
    foreign["udm"]["net"]["channels"] += 8
    torch.save(foreign, tmp / "foreign.ckpt")
    refused = run_main("udm-train", "experiment=distill_mnist", f"teacher={teacher_run}", f"student={tmp / 'foreign.ckpt'}",
                       *FAST, f"hydra.run.dir={tmp / 'r2'}")
    assert refused.returncode != 0 and "has another net than the teacher" in refused.stderr
    assert not (tmp / "r2" / "checkpoints").exists()
