"""FaultPlan and the --faults specification."""

from __future__ import annotations

import pytest

from devices.sim.faults import Fault, FaultPlan, parse_fault_spec


def test_one_shot_faults_apply_once_and_respect_the_command_filter() -> None:
    plan = FaultPlan()
    plan.inject(Fault.GARBAGE, command="SI")
    plan.inject(Fault.PARTIAL, count=2)
    assert plan.take("I4") == {Fault.PARTIAL}
    assert plan.take("SI") == {Fault.GARBAGE, Fault.PARTIAL}
    assert plan.take("SI") == frozenset()
    assert plan.pending == []
    assert plan.applied == [(Fault.PARTIAL, "I4"), (Fault.GARBAGE, "SI"), (Fault.PARTIAL, "SI")]


def test_same_fault_twice_applies_to_consecutive_replies() -> None:
    plan = FaultPlan()
    plan.inject(Fault.ERROR_ES)
    plan.inject(Fault.ERROR_ES)
    assert plan.take(None) == {Fault.ERROR_ES}
    assert plan.take(None) == {Fault.ERROR_ES}
    assert plan.take(None) == frozenset()


def test_split_is_persistent_and_clear_forgets_injections() -> None:
    plan = FaultPlan(split=True)
    plan.inject(Fault.DISCONNECT)
    plan.clear()
    assert plan.take(None) == {Fault.SPLIT}
    assert plan.take(None) == {Fault.SPLIT}


def test_random_faults_are_reproducible() -> None:
    draws = [FaultPlan(probabilities={Fault.GARBAGE: 0.3}, seed=5) for _ in range(2)]
    runs = [[plan.take(None) for _ in range(200)] for plan in draws]
    assert runs[0] == runs[1]
    hits = sum(1 for taken in runs[0] if taken)
    assert 30 < hits < 90


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        FaultPlan(probabilities={Fault.GARBAGE: 1.5})
    with pytest.raises(ValueError):
        FaultPlan().inject(Fault.GARBAGE, count=0)


def test_parse_fault_spec() -> None:
    conditions, split, probabilities = parse_fault_spec(" unstable, busy ,split,garbage=0.05,ES, disconnect=0")
    assert conditions == {"unstable", "busy"}
    assert split is True
    assert probabilities == {Fault.GARBAGE: 0.05, Fault.ERROR_ES: 0.1, Fault.DISCONNECT: 0.0}
    assert parse_fault_spec("") == (set(), False, {})


@pytest.mark.parametrize("spec", ["wobbly", "unstable=0.5", "garbage=2", "overload,underload", "es=x"])
def test_parse_fault_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_fault_spec(spec)
