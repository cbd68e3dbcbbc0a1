"""Progress bars: 'compiling' while a step compiles; rate and ETA from the other steps."""

import io

from detr_jax.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _bar(total=10, **kwargs):
    clock = Clock()
    out = io.StringIO()
    bar = Progress(total=total, file=out, clock=clock, mininterval=0, ascii=True, **kwargs)
    bar.out = out
    return bar, clock


def test_first_step_is_compiling_and_left_out_of_the_rate():
    bar, clock = _bar()
    assert "compiling" in bar.out.getvalue()   # from the very first line written
    assert "compiling" in str(bar)
    clock.now += 120.0                  # the first step compiles for two minutes
    bar.update(1)
    assert "compiling" not in str(bar)
    assert bar.timed_rate is None
    assert bar.format_dict["rate"] is None and "?" in str(bar)   # no ETA yet, not 20 minutes
    for _ in range(3):
        clock.now += 2.0
        bar.update(1)
    assert bar.timed_rate == 0.5        # 3 items in 6 s: the compile is not counted
    assert bar.format_dict["rate"] == 0.5
    assert "00:12" in str(bar)          # ETA: 6 items left at 0.5 items/s
    bar.close()


def test_new_keys_mark_compiling_steps_and_explicit_flags_win():
    bar, clock = _bar(total=100, unit="img")
    bar.begin(("shape", 32, 32))
    assert "compiling" in str(bar)
    clock.now += 50.0
    bar.update(4)
    bar.begin(("shape", 32, 32))        # seen: runs at speed
    assert "compiling" not in str(bar)
    clock.now += 1.0
    bar.update(4)
    bar.begin(("shape", 64, 32))        # a new shape compiles again
    assert "compiling" in str(bar)
    clock.now += 30.0
    bar.update(4)
    bar.begin(("shape", 64, 32))
    clock.now += 3.0
    bar.update(4, compiled=True)        # the caller knows better (e.g. a recompilation)
    bar.begin(("shape", 64, 32))
    clock.now += 1.0
    bar.update(4)
    assert bar.timed_rate == 4.0        # 8 items in 2 s
    assert bar.n == 20
    bar.close()


def test_postfix_keeps_compiling_mark_and_user_fields():
    bar, clock = _bar()
    bar.set_postfix(loss="1.234")
    assert "compiling, loss=1.234" in str(bar)
    clock.now += 5.0
    bar.update(1)
    assert "loss=1.234" in str(bar) and "compiling" not in str(bar)
    bar.close()


def test_initial_counts_from_a_resume_and_disabled_bar_works():
    bar, clock = _bar(total=10, initial=6)
    clock.now += 60.0
    bar.update(1)
    clock.now += 1.0
    bar.update(1)
    assert bar.n == 8 and bar.timed_rate == 1.0
    assert "00:02" in str(bar)          # 2 steps left at 1 step/s
    bar.close()
    quiet, clock = _bar(disable=True)
    quiet.set_postfix(a=1)
    clock.now += 1.0
    quiet.update(1)
    quiet.close()


def test_paused_time_is_left_out_of_the_rate():
    bar, clock = _bar(total=10)
    clock.now += 30.0
    bar.update(1)
    clock.now += 1.0
    bar.update(1)
    with bar.paused():                  # e.g. an evaluation between two steps
        clock.now += 100.0
    clock.now += 1.0
    bar.update(1)
    assert bar.timed_rate == 1.0
    bar.close()
