"""Classification metrics of a few-shot cell: accuracy and macro-F1."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted class ids.

    Macro-F1 is the unweighted mean over classes of ``F1_c = 2 P_c R_c / (P_c + R_c)``, over the
    classes present in ``y_true`` or ``y_pred`` (scikit-learn's default), 0 where undefined.

    Args:
        y_true: gold class ids, shape [N].
        y_pred: predicted class ids, shape [N].

    Returns:
        ``{"accuracy", "macro_f1", "n"}``.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    n = int(y_true.shape[0])
    if n == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    accuracy = float(np.mean(y_true == y_pred))
    macro_f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    return {"accuracy": accuracy, "macro_f1": macro_f1, "n": n}
