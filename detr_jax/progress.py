"""Progress bars for jitted loops: rate and ETA leave out the steps that compile.

A plain tqdm bar divides the items done by the time elapsed, so the first step of a jitted
loop (seconds to minutes of XLA compilation) makes the first ETAs wildly long. A
:class:`Progress` bar shows ``compiling`` in its postfix while a step that compiles runs,
and computes its rate (and so its ETA) from the steps that did not compile only; the
elapsed time it shows stays the wall time.

Use::

    bar = Progress(total=num_steps, initial=start, desc="train")
    for batch in batches:
        bar.begin(shape_key)          # optional: a new key marks a step that compiles
        run(batch)
        bar.update(1)                 # or update(n, compiled=flag) when the caller knows
        with bar.paused():            # time that is no step's (e.g. an evaluation)
            evaluate()

Without :meth:`begin`, the first step after construction counts as compiling.
"""

from __future__ import annotations

import contextlib
import time

from tqdm import tqdm


class Progress(tqdm):
    """tqdm bar whose rate/ETA start after the first completed (non-compiling) step and
    which shows ``compiling`` while a compiling step runs. Takes tqdm's arguments, plus
    ``clock`` (a seconds counter, for tests)."""

    def __init__(self, *args, clock=time.perf_counter, **kwargs):
        # set before tqdm.__init__, which may already display the bar
        self._clock = clock
        self._timed_n = 0        # items of steps that did not compile
        self._timed_s = 0.0      # seconds those steps took
        self._steps = 0
        self._keys: set = set()
        self._compiling = True   # the first step compiles unless begin() says otherwise
        self._user_postfix: dict = {}
        self._mark = clock()
        kwargs.setdefault("postfix", "compiling")  # shown from the very first display
        super().__init__(*args, **kwargs)
        self._show_postfix(refresh=True)

    # ------------------------------------------------------------------ step bookkeeping

    def begin(self, key=None) -> None:
        """Announce a step. It compiles when ``key`` (e.g. the input shapes) was not seen
        before, or, with no key, when it is the first step; the bar then says so."""
        if key is None:
            expected = self._steps == 0
        else:
            expected = key not in self._keys
            self._keys.add(key)
        if expected != self._compiling:
            self._compiling = expected
            self._show_postfix(refresh=True)

    def update(self, n=1, compiled: bool | None = None):
        """Finish a step of ``n`` items. ``compiled`` says whether it compiled (default:
        what :meth:`begin` expected); a compiling step's time is left out of the rate."""
        now = self._clock()
        if not (self._compiling if compiled is None else compiled):
            self._timed_n += n
            self._timed_s += now - self._mark
        self._mark = now
        self._steps += 1
        if self._compiling:
            self._compiling = False
            self._show_postfix(refresh=False)
        return super().update(n)

    @contextlib.contextmanager
    def paused(self):
        """Leave the time spent inside (e.g. a mid-training evaluation or a checkpoint
        save between steps) out of the rate."""
        start = self._clock()
        try:
            yield
        finally:
            self._mark += self._clock() - start

    @property
    def timed_rate(self) -> float | None:
        """Items per second over the steps that did not compile (None before any)."""
        if self._timed_n > 0 and self._timed_s > 0:
            return self._timed_n / self._timed_s
        return None

    # ------------------------------------------------------------------------ display

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        """As tqdm's, keeping the ``compiling`` mark in front while a step compiles."""
        self._user_postfix = dict(ordered_dict or {}, **kwargs)
        self._show_postfix(refresh=refresh)

    def _show_postfix(self, refresh: bool) -> None:
        parts = ["compiling"] if self._compiling else []
        parts += [f"{k}={v}" for k, v in self._user_postfix.items()]
        super().set_postfix_str(", ".join(parts), refresh=refresh)

    @property
    def format_dict(self):
        values = super().format_dict
        rate = self.timed_rate
        values["rate"] = rate
        if rate is None:  # no timed step yet: tqdm would average over the compile; say "?"
            values["initial"] = values.get("n", 0)
        return values
