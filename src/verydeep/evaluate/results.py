"""From saved posteriors to the paper's tables: top-1 / top-5 error per net, ensemble, protocol, scale.

Rows follow Tables 3-6: for each net, one row per test scale Q and one for its multi-scale set
(Table 4); then, with several nets, the ensemble of all of them (Table 6) at the scales they share
and at each net's own multi-scale set. Columns are the protocols (Table 5). Every cell is computed
from :class:`~verydeep.evaluate.scores.Scores` alone, so a saved file gives the same table
without running a net.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from verydeep.evaluate.combine import available, ensemble_posteriors
from verydeep.evaluate.metrics import errors_percent
from verydeep.evaluate.protocols import PROTOCOLS
from verydeep.evaluate.scales import describe_train_scale
from verydeep.evaluate.scores import Scores


@dataclass
class Row:
    """One table row: a net or an ensemble at a scale selection, with errors per protocol (%)."""

    name: str
    nets: list[str]
    train: str
    test: str
    kind: str  # "scale" (one Q for every net) or "multi" (each net's multi-scale set)
    q: int | None
    selection: dict[str, list[int]]
    errors: dict[str, dict[str, float] | None] = field(default_factory=dict)


@dataclass
class Summary:
    rows: list[Row]
    protocols: list[str]
    num_images: int
    failed: list[tuple[str, str]]
    nets: list[dict[str, Any]]
    root: str = ""
    engine: str | None = None  # what ran the nets (None: combined from saved scores, nothing ran)

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.num_images,
            "data": self.root,
            **({"engine": self.engine} if self.engine else {}),
            "protocols": list(self.protocols),
            "nets": self.nets,
            "rows": [asdict(r) for r in self.rows],
            "unreadable": [{"image": path, "error": why} for path, why in self.failed],
        }


def _multi_set(net) -> list[int]:
    multi = [q for q in net.multi if q in net.scales]
    return multi if len(multi) > 1 else list(net.scales)


def _selections(
    scores: Scores,
) -> list[tuple[str, list[int], str, str, int | None, dict[int, list[int]]]]:
    """(name, net indices, test text, kind, Q, selection) for every row, in table order."""
    out = []
    nets = scores.nets
    for n, net in enumerate(nets):
        for q in net.scales:
            out.append((net.name, [n], str(q), "scale", q, {n: [q]}))
        if len(net.scales) > 1:
            multi = _multi_set(net)
            out.append((net.name, [n], ",".join(map(str, multi)), "multi", None, {n: multi}))
    if len(nets) > 1:
        every = list(range(len(nets)))
        name = " + ".join(net.name for net in nets)
        common = sorted(set.intersection(*(set(net.scales) for net in nets)))
        for q in common:
            out.append((name, every, str(q), "scale", q, {n: [q] for n in every}))
        sets = {n: _multi_set(net) for n, net in enumerate(nets)}
        if any(len(s) > 1 for s in sets.values()):
            texts = [",".join(map(str, s)) for s in sets.values()]
            test = texts[0] if len(set(texts)) == 1 else " / ".join(texts)
            out.append((name, every, test, "multi", None, sets))
    return out


def summarise(scores: Scores, protocols: Sequence[str] | None = None) -> Summary:
    """Error rates for every row of the table (see the module doc); ``protocols`` limits the columns."""
    failed = scores.failed_mask()
    selections = _selections(scores)
    if protocols is None:
        protocols = [
            p
            for p in PROTOCOLS
            if any(
                all(available(scores, n, p, qs) for n, qs in sel.items()) for *_, sel in selections
            )
        ]
    rows = []
    for name, members, test, kind, q, sel in selections:
        train = " / ".join(describe_train_scale(scores.nets[n].train_scale) for n in members)
        row = Row(
            name=name,
            nets=[scores.nets[n].name for n in members],
            train=train,
            test=test,
            kind=kind,
            q=q,
            selection={scores.nets[n].name: list(qs) for n, qs in sel.items()},
        )
        for p in protocols:
            if all(available(scores, n, p, qs) for n, qs in sel.items()):
                row.errors[p] = errors_percent(
                    ensemble_posteriors(scores, sel, p), scores.labels, failed
                )
            else:
                row.errors[p] = None
        rows.append(row)
    return Summary(
        rows=rows,
        protocols=list(protocols),
        num_images=scores.num_images,
        failed=[(scores.paths[i], why) for i, why in sorted(scores.failed.items())],
        nets=[net.to_dict() for net in scores.nets],
        root=scores.root,
    )
