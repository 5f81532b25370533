"""The training skeleton (vizloc_training.train.skeleton.fit) on a toy regression: steps and schedule,
best state, time budget, checkpoints and resume, DDP helpers."""
import logging
import math
import time

import pytest

torch = pytest.importorskip('torch')

from vizloc_training.train.loop import CheckpointError, CheckpointManager, DistributedInfo, lr_factor  # noqa: E402
from vizloc_training.train.skeleton import (Schedule, TrainingTask, Validation, fit, shard,  # noqa: E402
                                            sharded_steps)


class Regression(TrainingTask):
    """y = 2x + 1 from 32 points in batches of 8; batches drawn from a generator seeded by the epoch, so a
    resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, scores=(), sleep_s=0.0):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(1, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.steps_per_epoch = 4
        self.x = torch.linspace(-1, 1, 32).view(-1, 1)
        self.y = 2 * self.x + 1
        self.scores = list(scores)
        self.sleep_s = sleep_s
        self.snapshots, self.restored, self.steps, self.validations = [], None, [], 0

    def batches(self, epoch):
        order = torch.randperm(32, generator=torch.Generator().manual_seed(epoch))
        for b in range(4):
            yield order[b * 8:(b + 1) * 8]

    def step(self, batch, at):
        self.steps.append((at.epoch, at.step, self.optimizer.param_groups[0]['lr']))
        time.sleep(self.sleep_s)
        loss = torch.nn.functional.mse_loss(self.model(self.x[batch]), self.y[batch])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def validate(self):
        if not self.scores:
            return None
        self.validations += 1
        score = self.scores[self.validations - 1]
        return Validation({'val_score': score}, score)

    def snapshot(self):
        self.snapshots.append(len({s[0] for s in self.steps}))  # the epoch count at the copy
        return super().snapshot()

    def restore(self, state):
        self.restored = len(self.snapshots)
        super().restore(state)


def test_fit_runs_the_steps_with_the_warmup_cosine_schedule():
    task = Regression()
    schedule = Schedule.over_epochs(5, 4, warmup_epochs=1)
    result = fit(task, epochs=5, schedule=schedule, select_best=False)
    assert result.global_step == 20 and result.epochs_run == 5 and len(result.history) == 5
    assert [s[1] for s in task.steps] == list(range(20))
    for _, step, lr in task.steps:  # every group at base lr x the factor, before the step
        assert lr == pytest.approx(0.1 * lr_factor(step, 0.0, warmup_steps=4, total_steps=20))
    assert [r['epoch'] for r in result.history] == [1, 2, 3, 4, 5]
    assert list(result.history[0]) == ['epoch', 'loss', 'lr', 'elapsed_s']
    assert result.history[-1]['loss'] < 0.5 * result.history[0]['loss'] and result.last_loss == result.history[-1]['loss']
    assert result.best_score is None and task.snapshots == []  # no selection: the last weights stay


def test_best_state_is_copied_only_when_the_score_improves_and_restored_at_the_end():
    task = Regression(scores=[0.5, 0.9, 0.7, 0.9, 0.2])
    result = fit(task, epochs=5, schedule=Schedule.over_epochs(5, 4))
    assert [r['val_score'] for r in result.history] == [0.5, 0.9, 0.7, 0.9, 0.2]
    assert task.snapshots == [1, 2, 4]  # epochs 1, 2 and 4 (a tie goes to the later epoch)
    assert result.best_score == 0.9 and task.restored == 3
    # without validation data the last epoch counts as best
    plain = Regression()
    fit(plain, epochs=3)
    assert plain.snapshots == [1, 2, 3]


def test_floor_of_the_cosine():
    assert Schedule(total_steps=10, floor=0.02).factor(10, 0.0) == pytest.approx(0.02)
    assert Schedule(total_steps=10).factor(3, 0.0) == lr_factor(3, 0.0, warmup_steps=0, total_steps=10)
    assert Schedule(total_steps=100, budget_s=10.0).progress(10, 5.0) == pytest.approx(0.5)



def test_a_time_budget_shorter_than_the_warm_up_still_warms_up_and_decays():
    """200 epochs x 300 steps with 10 % warm-up, cut by a 900 s budget after ~3600 steps: the warm-up is
    the first 10 % of the run's progress (90 s), then the cosine runs over the rest of the budget."""
    schedule = Schedule(warmup_steps=6000, total_steps=60000, budget_s=900.0)
    assert schedule.factor(0, 0.0) == pytest.approx(1 / 6000)
    assert schedule.factor(180, 45.0) == pytest.approx(0.5)       # half the warm-up time: half the rate
    assert schedule.factor(360, 90.0) == pytest.approx(1.0)       # warm-up done by time
    assert schedule.factor(1980, 495.0) == pytest.approx(0.5)     # half way through the decay
    assert schedule.factor(3599, 900.0) == pytest.approx(0.0)     # the budget's end: decayed
    # without a budget nothing changes: warm-up over the steps, cosine over the rest
    plain = Schedule(warmup_steps=4, total_steps=20)
    assert [plain.factor(k, 0.0) for k in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert plain.factor(12, 0.0) == pytest.approx(0.5)

def test_time_budget_stops_training_after_at_least_one_step(caplog):
    task = Regression(sleep_s=0.02)
    result = fit(task, epochs=1000, schedule=Schedule.over_epochs(1000, 4, budget_s=0.15), select_best=False)
    assert result.out_of_time and 1 <= result.global_step < 4000 and result.train_s >= 0.15
    assert len(task.steps) == 1 or task.steps[-1][2] < task.steps[0][2]  # the cosine follows the clock, not the 4000 steps
    one = Regression()
    assert fit(one, epochs=10, schedule=Schedule.over_epochs(10, 4, budget_s=1e-9)).global_step == 1
    assert len(one.steps) == 1
    # under DDP the budget is ignored (every rank must run the same steps)
    caplog.set_level(logging.WARNING)
    ddp = fit(Regression(), epochs=2, schedule=Schedule.over_epochs(2, 4, budget_s=1e-9),
              dist=DistributedInfo(world_size=2, rank=0))
    assert ddp.global_step == 8 and 'ignored under DDP' in caplog.text


def test_resume_continues_exactly_where_the_checkpoint_left(tmp_path):
    whole = Regression(scores=[0.1, 0.3, 0.2, 0.4])
    fit(whole, epochs=4, schedule=Schedule.over_epochs(4, 4, warmup_epochs=1))
    manager = CheckpointManager(tmp_path / 'ckpt', describe={'type': 'toy'})
    first = Regression(scores=[0.1, 0.3])
    part = fit(first, epochs=2, schedule=Schedule.over_epochs(4, 4, warmup_epochs=1), checkpoints=manager)
    payload = manager.load_latest()
    assert payload['epoch'] == 2 and payload['extra']['global_step'] == 8 and payload['extra']['best_score'] == 0.3
    assert payload['extra']['budget_used'] is False and len(payload['extra']['history']) == 2
    second = Regression(scores=[0.2, 0.4])
    rest = fit(second, epochs=4, schedule=Schedule.over_epochs(4, 4, warmup_epochs=1), checkpoints=manager,
               resume=True)
    assert [s[1] for s in second.steps] == list(range(8, 16)) and rest.epochs_run == 2
    assert rest.history[:2] == part.history and [r['epoch'] for r in rest.history] == [1, 2, 3, 4]
    assert rest.train_s >= part.train_s
    for mine, want in zip(second.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine, want, rtol=0, atol=0)  # bit for bit the uninterrupted run
    assert [s[2] for s in second.steps] == [s[2] for s in whole.steps[8:]]


def test_resume_of_a_run_whose_budget_is_used_trains_no_further(tmp_path):
    manager = CheckpointManager(tmp_path / 'ckpt')
    fit(Regression(sleep_s=0.01), epochs=100, schedule=Schedule.over_epochs(100, 4, budget_s=0.05),
        checkpoints=manager)
    payload = manager.load_latest()
    assert payload['extra']['budget_used'] is True
    again = Regression()
    result = fit(again, epochs=100, schedule=Schedule.over_epochs(100, 4, budget_s=0.05), resume=payload)
    assert again.steps == [] and result.epochs_run == 0 and math.isnan(result.last_loss)
    assert len(result.history) == payload['epoch']


class SlowStart(Regression):
    """Every epoch after the first takes 1 s before its first batch (a data loader starting, a cache read):
    the budget runs out between epochs, after the last checkpoint said it had not."""

    def batches(self, epoch):
        if epoch > 0:
            time.sleep(1.0)
        yield from super().batches(epoch)


def test_a_budget_that_runs_out_between_epochs_ends_on_a_checkpoint_that_says_so(tmp_path):
    """Epoch 1 takes 4 x 0.01 s of a 0.6 s budget (0.56 s left for the steps' own time and the checkpoint on a
    slow machine); epoch 2 starts (the boundary check passes) and waits 1 s for its first batch. That epoch still
    takes its first step, so the run ends on epoch 2's checkpoint, marked budget_used (once it ended on epoch 1's,
    marked unused, and a resume trained on)."""
    manager = CheckpointManager(tmp_path / 'ckpt')
    task = SlowStart(sleep_s=0.01)
    result = fit(task, epochs=100, schedule=Schedule.over_epochs(100, 4, budget_s=0.6), checkpoints=manager)
    payload = manager.load_latest()
    assert result.out_of_time and payload['extra']['budget_used'] is True
    assert payload['epoch'] == result.epochs_run == 2 and [s[0] for s in task.steps] == [0, 0, 0, 0, 1]


def test_task_checks_the_checkpoint_before_the_model_is_loaded(tmp_path):
    class Refusing(Regression):
        def resume(self, payload):
            raise CheckpointError('not this run')

    manager = CheckpointManager(tmp_path / 'ckpt')
    fit(Regression(), epochs=1, checkpoints=manager)
    task = Refusing()
    before = [p.detach().clone() for p in task.model.parameters()]
    with pytest.raises(CheckpointError, match='not this run'):
        fit(task, epochs=2, checkpoints=manager, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(before, task.model.parameters()))
    assert fit(Regression(), epochs=1, checkpoints=CheckpointManager(tmp_path / 'none'), resume=True).epochs_run == 1


def test_validate_every_and_ddp_helpers():
    task = Regression(scores=[0.1, 0.2, 0.3, 0.4, 0.5])
    result = fit(task, epochs=5, validate_every=2)
    assert ['val_score' in r for r in result.history] == [False, True, False, True, True]  # and the last one

    class StepBudget(Schedule):  # "out of time" once 8 steps ran: the budget ends the run after epoch 2
        def out_of_time(self, elapsed_s, step):
            return step >= 8

    task = Regression(scores=[0.1, 0.2, 0.3])
    result = fit(task, epochs=9, schedule=StepBudget(), validate_every=3)
    assert result.out_of_time and ['val_score' in r for r in result.history] == [False, True]  # the last is validated
    assert shard(list(range(10)), DistributedInfo(world_size=3, rank=1)) == [1, 4, 7]
    assert sharded_steps(10, 2, DistributedInfo(world_size=3)) == 2 and sharded_steps(10, 4, DistributedInfo()) == 3
