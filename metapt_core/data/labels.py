"""Map a source's raw labels (names or numeric scores) to class names and class indices.

Rules, applied per row:

0. No label column (``label_column == ""``): rows are unlabelled (label None, id -1); the
   caller handles that without this module.
1. ``label_bins`` set (ascending thresholds ``b_0 < ... < b_{m-1}``): the raw value is read as
   a number ``s`` and binned to ``i = bisect_right(bins, s)``, the count of thresholds ``<= s``,
   so bin ``i`` holds ``b_{i-1} <= s < b_i``. The key is ``str(i)``. Examples:
   ``[-1e-9, 1e-9]`` gives 0 for ``s < 0``, 1 for ``s == 0``, 2 for ``s > 0`` (the default
   profile maps "0" and "2" and drops the zero-rated rows with ``drop_unmapped``);
   ``[-2.4, -0.8, 0.8, 2.4]`` on the VADER -4..+4 rating is SST-5's cut of ``(s + 4) / 8`` at
   0.2/0.4/0.6/0.8.
2. Otherwise the key is the raw value as text (integral floats as integers: ``1.0 -> "1"``).
3. The key is looked up in ``label_map``; with an empty ``label_map`` the key itself is the
   class name (with bins: ``classes[i]``).
4. A key outside the map (or a class name outside ``classes``) is a ``DataError`` unless
   ``drop_unmapped``, in which case the row is dropped and counted.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from metapt_core.config import SourceConfig
from metapt_core.errors import DataError


@dataclass
class LabelResult:
    """Class names and indices of the rows that kept a label, and the rows that were dropped."""

    keep: list[int]  # positions (into the input) of the rows kept
    labels: list[str | None]  # class name per kept row (None: unlabelled source)
    label_ids: list[int]  # index into classes per kept row (-1: unlabelled)
    dropped: int = 0
    dropped_keys: dict[str, int] = field(default_factory=dict)


def raw_key(value: Any) -> str:
    """A raw label as a lookup key: text as is, integral numbers without a fraction."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def bin_index(score: float, bins: Sequence[float]) -> int:
    """``bisect_right(bins, score)``: how many thresholds are ``<= score``."""
    return bisect_right(list(bins), score)


def map_labels(
    values: Sequence[Any], src: SourceConfig, classes: Sequence[str], where: str
) -> LabelResult:
    """Turn raw label values into classes per the rules in the module docstring.

    Args:
        values: the raw label column.
        src: the source (``label_map``, ``label_bins``, ``drop_unmapped``).
        classes: the class names of the pool or task, in label-id order.
        where: the setting named in errors, e.g. ``tasks[mr].train``.

    Raises:
        DataError: a label outside the map, a non-numeric score, or a class not in ``classes``.
    """
    class_ids = {name: i for i, name in enumerate(classes)}
    for raw, target in src.label_map.items():
        if target not in class_ids:
            raise DataError(
                f"source[{src.name}].label_map", {raw: target}, f"class not in {list(classes)}"
            )
    if src.label_bins and not src.label_map and len(src.label_bins) + 1 != len(classes):
        raise DataError(
            f"source[{src.name}].label_bins",
            src.label_bins,
            f"gives {len(src.label_bins) + 1} bins for {len(classes)} classes; add a label_map",
        )
    keep: list[int] = []
    labels: list[str | None] = []
    label_ids: list[int] = []
    dropped: Counter[str] = Counter()
    for pos, value in enumerate(values):
        name: str | None
        if src.label_bins:
            try:
                score = float(value)
            except (TypeError, ValueError):
                score = math.nan
            if math.isnan(score):
                raise DataError(
                    f"source[{src.name}].label_column",
                    value,
                    f"row {pos} is not a number (label_bins needs scores)",
                )
            index = bin_index(score, src.label_bins)
            key = str(index)
            name = src.label_map.get(key) if src.label_map else classes[index]
        else:
            key = raw_key(value)
            name = src.label_map.get(key) if src.label_map else key
        if name is None or name not in class_ids:
            if src.drop_unmapped:
                dropped[key] += 1
                continue
            known = sorted(src.label_map) if src.label_map else list(classes)
            raise DataError(
                f"{where}.label_map",
                key,
                f"raw label of row {pos} is not mapped to a class (mapped: {known}); set drop_unmapped to drop such rows",
            )
        keep.append(pos)
        labels.append(name)
        label_ids.append(class_ids[name])
    return LabelResult(
        keep, labels, label_ids, sum(dropped.values()), dict(sorted(dropped.items()))
    )
