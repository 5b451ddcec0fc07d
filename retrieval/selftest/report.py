"""What a chaos run reports (:class:`ChaosReport`), and one child process it ran (:class:`Run`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChaosReport:
    """What a chaos run did and found. ``ok`` when nothing was lost, nothing drifted and
    no check failed."""

    seed: int
    iterations: int = 0
    kills: dict[str, int] = field(default_factory=dict)  # per operation
    kills_during_merge: int = 0  # kills that landed while the child held the merge lock
    kill_plans: dict[str, int] = field(default_factory=dict)  # early / timed / step
    finished_before_kill: int = 0  # attempts whose process was done before the kill (retried)
    documents_lost: int = 0
    drift_found: int = 0
    documents: int = 0  # documents in the store at the end
    special_cases: dict[str, str] = field(default_factory=dict)  # name -> "ok" or what failed
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    @property
    def ok(self) -> bool:
        return not self.failures and self.documents_lost == 0 and self.drift_found == 0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["total_kills"] = self.total_kills
        data["ok"] = self.ok
        return data

    def table(self) -> str:
        """A human-readable summary."""
        lines = [f"{'operation':<12} {'kills':>5}"]
        lines += [f"{op:<12} {n:>5}" for op, n in self.kills.items()]
        lines.append(f"{'total':<12} {self.total_kills:>5}")
        lines.append(f"{'during a merge':<12} {self.kills_during_merge:>5}")
        lines.append("")
        lines.append("kill moments: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kill_plans.items())))
        lines.append(f"runs finished before their kill (retried): {self.finished_before_kill}")
        lines.append(f"documents lost: {self.documents_lost}")
        lines.append(f"drift found:    {self.drift_found}")
        lines.append(f"documents at the end: {self.documents}")
        for name, result in self.special_cases.items():
            lines.append(f"special case {name:<17} {result}")
        for note in self.skipped:
            lines.append(f"skipped: {note}")
        for failure in self.failures:
            lines.append(f"FAILURE: {failure}")
        lines.append(f"{'OK' if self.ok else 'FAILED'} in {self.seconds:.0f}s (seed {self.seed})")
        return "\n".join(lines)


@dataclass
class Run:
    """One finished or killed child process."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    killed: bool
    where: str = ""  # for step kills: the step it was paused at
    merging: bool = False  # the child held the merge lock when it was killed

    def tail(self, n: int = 600) -> str:
        return (self.stderr.strip() or self.stdout.strip())[-n:]
