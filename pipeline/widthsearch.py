"""The search for one cell's critical width, as a pure state machine (no Ray, no I/O).

Widths lie on a ladder ``m_min * 2^(i / resolution)`` up to ``m_max``. A width *meets*
the target when at least ``ceil(target * N)`` of its ``N`` planned seeds succeed; seeds are
evaluated in chunks and a width is decided as soon as the outcome is certain (curtailed
sampling: one failure already decides a width when the target needs every seed).

Every decision is derived afresh from the outcomes so far:
- the candidate ``m*`` is the smallest evaluated width that meets the target and above which
  every evaluated width meets it (the grid's definition, on the evaluated widths);
- with no candidate, the search gallops up from the largest evaluated width;
- with one, it bisects (in ladder index, i.e. in log m) between the candidate and the
  evaluated failure below it, then confirms: the next larger width must meet the target too;
- a width that meets the target below one that fails (noise in m) gets ``extra`` seeds,
  once, at both widths, and the search goes on from what they then show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from analysis.defaults import ABOVE, BELOW, NOT_CENSORED

MEETS, FAILS, UNDECIDED, UNSEEN = "meets", "fails", "undecided", "unseen"


def ladder(m_min: int, m_max: int, resolution: int) -> tuple[int, ...]:
    """``m_min * 2^(i/resolution)``, rounded, up to ``m_max``."""
    octaves = math.log2(m_max / m_min)
    widths = [int(round(m_min * 2 ** (i / resolution))) for i in range(int(math.floor(octaves * resolution + 1e-9)) + 1)]
    return tuple(sorted(set(widths)))


@dataclass
class WidthSearch:
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    extra: tuple[int, ...]
    target: float
    chunk: int
    gallop: int  # ladder steps per step up while no width meets the target
    outcomes: dict[int, dict[int, bool]] = field(default_factory=dict)  # ladder index -> seed -> success
    requested: dict[int, set[int]] = field(default_factory=dict)  # ladder index -> seeds submitted
    escalated: set[int] = field(default_factory=set)

    def planned(self, i: int) -> tuple[int, ...]:
        return self.seeds + self.extra if i in self.escalated else self.seeds

    def status(self, i: int) -> str:
        seen = self.outcomes.get(i, {})
        plan = self.planned(i)
        need = math.ceil(self.target * len(plan) - 1e-9)
        wins = sum(seen.get(s, False) for s in plan)
        losses = sum(s in seen and not seen[s] for s in plan)
        if wins >= need:
            return MEETS
        if losses > len(plan) - need:
            return FAILS
        return UNDECIDED if seen else UNSEEN

    def record(self, i: int, results: dict[int, bool]) -> None:
        self.outcomes.setdefault(i, {}).update(results)

    def _evaluated(self) -> list[int]:
        return sorted(i for i in self.outcomes if self.status(i) in (MEETS, FAILS))

    def candidate(self) -> int | None:
        """The smallest evaluated width meeting the target with every evaluated width above it meeting it."""
        cand = None
        for i in reversed(self._evaluated()):
            if self.status(i) != MEETS:
                break
            cand = i
        return cand

    def _probe(self) -> int | None:
        """The next width to evaluate, or None when the search is over."""
        done = self._evaluated()
        cand = self.candidate()
        if cand is None:
            if done and done[-1] == len(self.widths) - 1:
                return None  # censored above: even m_max fails
            return min(done[-1] + self.gallop, len(self.widths) - 1) if done else 0
        below = [j for j in done if j < cand]
        if below and cand - below[-1] > 1:
            return (below[-1] + cand) // 2
        if not below and cand > 0:
            return 0
        if cand + 1 < len(self.widths) and cand + 1 not in done:
            return cand + 1
        return None

    def _plan(self) -> tuple[int, tuple[int, ...], frozenset[int]] | None:
        """What to submit next: (ladder index, seeds, widths to escalate); None when over or waiting."""
        if any(self._pending(i) for i in self.requested):
            return None  # one chunk in flight per cell: each answer shapes the next question
        for i in sorted(self.outcomes):
            if self.status(i) == UNDECIDED:
                return i, self._unrequested(i)[: self.chunk], frozenset()
        done = self._evaluated()
        for lo in done:
            above = [j for j in done if j > lo and self.status(j) == FAILS]
            if self.status(lo) == MEETS and above and self.extra and lo not in self.escalated:
                # noise in m: a width meeting the target below one that fails; more seeds at both
                return lo, self.extra[: self.chunk], frozenset({lo, above[0]})
        i = self._probe()
        return None if i is None else (i, self._unrequested(i)[: self.chunk], frozenset())

    def next_request(self) -> tuple[int, tuple[int, ...]] | None:
        plan = self._plan()
        if plan is None:
            return None
        i, seeds, escalate = plan
        self.escalated |= escalate
        self.requested.setdefault(i, set()).update(seeds)
        return i, seeds

    def _unrequested(self, i: int) -> tuple[int, ...]:
        return tuple(s for s in self.planned(i) if s not in self.requested.get(i, set()))

    def _pending(self, i: int) -> bool:
        return bool(self.requested.get(i, set()) - set(self.outcomes.get(i, {})))

    @property
    def done(self) -> bool:
        return self._plan() is None and not any(self._pending(i) for i in self.requested)

    def result(self) -> dict:
        """The cell's answer: ``m_star`` (None when censored), ``censored`` ('none'|'above'|'below'),
        the bracket, what was evaluated and whether the answer was confirmed above."""
        cand = self.candidate()
        done = self._evaluated()
        below = [j for j in done if cand is not None and j < cand]
        censored = ABOVE if cand is None else (BELOW if cand == 0 else NOT_CENSORED)
        confirmed = cand is not None and (cand + 1 in done or cand == len(self.widths) - 1)
        return dict(
            m_star=None if cand is None or cand == 0 else self.widths[cand],
            censored=censored,
            m_lo=self.widths[below[-1]] if below else (self.widths[done[-1]] if cand is None and done else None),
            m_hi=None if cand is None else self.widths[cand],
            widths=[self.widths[i] for i in sorted(self.outcomes)],
            rates=[sum(self.outcomes[i].values()) / len(self.outcomes[i]) for i in sorted(self.outcomes)],
            runs_used=sum(len(v) for v in self.outcomes.values()),
            escalated=[self.widths[i] for i in sorted(self.escalated)],
            confirmed=bool(confirmed),
            top_unconfirmed=cand == len(self.widths) - 1,
        )
