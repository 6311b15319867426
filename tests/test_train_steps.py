"""The one step loop (train/steps.py): rates, counting, reads, back-offs -- and that both trainers run on it."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from verydeep.train.schedule import RateSchedule
from verydeep.train.step import StepOutput
from verydeep.train.steps import BackOff, DivergencePolicy, StepHooks, StepInput, run_steps

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "verydeep"


class FakeStep:
    """A step that takes its loss from the input and refuses it above the limit; it records the
    rate it was given and the input it took."""

    def __init__(self) -> None:
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
        self.taken: list[tuple[float, float, float]] = []  # (rate, limit, loss)

    def __call__(self, micro, scale=None, limit=math.inf) -> StepOutput:
        loss = float(micro[0][0])
        self.taken.append((self.optimizer.param_groups[0]["lr"], limit, loss))
        t = torch.tensor(loss)
        refused = torch.tensor(not math.isfinite(loss) or loss > limit)
        return StepOutput(
            loss_sum=torch.where(refused, 0.0, t),
            correct=None,
            images=1,
            mean_loss=t,
            refused=refused,
            loss_finite=torch.isfinite(t),
            grads_finite=torch.tensor(True),
        )


class Policy(DivergencePolicy):
    def __init__(self, answers=None, limit=10.0) -> None:
        self.answers, self.cap = list(answers or []), limit
        self.accepted: list[tuple[int, float]] = []
        self.refused: list[tuple[int, str]] = []

    def limit(self) -> float:
        return self.cap

    def accept(self, verdict) -> None:
        self.accepted.append((verdict.step, verdict.mean_loss))

    def refuse(self, verdict):
        self.refused.append((verdict.step, verdict.reason))
        return self.answers.pop(0)


class Hooks(StepHooks):
    def __init__(self, read_at=()) -> None:
        self.read_at, self.stepped_at, self.after_at = set(read_at), [], []

    def stepped(self, step: int) -> None:
        self.stepped_at.append(step)

    def read_now(self, step: int) -> bool:
        return step in self.read_at

    def after(self, step: int) -> None:
        self.after_at.append(step)


def inputs(*losses):
    return [
        StepInput([(torch.tensor(v), None)]) if v is not None else StepInput(None) for v in losses
    ]


def test_each_step_gets_its_rate_from_the_schedule_and_the_count_goes_on_from_start():
    step, policy, hooks = FakeStep(), Policy(), Hooks()
    schedule = RateSchedule(0.4, warmup_steps=4)
    assert run_steps(step, inputs(1.0, 2.0, None, 3.0), schedule, policy, hooks, start=1)
    assert [rate for rate, _, _ in step.taken] == [schedule.at(1), schedule.at(2), schedule.at(4)]
    assert (
        hooks.stepped_at == hooks.after_at == [2, 3, 4, 5]
    )  # the empty input is counted, not stepped on
    assert policy.accepted == [(2, 1.0), (3, 2.0), (5, 3.0)] and all(
        limit == 10.0 for _, limit, _ in step.taken
    )


def test_a_back_off_goes_on_from_the_restored_step_with_the_next_batch():
    step, hooks = FakeStep(), Hooks()
    policy = Policy([BackOff(1)])
    schedule = RateSchedule(1.0)
    assert run_steps(
        step, iter(inputs(1.0, 2.0, 99.0, 4.0, 5.0, 6.0, 7.0)), schedule, policy, hooks, end=4
    )
    assert policy.refused == [(3, "exploding")]
    assert policy.accepted == [
        (1, 1.0),
        (2, 2.0),
        (2, 4.0),
        (3, 5.0),
        (4, 6.0),
    ]  # 7.0 is never taken: end=4
    assert hooks.after_at == [1, 2, 2, 3, 4]  # not after the refused step


def test_a_back_off_to_a_new_pass_ends_the_loop():
    step, policy = FakeStep(), Policy([BackOff(0, new_pass=True)])
    left = iter(inputs(1.0, math.nan, 3.0))
    assert run_steps(step, left, RateSchedule(1.0), policy) is False
    assert policy.refused == [(2, "not finite")] and len(step.taken) == 2
    assert len(list(left)) == 1  # the rest of the pass is left to the caller


def test_deferred_reads_come_in_order_and_a_back_off_drops_the_steps_after_it():
    step, hooks = FakeStep(), Hooks(read_at={5})
    policy = Policy([None, BackOff(1, new_pass=True)])
    assert (
        run_steps(
            step,
            inputs(1.0, 50.0, 3.0, 4.0, 60.0, 6.0, 7.0),
            RateSchedule(1.0),
            policy,
            hooks,
            read_every=3,
        )
        is False
    )
    # read after steps 3 (1, skipped 2, 3) and 5 (a hook asked): 4, then 5 backs off; nothing after is read
    assert policy.accepted == [(1, 1.0), (3, 3.0), (4, 4.0)] and policy.refused == [
        (2, "exploding"),
        (5, "exploding"),
    ]
    assert hooks.after_at == [1, 2, 3, 4] and len(step.taken) == 5


def test_the_default_policy_stops_at_a_refused_step():
    with pytest.raises(RuntimeError, match="step 2 was refused"):
        run_steps(FakeStep(), inputs(1.0, math.inf), RateSchedule(1.0), DivergencePolicy())


# -- one loop in the package ------------------------------------------------------------------------


def _tree(relative: str) -> ast.Module:
    return ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def _calls(node: ast.AST) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}


def test_both_trainers_run_on_the_one_loop():
    """Issue 25, item 1: ``verydeep train``'s epochs and the box nets call run_steps, and nothing in the
    package but run_steps puts a rate into an optimiser (RateSchedule.write) or assigns one: a second
    step loop would have to, to warm up or back off."""
    assert "run_steps" in _calls(_function(_tree("train/engine.py"), "train_one_epoch"))
    assert "run_steps" in _calls(_function(_tree("localize/train.py"), "train_box_net"))
    writers, assigned = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = str(path.relative_to(PACKAGE))
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for call in (
                n
                for n in ast.walk(fn)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            ):
                if call.func.attr == "write" and "schedule" in ast.unparse(call.func.value).lower():
                    writers.append(f"{rel}:{fn.name}")
        for node in ast.walk(tree):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AugAssign)
                else []
            )
            for t in targets:
                if (
                    isinstance(t, ast.Subscript)
                    and isinstance(t.slice, ast.Constant)
                    and t.slice.value == "lr"
                ):
                    assigned.append(rel)
    assert writers == ["train/steps.py:run_steps"]
    assert assigned == ["train/schedule.py"]
    localize = ast.unparse(_tree("localize/train.py"))
    assert ".write(" not in localize.replace("bar.write(", "") and "step_fn(" not in localize
