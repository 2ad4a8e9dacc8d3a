"""The demo's workloads without Ray: transactions, the model, the mix, the figures."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from anya_resource_demo import transactions as tx
from anya_resource_demo.mix import default_mix
from anya_resource_demo.ml import Model, Problem, fit_classifier, infer_batch, train
from anya_resource_demo.report import RunWindow, Samples, build_report
from anya_resource_demo.runner import plan_mix
from anya_resource_demo.stats import (
    GrantRecord,
    coefficient_of_variation,
    cpu_seconds_by_node,
    grants_per_window,
    starved,
    waits_by_class,
)

# -- Bitcoin transactions ----------------------------------------------------------------


@pytest.fixture(scope="module")
def signed() -> list[tx.SignedTx]:
    return tx.make_transactions(12, tamper_every=0, seed=3)


def test_signed_transactions_verify(signed: list[tx.SignedTx]) -> None:
    for one in signed:
        assert tx.verify(one) == tx.Verdict(True)


def test_both_script_kinds_are_built_and_verified(signed: list[tx.SignedTx]) -> None:
    # P2SH outputs are OP_HASH160 <20 bytes> OP_EQUAL (23 bytes); P2PKH ones are 25 bytes.
    sizes = {len(spent.script_pubkey) for one in signed for spent in one.spent}
    assert sizes == {23, 25}


@pytest.mark.parametrize("how", tx.TAMPERINGS)
def test_a_tampered_transaction_fails(signed: list[tx.SignedTx], how: str) -> None:
    for one in signed[:4]:
        changed = tx.tamper(one, how)
        verdict = tx.verify(changed)
        assert not verdict.ok, how
        assert verdict.reason


def test_tampering_by_an_unknown_way_is_an_error(signed: list[tx.SignedTx]) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        tx.tamper(signed[0], "nonsense")


def test_spending_more_than_the_inputs_fails(signed: list[tx.SignedTx]) -> None:
    one = signed[0]
    poorer = tuple(tx.Spent(s.script_pubkey, 1) for s in one.spent)
    assert tx.verify(tx.SignedTx(one.raw, poorer)).reason == "spends more than its inputs hold"


def test_garbage_is_malformed() -> None:
    verdict = tx.verify(tx.SignedTx(b"\x01\x02", ()))
    assert not verdict.ok and verdict.reason.startswith("malformed")


def test_batch_tally_catches_every_tampered_one() -> None:
    txs = tx.make_transactions(20, tamper_every=5, seed=4)
    assert sum(t.tampered is not None for t in txs) == 4
    assert tx.verify_batch(txs) == tx.VerifyResult(valid=16, invalid=4, missed=0)


# -- the model -----------------------------------------------------------------------------


def test_model_predicts_better_than_chance() -> None:
    model = train(rows=1500)
    result = infer_batch(model, batch_seed=5, rows=4000)
    _, labels = model.problem.sample(4000, seed=123)
    majority = max(labels.mean(), 1 - labels.mean())  # always guessing the commoner label
    assert result.rows == 4000
    assert result.accuracy > 0.75
    assert result.accuracy > majority + 0.2


def test_numpy_forward_pass_predicts_as_scikit_learn_does() -> None:
    problem = Problem()
    classifier = fit_classifier(problem, rows=800)
    model = Model.from_classifier(problem, classifier, accuracy=0.0)
    x, _ = problem.sample(2000, seed=77)
    assert np.array_equal(model.predict(x), classifier.predict(x))


def test_problem_is_deterministic() -> None:
    x1, y1 = Problem(seed=2).sample(50, seed=9)
    x2, y2 = Problem(seed=2).sample(50, seed=9)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    _, other = Problem(seed=3).sample(50, seed=9)
    assert not np.array_equal(y1, other)


# -- the mix -------------------------------------------------------------------------------


@pytest.mark.parametrize("cpus", [4.0, 6.0, 8.0, 64.0])
def test_mix_saturates_without_starving(cpus: float) -> None:
    plans = plan_mix(default_mix(), cpus)
    wanted = {p.kind.priority: p.clients * p.kind.cpu for p in plans}
    assert list(wanted) == ["high", "normal", "low"]
    assert sum(wanted.values()) > cpus  # more asked for than there is: saturated
    assert wanted["high"] + wanted["normal"] < cpus  # the top classes never take it all


# -- the figures ---------------------------------------------------------------------------


def record(
    priority: str, requested: float, wait: float, held: float, node: str, kind: str = ""
) -> GrantRecord:
    return GrantRecord(
        kind=kind or priority,
        priority=priority,
        requested=requested,
        granted=requested + wait,
        ended=requested + wait + held,
        node_id=node,
        cpu=1.0,
    )


def test_waits_by_class_lists_every_class() -> None:
    records = [record("high", float(i), 0.01 * i, 1.0, "a") for i in range(1, 101)]
    waits = waits_by_class(records, ["high", "low"])
    assert waits["high"]["count"] == 100
    assert waits["high"]["p50"] == pytest.approx(0.5)
    assert 0.98 <= waits["high"]["p99"] <= 1.0  # nearest rank
    assert waits["low"] == {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None}


def test_cpu_seconds_clip_to_the_run_and_count_idle_nodes() -> None:
    records = [record("low", 0.0, 1.0, 4.0, "a"), record("low", 0.0, 0.0, 2.0, "b")]
    assert cpu_seconds_by_node(records, ["a", "b", "c"]) == {"a": 4.0, "b": 2.0, "c": 0.0}
    assert cpu_seconds_by_node(records, ["a", "b"], start=2.0, end=4.0) == {"a": 2.0, "b": 0.0}


def test_coefficient_of_variation() -> None:
    assert coefficient_of_variation([5.0, 5.0, 5.0]) == 0.0
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(0.5)
    assert coefficient_of_variation([1.0]) is None
    assert coefficient_of_variation([0.0, 0.0]) is None


def test_windows_and_starvation() -> None:
    records = [record("high", t, 0.0, 0.1, "a") for t in (1.0, 12.0, 25.0)]
    records += [record("low", 3.0, 0.0, 0.1, "a"), record("low", 31.0, 0.0, 0.1, "a")]
    windows = grants_per_window(records, ["high", "low"], start=0.0, end=30.0, window=10.0)
    assert windows == {"high": [1, 1, 1], "low": [1, 0, 0]}  # t=31 is past the last window
    assert starved(windows) == {"low": [1, 2]}


def fake_snapshot(granted: int, waits: dict[str, Any]) -> dict[str, Any]:
    resources = {
        "cpu": {"capacity": 2000, "grantable": 2000},
        "memory": {"capacity": 4 * 1024**3, "grantable": 4 * 1024**3},
    }
    return {
        "nodes": {n: {"leases": 0, "resources": resources} for n in ("a", "b")},
        "leases": 0,
        "queue": {"waiting": 0},
        "counters": {"granted": granted, "revoked": {}, "rejected": {}},
        "waits": waits,
        "health": {},
    }


def test_report_agrees_with_the_coordinator() -> None:
    plans = plan_mix(default_mix(), 4.0)
    rng = random.Random(1)
    records = [
        record(
            p.kind.priority,
            rng.uniform(0, 20),
            rng.uniform(0, 1),
            1.0,
            rng.choice("ab"),
            p.kind.name,
        )
        for p in plans
        for _ in range(10)
    ]
    before = fake_snapshot(7, {})
    after = fake_snapshot(7 + len(records), {"high": {"count": 10, "p95": 0.1}})
    report = build_report(
        plans, records, RunWindow(0.0, 20.0), (before, after), Samples(), {"a": "head"}
    )
    assert report["coordinator"]["granted"] == sum(c["grants"] for c in report["classes"].values())
    assert report["classes"]["high"]["coordinator_wait_s"] == {"count": 10, "p95": 0.1}
    assert report["nodes"]["a"]["label"] == "head" and report["nodes"]["b"]["label"] == "b"
    assert sum(n["grants"] for n in report["nodes"].values()) == len(records)
    assert report["preemptions"] == 0 and report["bottleneck"] is None
    assert set(report["balance"]["grants_per_window"]) == {"high", "normal", "low"}
    # The balance figure is over the same CPU-seconds the node rows show.
    per_node = [n["cpu_seconds"] for n in report["nodes"].values()]
    assert sum(per_node) > 0
    cv = coefficient_of_variation(per_node)
    assert report["balance"]["cpu_seconds_cv"] == pytest.approx(cv, abs=1e-4)
