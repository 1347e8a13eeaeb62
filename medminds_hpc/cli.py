"""The `medminds` command. Every command is a few lines delegating to a plain function the tests call.

    medminds list
    medminds submit expert-task --dataset micro --model tiny
    medminds status
"""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, List, Optional

import typer

from medminds_hpc.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reproduce and beat 'Medical Minds Unite' on a Slurm cluster.")


@functools.cache
def console(stderr: bool = False) -> "Console":
    """rich, imported on first use: `status` never needs it."""
    from rich.console import Console

    return Console(stderr=stderr)


def fail(message: str) -> None:
    from rich.markup import escape

    console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


WATCH_DEFAULT = 2.0


def optional_value(argv: list[str], option: str, default: str) -> list[str]:
    """`--watch` alone means `--watch 2`: the parser wants a value after an option that takes one."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == option and (i + 1 == len(out) or not _is_number(out[i + 1])):
            out.insert(i + 1, default)
            break
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main() -> None:
    sys.argv = optional_value(sys.argv, "--watch", f"{WATCH_DEFAULT:g}")
    try:
        app(standalone_mode=True)
    except UserError as e:
        fail(str(e))


@app.command("list")
def list_cmd(
    experiment: Optional[str] = typer.Argument(None, help="one experiment: every parameter with its default and help, resources per size"),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="cluster profile for the resources (default: $MEDMINDS_CLUSTER or unity)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Every experiment in jobs/: its stage, what it needs, and resources per dataset size."""
    import shutil

    from medminds_hpc import clusters, listing

    try:
        profile = clusters.load_profile(cluster)
        data = listing.detail(experiment, profile) if experiment else listing.overview(profile)
    except UserError as e:
        return fail(str(e))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    width = shutil.get_terminal_size().columns
    print(listing.render_detail(data, width) if experiment else listing.render_overview(data, profile, width))


