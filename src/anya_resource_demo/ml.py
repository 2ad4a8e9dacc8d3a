"""ML inference: a small real model, trained at start-up on synthetic data, run batch by batch.

The data come from a fixed "teacher": labels are a noisy non-linear function of
Gaussian features (a random one-hidden-layer network chosen by ``Problem.seed``).
So any process can draw fresh labelled batches from the same distribution, and
inference tasks can report real accuracy, not just throughput. The student is a
scikit-learn ``MLPClassifier``; the noise caps what it can reach (~0.9), a
coin flip scores 0.5.

Training needs scikit-learn; inference does not: ``Model`` keeps only the fitted
weights and runs the forward pass in numpy. Importing scikit-learn costs a fresh
Ray worker seconds (4.5 s on a loaded 2-core machine), longer than its tasks run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

Features = NDArray[np.float64]
Labels = NDArray[np.int64]

TRAIN_ROWS = 3000
HIDDEN = (32,)
BATCH_SEEDS = 1_000_000  # inference batches draw seeds from here up, training below
_threads_limited = False


def _one_blas_thread() -> None:
    """Keep numpy's BLAS to one thread in this process.

    Several tasks share a node's cores already; a multi-threaded BLAS in each of them
    fights the others (on a loaded 2-core machine, training took 20 s with the default
    thread pool against 0.5 s with one thread).
    """
    global _threads_limited
    if not _threads_limited:
        threadpool_limits(limits=1)
        _threads_limited = True


@dataclass(frozen=True)
class Problem:
    """A synthetic binary classification task: the same seed, the same distribution."""

    features: int = 16
    hidden: int = 8
    noise: float = 0.3
    seed: int = 7
    _weights: tuple[Features, Features] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        first = rng.normal(size=(self.features, self.hidden))
        second = rng.normal(size=self.hidden)
        object.__setattr__(self, "_weights", (first, second))

    def sample(self, rows: int, seed: int) -> tuple[Features, Labels]:
        """``rows`` fresh labelled examples; ``seed`` picks which."""
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(rows, self.features))
        first, second = self._weights
        score = np.tanh(x @ first) @ second + self.noise * rng.normal(size=rows)
        return x, (score > 0).astype(np.int64)


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity
class Model:
    """A trained multi-layer perceptron as plain weights: ReLU hidden layers, one logit."""

    problem: Problem
    layers: tuple[tuple[Features, Features], ...]  # (weights, biases), input to output
    train_accuracy: float

    @classmethod
    def from_classifier(cls, problem: Problem, classifier: Any, accuracy: float) -> Model:
        """The weights of a fitted binary ``MLPClassifier`` (ReLU, logistic output)."""
        if classifier.activation != "relu" or list(classifier.classes_) != [0, 1]:
            raise ValueError("expected a binary MLPClassifier with ReLU activations")
        layers = tuple(zip(classifier.coefs_, classifier.intercepts_, strict=True))
        return cls(problem=problem, layers=layers, train_accuracy=accuracy)

    def predict(self, x: Features) -> Labels:
        _one_blas_thread()
        hidden = x
        for weights, biases in self.layers[:-1]:
            hidden = np.maximum(hidden @ weights + biases, 0.0)
        weights, biases = self.layers[-1]
        logit = (hidden @ weights + biases)[:, 0]
        # The logistic output is above 0.5 exactly when the logit is above 0.
        labels: Labels = (logit > 0).astype(np.int64)
        return labels


def fit_classifier(problem: Problem, rows: int = TRAIN_ROWS, seed: int = 0) -> Any:
    """A scikit-learn ``MLPClassifier`` fitted on ``rows`` examples (~0.5 s on one core)."""
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
    from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]

    _one_blas_thread()
    x, y = problem.sample(rows, seed=seed)
    # lbfgs converges in a few hundred cheap steps on data this small; adam needs far
    # more passes for the same accuracy.
    classifier = MLPClassifier(
        hidden_layer_sizes=HIDDEN, solver="lbfgs", max_iter=300, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a capped run is good enough
        classifier.fit(x, y)
    return classifier


def train(problem: Problem | None = None, rows: int = TRAIN_ROWS, seed: int = 0) -> Model:
    """Train at start-up: fit with scikit-learn, keep the weights."""
    problem = problem or Problem()
    classifier = fit_classifier(problem, rows, seed)
    x, y = problem.sample(rows, seed=seed)
    accuracy = float(np.mean(classifier.predict(x) == y))
    return Model.from_classifier(problem, classifier, accuracy)


@dataclass(frozen=True)
class BatchResult:
    """What one inference batch did: rows scored and how many were right."""

    rows: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows if self.rows else 0.0


def infer_batch(model: Model, batch_seed: int, rows: int) -> BatchResult:
    """Draw a fresh batch (seeds apart from the training seeds) and score it."""
    x, y = model.problem.sample(rows, seed=BATCH_SEEDS + batch_seed)
    predicted = model.predict(x)
    return BatchResult(rows=rows, correct=int(np.sum(predicted == y)))
