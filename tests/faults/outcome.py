"""The record of one injected fault: expected outcome or not, data lost or not, what was shown."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FaultRow:
    """One kind of fault, injected ``injected`` times; the row of the results table.

    ``survived`` counts the injections whose outcome was the expected one (a retry that came
    through, or one clear error naming the cause, or a rerun that restored the outputs);
    ``data_lost`` counts those that lost or corrupted data, or silently returned a partial result.
    ``failures`` says, for each injection that did not survive, what happened instead.
    """

    fault: str
    what_the_user_sees: str
    injected: int = 0
    survived: int = 0
    data_lost: int = 0
    failures: list[str] = field(default_factory=list)

    def record(self, survived: bool, data_lost: bool = False, why: str = "") -> None:
        """Count one injection and its outcome."""
        self.injected += 1
        self.survived += int(survived)
        self.data_lost += int(data_lost)
        if not survived or data_lost:
            self.failures.append(why or "unexpected outcome")

    def as_json(self) -> dict:
        return {
            "fault": self.fault,
            "injected": self.injected,
            "survived": self.survived,
            "data_lost": self.data_lost,
            "what_the_user_sees": self.what_the_user_sees,
            "failures": self.failures,
        }
