"""When retraining happens by itself: a cron expression like "0 3 * * *", or an interval like "6h", "30m", "90s",
"1d" (the settings check it; training/scheduler.py acts on it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Schedule:
    text: str

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Raises ValueError saying what is accepted."""
        match = _INTERVAL.match(text)
        if match:
            if float(match[1]) <= 0:
                raise ValueError("an interval must be positive")
            return cls(text.strip())
        if croniter.is_valid(text):
            return cls(text.strip())
        raise ValueError('must be a cron expression like "0 3 * * *" or an interval like 6h, 30m, 90s or 1d')

    def next_after(self, moment: datetime) -> datetime:
        """The first tick after `moment` (an aware datetime): intervals count from `moment`."""
        match = _INTERVAL.match(self.text)
        if match:
            return moment + timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        next_tick: datetime = croniter(self.text, moment).get_next(datetime)
        return next_tick
