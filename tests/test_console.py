"""The console: one channel to the user, rank-aware, quiet where asked."""

from __future__ import annotations

from finetune_bert.console import Progress, console


def test_results_go_to_stdout_warnings_notes_and_errors_to_stderr(capsys):
    console.say("result")
    console.note("about the input")
    console.warn("careful")
    console.error("it failed")
    out, err = capsys.readouterr()
    assert out == "result\n"
    assert err == "note: about the input\nwarning: careful\nerror: it failed\n"


def test_quiet_keeps_warnings_and_errors_and_holds_only_inside(capsys):
    with console.quiet():
        console.say("hidden")
        console.note("hidden too")
        console.warn("still said")
        console.say("said with the results", even_quiet=True)
    console.say("said again")
    out, err = capsys.readouterr()
    assert out == "said with the results\nsaid again\n" and err == "warning: still said\n"


def test_under_torchrun_rank_0_speaks_for_the_job_and_a_ranks_own_error_names_it(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    console.say("every rank meets this")
    console.warn("so rank 0 says it")
    console.error("only this rank knows")
    console.error("the job as a whole", name_rank=False)
    console.say("said by this rank too", main_process_only=False)
    out, err = capsys.readouterr()
    assert out == "said by this rank too\n"
    assert err == "error: rank 1: only this rank knows\nerror: the job as a whole\n"
    monkeypatch.setenv("RANK", "0")
    console.error("rank 0's own")
    assert capsys.readouterr().err == "error: rank 0's own\n"


def test_progress_off_a_terminal_is_a_line_every_interval_and_one_at_the_end(capsys):
    progress = Progress(10, "evaluate", every=0)
    progress.update(4)
    progress.update(6)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("evaluate: 4/10 rows (40%)") and "s left" in lines[0]
    assert lines[-1].startswith("evaluate: 10/10 rows (100%)") and len(lines) == 3
    with console.quiet():
        quiet = Progress(10, "evaluate", every=0)
        quiet.update(10)
        quiet.close()
    assert capsys.readouterr().err == ""
