"""Ctrl-C never lands in the middle of a storage write (hpsearch.interrupt)."""

from __future__ import annotations

import signal
import sys
import time
import weakref

import optuna
import pytest
import sqlalchemy
import sqlalchemy.orm
import sqlalchemy.pool
from rich.console import Console

from hpsearch import interrupt
from hpsearch.config import from_dict
from hpsearch.runner import run_study
from tests.conftest import tiny_study


@pytest.fixture(autouse=True)
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    sys.unraisablehook = hook


def module_function(module: str, source: str):
    """A function whose frames report `module` as their module, as storage code's do."""
    namespace = {"__name__": module}
    exec(source, namespace)
    return namespace["call"]


STORAGE_CALL = module_function("sqlalchemy.fake_session", "def call(f):\n    return f()\n")


def wait_for_interrupt(seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.001)


def signals_inside(call, *signums: int) -> list[str]:
    """Raise `signums` inside `call`'s code, then wait outside it: the KeyboardInterrupt must come
    only after the call has finished. Returns what the code inside got to record."""
    steps: list[str] = []

    def work():
        for signum in signums:
            signal.raise_signal(signum)
        steps.append("finished")

    with pytest.raises(KeyboardInterrupt):
        call(work)
        wait_for_interrupt()
    return steps


def no_interrupt_within(seconds: float) -> None:
    # pytest stops the whole session on a KeyboardInterrupt, so one that escapes is a failure here.
    try:
        wait_for_interrupt(seconds)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt raised where none should be")


def test_storage_modules_are_recognised_by_package_not_prefix():
    def frame_in(module):
        return module_function(module, "import sys\ndef call():\n    return sys._getframe()\n")()

    assert interrupt.in_deferred_code(frame_in("sqlalchemy.orm.session"))
    assert interrupt.in_deferred_code(frame_in("optuna.storages._rdb.storage"))
    assert interrupt.in_deferred_code(frame_in("sqlite3"))
    assert not interrupt.in_deferred_code(frame_in("sqlalchemy_utils"))
    assert not interrupt.in_deferred_code(frame_in("optuna.study._optimize"))
    assert not interrupt.in_deferred_code(frame_in("hpsearch.train"))


def test_outside_storage_code_the_interrupt_is_raised_at_once():
    interrupt.install()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_inside_storage_code_the_interrupt_waits_until_the_call_returns():
    handler = interrupt.install()
    steps = []

    def write():
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.05)  # several retries come and are deferred too
        steps.append("write finished")
        return "written"

    with pytest.raises(KeyboardInterrupt):
        assert STORAGE_CALL(write) == "written"
        steps.append("returned")
        wait_for_interrupt()
    assert steps == ["write finished", "returned"] and handler.taken and not handler.pending


def test_sigterm_is_deferred_the_same_way():
    interrupt.install(sigterm=True)
    assert signals_inside(STORAGE_CALL, signal.SIGTERM) == ["finished"]


def test_a_second_ctrl_c_while_one_waits_is_absorbed_and_a_later_one_raises():
    interrupt.install(repeat="raise")
    # Pressed twice, 0 ms apart: still not inside the write.
    assert signals_inside(STORAGE_CALL, signal.SIGINT, signal.SIGINT) == ["finished"]
    no_interrupt_within(0.1)  # the absorbed one is not raised again
    with pytest.raises(KeyboardInterrupt):  # a further Ctrl-C later raises again (outside storage code)
        signal.raise_signal(signal.SIGINT)


def test_optunas_tell_is_not_cut_short_either():
    interrupt.install()
    call = module_function("optuna.study._tell", "def call(f):\n    return f()\n")
    assert signals_inside(call, signal.SIGINT) == ["finished"]


def test_an_interrupt_swallowed_by_a_weakref_callback_is_delivered_again():
    # Python prints "Exception ignored in ..." for what a weakref callback raises, and goes on.
    interrupt.install(repeat="ignore")  # as in a worker: the re-delivery is not a copy to ignore

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        del thing  # the callback runs here, and the handler raises inside it
        wait_for_interrupt()
    assert ref() is None


def test_a_worker_takes_one_interrupt_and_ignores_the_copies():
    interrupt.install(repeat="ignore")
    # The terminal's Ctrl-C and the parent's copy of it.
    assert signals_inside(STORAGE_CALL, signal.SIGINT, signal.SIGINT) == ["finished"]
    try:
        signal.raise_signal(signal.SIGINT)  # recording the trial as FAIL is not cut short
    except KeyboardInterrupt:
        pytest.fail("a worker's further signal was raised")
    no_interrupt_within(0.05)