@app.command()
def submit(
    experiment: str = typer.Argument(..., help="experiment name (see `medminds list`), or `all`: every experiment of the study"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="micro | mini | mega"),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="cluster profile in slurm/ (default: $MEDMINDS_CLUSTER or unity)"),
    executor: Optional[str] = typer.Option(None, "--executor", help="slurm | local | debug (default: slurm when sbatch is on PATH)"),
    model: Optional[str] = typer.Option(None, "--model", help="model name or local path (e.g. tiny)"),
    override: List[str] = typer.Option([], "-o", "--override", help="key=value for a stage parameter, or resources.KEY=value"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the sbatch script and resolved config; submit nothing"),
    force: bool = typer.Option(False, "--force", help="start this experiment's run afresh even if it exists"),
    wait: Optional[bool] = typer.Option(None, "--wait/--no-wait", help="wait for the jobs (default: yes for local/debug)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="all: seeds 0..N-1 of every seeded stage, one job array per experiment"),
    only: List[str] = typer.Option([], "--only", help="all: only experiments matching this shell pattern (and what they need)"),
    skip: List[str] = typer.Option([], "--skip", help="all: leave out experiments matching this shell pattern"),
) -> None:
    """Submit an experiment (and whatever it needs that is not finished yet), or `all`: the whole study as one graph."""
    from medminds_hpc import submit as submit_mod

    say = lambda s: console().print(s, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    try:
        if experiment == "all":
            from medminds_hpc import study

            if force:
                raise UserError("--force goes with one experiment: `medminds submit NAME --force` (submit all reuses finished runs)")
            study.run_study(study.StudyOptions(dataset, seeds, list(only), list(skip), cluster, executor, model, list(override),
                                               dry_run, wait), say=say)
            return
        if seeds is not None or only or skip:
            raise UserError("--seeds, --only and --skip go with `medminds submit all`; for one experiment use -o seed=N")
        opts = submit_mod.SubmitOptions(dataset, cluster, executor, model, list(override), dry_run, force, wait)
        submit_mod.submit(experiment, opts, say=say)
    except UserError as e:
        fail(str(e))
    except (submit_mod.Interrupted, KeyboardInterrupt) as e:  # Ctrl-C: where things stand, not a traceback
        console(stderr=True).print(str(e) or "interrupted; nothing was submitted", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(130) from None


@app.command()
def prepare(
    dataset: str = typer.Option(..., "--dataset", "-d", help="micro | mini | mega"),
    source: str = typer.Option("hub", "--source", help="hub | synthetic | PATH (a file, or a folder laid out like shared/data)"),
    split: str = typer.Option("stratified", "--split", help="first (the paper's first N rows) | stratified (by subject)"),
    seed: int = typer.Option(0, "--seed"),
    cop_base: Optional[int] = typer.Option(None, "--cop-base", help="MedMCQA answer convention of an ambiguous file: 0 or 1"),
    bad_rows: str = typer.Option("strict", "--bad-rows", help="strict (fail) | skip (drop and count)"),
    instruct: str = typer.Option("mistral-instruct", "--instruct", help="domain data, comma-separated: mistral-instruct, wikidoc, medquad"),
    force: bool = typer.Option(False, "--force", help="rebuild even if up to date"),
) -> None:
    """Read, validate and split the data here (not as a job) into the folder its `prepare` run uses.

    `medminds submit X -o prepare.source=...` with the same options then finds the data ready (a check of the
    inputs' sha256, not a rebuild). Run it on a login node to fetch and cache the Hub data once.
    """
    from medminds_hpc import config, experiments, paths
    from medminds_hpc.stages import prepare as prepare_stage

    try:
        paths.check_home()
        experiments.check_dataset(dataset)
        cfg = config.build(prepare_stage.Config, {"source": source, "split": split, "seed": seed, "cop_base": cop_base,
                                                  "bad_rows": bad_rows, "force": force,
                                                  "instruct": [s.strip() for s in instruct.split(",") if s.strip()]}, "medminds prepare")
        from medminds_hpc.data.card import card_table
        from medminds_hpc.data.prepare import prepare as run_prepare
        from medminds_hpc.data.validate import CLI_SKIP_FLAG

        out_dir = paths.prepared_dir(prepare_stage.run_id_for(dataset, cfg))
        card = run_prepare(dataset, source=cfg.source, split=cfg.split, seed=cfg.seed, cop_base=cfg.cop_base, bad_rows=cfg.bad_rows,
                           instruct_sources=cfg.instruct, force=cfg.force, out_dir=out_dir, skip_flag=CLI_SKIP_FLAG,
                           say=lambda m: console().print(m, highlight=False, markup=False))
    except UserError as e:
        return fail(str(e))
    console().print(card_table(card))


@app.command()
def status(
    run: List[str] = typer.Argument(None, help="run ids (default: every run)"),
    state: Optional[str] = typer.Option(None, "--state", help="only runs in these states, comma-separated, any case (e.g. running,pending)"),
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="only runs of experiments matching this glob (e.g. 'expert-*')"),
    watch: Optional[float] = typer.Option(None, "--watch", metavar="[SECONDS]", help=f"redraw every SECONDS (default and minimum {WATCH_DEFAULT:g}) until Ctrl-C"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """One table of every run: state, job, elapsed, GPU-hours, progress, and its stage's headline metric."""
    from medminds_hpc import runs, status as status_mod

    try:
        query = status_mod.Query(list(run or []), experiment, status_mod.parse_states(state) if state else None)
        if watch is not None:
            if as_json:
                raise UserError("--watch redraws a table for people; --json is for programs: use one of them")
            status_mod.check_interval(watch)
            title = f"runs in {runs.paths.runs_dir()}  (every {watch:g} s, Ctrl-C to stop)"
            unchanged: dict = {}  # run.json files read at the last refresh

            def frame(max_rows: Optional[int]) -> str:
                import time

                ans = status_mod.answer(query, unchanged)
                heading = f"{time.strftime('%H:%M:%S')}  {title}"
                text = status_mod.render(ans, query, heading, max_rows)
                text = f"{heading}\n{text}" if status_mod.no_runs_yet(ans, query) else text
                text += f"\n{ans.problems[0]} (and {len(ans.problems) - 1} more)" if ans.problems else ""
                return text + (f"\nSlurm did not answer ({ans.unanswered}): states as last recorded" if ans.unanswered else "")

            return status_mod.watch(frame, watch, sys.stdout)
        ans = status_mod.answer(query)
    except UserError as e:
        return fail(str(e))
    if as_json:
        print(json.dumps([r.as_json() for r in ans.rows], indent=2))
        if not ans.rows and query.filters():
            print(f"no run matches {query.filters()} ({ans.total} runs in {runs.paths.runs_dir()})", file=sys.stderr)
        elif status_mod.no_runs_yet(ans, query):
            print(status_mod.no_runs_yet(ans, query), file=sys.stderr)
    else:
        print(status_mod.render(ans, query, f"runs in {runs.paths.runs_dir()}"))
    if ans.problems:
        fail(ans.problems[0] + (f" (and {len(ans.problems) - 1} more unreadable runs)" if len(ans.problems) > 1 else ""))
    if ans.unanswered:  # the table stands, from run.json and sacct; the scheduler's live view is missing
        print(f"error: Slurm did not answer ({ans.unanswered}): states shown as last recorded; "
              "check `squeue` and try again", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def report(
    out: Optional[str] = typer.Option(None, "--out", help="folder to write into (default: $MEDMINDS_HOME/results)"),
    formats: Optional[str] = typer.Option(None, "--format", help="comma-separated: md, csv, tex, html, png (default: all)"),
) -> None:
    """Tables and figures of every finished run beside the paper's numbers: accuracy, significance, per subject."""
    import shutil

    from medminds_hpc import report as report_mod

    try:
        print(report_mod.terminal_summary(report_mod.write_report(out, formats), shutil.get_terminal_size().columns))
    except UserError as e:
        fail(str(e))


@app.command()
def demo() -> None:
    """The study in miniature here (tiny model, synthetic data, local executor; minutes on 2 cores), then the report."""
    import shutil

    from medminds_hpc import demo as demo_mod, submit as submit_mod

    try:
        demo_mod.run_demo(say=lambda s: print(s, flush=True), width=shutil.get_terminal_size().columns)
    except UserError as e:
        fail(str(e))
    except (submit_mod.Interrupted, KeyboardInterrupt) as e:
        console(stderr=True).print(str(e) or "interrupted", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(130) from None


@app.command()
def logs(run: str = typer.Argument(..., help="run id (or a unique prefix)"), follow: bool = typer.Option(False, "-f", "--follow", help="keep printing as the log grows")) -> None:
    """Print the log of a run's latest job."""
    from medminds_hpc import control

    try:
        control.print_logs(run, follow, out=sys.stdout)
    except UserError as e:
        fail(str(e))


@app.command()
def cancel(run: List[str] = typer.Argument(..., help="run ids to cancel")) -> None:
    """Cancel every live job of runs (Slurm: scancel; local: SIGINT, SIGTERM, then SIGKILL until it is gone)."""
    from medminds_hpc import control

    try:
        for r in run:
            console().print(control.cancel(r), highlight=False)
    except UserError as e:
        fail(str(e))


@app.command()
def doctor(
    cluster: Optional[str] = typer.Option(None, "--cluster", help="cluster profile (default: $MEDMINDS_CLUSTER or unity)"),
    executor: Optional[str] = typer.Option(None, "--executor", help="slurm | local | debug"),
    gpu: List[str] = typer.Option([], "--gpu", help="only these GPU types (default: every type in the profile)"),
) -> None:
    """Submit a short job to each GPU type of the cluster and print what it found."""
    from medminds_hpc import control

    try:
        control.doctor(cluster, executor, list(gpu), say=lambda s: console().print(s, highlight=False, markup=False, soft_wrap=True))
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