def test_uninstall_drops_a_waiting_signal_and_puts_the_old_handlers_back():
    before = signal.getsignal(signal.SIGINT)
    handler = interrupt.install(sigterm=True)
    STORAGE_CALL(lambda: signal.raise_signal(signal.SIGINT))  # the last write of a finished run
    handler.uninstall()
    no_interrupt_within(0.1)  # the waiting one is dropped, not raised by the old handler
    assert signal.getsignal(signal.SIGINT) is before  # a caller of cli.main keeps its Ctrl-C


def test_a_worker_about_to_exit_ignores_signals():
    interrupt.install(repeat="ignore", sigterm=True)
    STORAGE_CALL(lambda: signal.raise_signal(signal.SIGINT))
    interrupt.ignore_signals()
    no_interrupt_within(0.1)
    try:  # multiprocessing's exit path would print a traceback for these
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    except KeyboardInterrupt:
        pytest.fail("a signal after ignore_signals() was raised")


def test_repeat_must_be_known():
    with pytest.raises(ValueError, match="repeat"):
        interrupt.DeferredInterrupt("twice")


# A signal raised from SQLAlchemy's own code while Optuna writes the trial's first epoch. Without
# the deferral, `after_transaction_end` leaves the session half-closed: Optuna's FAIL write then
# raises StorageInternalError and the trial keeps no "interrupted" reason (the CI failure of
# tests/test_parallel.py::test_ctrl_c_marks_the_trial_interrupted_and_rerun_resumes).
EVENTS = {
    "after_transaction_end": (sqlalchemy.orm.Session, "after_transaction_end"),
    "after_commit": (sqlalchemy.orm.Session, "after_commit"),
    "engine_commit": (sqlalchemy.engine.Engine, "commit"),
    "pool_checkin": (sqlalchemy.pool.Pool, "checkin"),
}


@pytest.mark.parametrize(
    "storage, event",
    [("sqlite", e) for e in EVENTS] + [("postgresql", "after_transaction_end")],
)
def test_ctrl_c_inside_a_storage_write_still_records_the_trial_as_interrupted(
    request, data_dir, tmp_path, storage, event
):
    url = request.getfixturevalue("pg_url") if storage == "postgresql" else f"sqlite:///{tmp_path}/s.db"
    target, name = EVENTS[event]
    epoch_written: list[bool] = []
    fired: list[bool] = []

    def after_execute(_conn, _cursor, statement, *_):
        if statement.startswith("INSERT INTO trial_intermediate_values"):
            epoch_written.append(True)

    def ctrl_c(*_args, **_kw):
        if epoch_written and not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGINT)

    raw = tiny_study(data_dir, n_trials=2, training={"max_epochs": 5, "patience": 5})
    interrupt.install()
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", after_execute)
    sqlalchemy.event.listen(target, name, ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(from_dict(raw, "i.yaml"), url, Console(quiet=True))
    finally:
        sqlalchemy.event.remove(target, name, ctrl_c)
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "after_cursor_execute", after_execute)
    assert fired
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [(t.state, t.user_attrs.get("stop_reason")) for t in trials] == [
        (optuna.trial.TrialState.FAIL, "interrupted")
    ]


def test_a_study_interrupted_while_its_provenance_is_written_gets_all_of_it_on_the_rerun(
    data_dir, tmp_path, monkeypatch
):
    """The study's config attribute is written last: its presence means the provenance is whole
    (a rerun skips writing it when the config is there)."""
    import torch

    from hpsearch.runner import open_study, prepare

    cfg = from_dict(tiny_study(data_dir), "p.yaml")
    prep = prepare(cfg, torch.device("cpu"))
    url = f"sqlite:///{tmp_path}/s.db"
    real = optuna.Study.set_user_attr

    def ctrl_c_at_versions(study, key, value):
        if key == "versions":
            raise KeyboardInterrupt
        real(study, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", ctrl_c_at_versions)
    with pytest.raises(KeyboardInterrupt):
        open_study(cfg, url, prep)
    monkeypatch.setattr(optuna.Study, "set_user_attr", real)
    study, _ = open_study(cfg, url, prep)
    attrs = optuna.load_study(study_name=cfg.name, storage=url).user_attrs
    assert {"config", "versions", "baselines_valid_mse", "valid_windows", "segments"} <= set(attrs)
