"""The `mimbench` command. The only module that prints, and the only one that imports rich."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mimbench import __version__
from mimbench import config as cfg
from mimbench.allocator import keep_freed_memory
from mimbench.errors import Interrupted, MimbenchError

STARTED = time.perf_counter()  # when the command started (imports aside)
console = Console(stderr=True)
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class Group(click.Group):
    """Turns MimbenchError into one line on stderr and exit code 2 (traceback with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MimbenchError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            console.print(f"[bold red]error:[/] {sentence(e)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except OSError as e:  # a folder that cannot be written: one sentence, not a traceback
            if ctx.obj and ctx.obj.get("debug") or e.errno not in UNWRITABLE:
                raise
            console.print(f"[bold red]error:[/] cannot write '{e.filename}' ({e.strerror}); choose "
                          f"a writable --out, or set MIMBENCH_HOME to a writable folder for the "
                          f"teacher cache.", highlight=False, soft_wrap=True)
            sys.exit(2)


def sentence(error: MimbenchError) -> str:
    """The error's own sentence; one raised in a DataLoader worker arrives wrapped by torch in
    'Caught ... Original Traceback ...', whose last line is that sentence."""
    text = str(error)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


@click.group(cls=Group)
@click.version_option(__version__, prog_name="mimbench")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--quiet", is_flag=True, help="No progress output (results and errors still print).")
@click.option("--log-every-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="When stderr is not a terminal, a progress line per task this often.")
@click.pass_context
def main(ctx, debug, quiet, log_every_s):
    """mimbench: masked image modeling with swappable targets."""
    ctx.obj = {"debug": debug, "quiet": quiet, "log_every_s": log_every_s}
    keep_freed_memory()  # every command's tensors: mimbench/allocator.py
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def config_options(f):
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override one config key, e.g. --set optim.lr=1e-3 (repeatable).")(f)
    f = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="A YAML file of config sections.")(f)
    f = click.option("--preset", default="tiny", show_default=True,
                     help=f"Base preset: {', '.join(cfg.PRESETS)}.")(f)
    f = click.option("--target", default=None, help="Target name (sets target.name).")(f)
    f = click.option("--out", type=click.Path(file_okay=False),
                     help="Run directory (default: runs/<target>-<time>).")(f)
    f = click.option("--resume", type=click.Path(file_okay=False),
                     help="Continue the run in this directory from its last checkpoint.")(f)
    f = click.option("--overwrite", is_flag=True,
                     help="Start afresh in --out, removing the run already there.")(f)
    f = data_option(f)
    return f


def data_option(f):
    return click.option("--data", type=click.Path(file_okay=False, exists=True),
                        help="Your labelled images: a folder with train/ and val/, each holding one "
                             "sub-folder per class (ImageNet's layout). Pre-training reads train/, "
                             "the evaluations both; segmentation, which needs label maps, is left "
                             "out unless run.evals is set.")(f)


def data_overrides(data: str | None, overrides: tuple[str, ...]) -> tuple[str, ...]:
    """--data PATH as the --set overrides it stands for, before the user's own (which win)."""
    if data is None:
        return tuple(overrides)
    root = Path(data)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise MimbenchError(f"--data {data} needs {split}/ inside it, with one sub-folder of "
                                f"images per class.")
    train, val = (json.dumps(str((root / split).resolve())) for split in ("train", "val"))
    implied = ["data.name=folder", f"data.root={train}", "eval_data.name=folder",
               f"eval_data.train={{root: {train}}}", f"eval_data.val={{root: {val}}}"]
    if not any(o.startswith("run.evals=") for o in overrides):
        implied.append("run.evals=[linear, knn, finetune]")
    return (*implied, *overrides)


@contextlib.contextmanager
def training(target, preset, config_file, overrides, out, resume, overwrite=False, data=None,
             command="pretrain"):
    """Resolve the run's config, take its directory and pre-train; yields (run, config,
    results) with the directory still held (rank 0), so that `run`'s evaluations follow under
    the same lock, taken before anything in the directory was read."""
    from mimbench import run_lock

    if resume:
        if target or config_file or overrides or out or overwrite or data:
            raise MimbenchError("--resume continues a run with its saved config; drop --target, "
                                "--config, --set, --data, --out and --overwrite.")
        path, config = resume, None
    else:
        config = cfg.resolve(preset, config_file, target, data_overrides(data, overrides))
        path = out or f"runs/{config.target.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with run_lock.holding(path) if is_main_process() else contextlib.nullcontext():
        from mimbench.engine import pretrain  # torch and the models: once the config holds
        from mimbench.run_dir import RunDir, open_run

        # rank 0 alone checks and clears the directory; the other ranks only read it
        run = (open_run(path, resume=bool(resume), config=config, overwrite=overwrite)
               if is_main_process() else RunDir(path))
        config = config or cfg.from_dict(cfg.load_yaml(run.config))
        say(f"run directory: [bold]{run.path}[/]  target: [bold]{config.target.name}[/]")
        with reporter() as report:
            try:
                results = pretrain(config, run, report, say)
            except Interrupted as e:  # the hint names the command that was interrupted
                raise Interrupted(str(e).replace("mimbench pretrain --resume",
                                                 f"mimbench {command} --resume")) from None
        yield run, config, results


def is_main_process() -> bool:
    """False in every torchrun process but rank 0, which alone prints and evaluates."""
    return os.environ.get("RANK", "0") == "0"


def say(message: str) -> None:
    if is_main_process():
        console.print(message, highlight=False, soft_wrap=True)


class ProgressBars:
    """One rich bar per task name (teacher builds, pre-training, evaluations): step, the loss
    and img/s where the task reports them, elapsed time and ETA. With keep_finished False a
    bar goes when its task ends (a suite's runs would otherwise pile up bars)."""

    def __init__(self, keep_finished: bool = True):
        self.keep_finished = keep_finished
        self.bars = Progress(TextColumn("{task.description:<14}"), BarColumn(),
                             TextColumn("step {task.completed}/{task.total}"),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(), console=console)
        self.tasks: dict[str, int] = {}  # task name -> rich task id
        self.ips: dict[str, float] = {}
        self.steps: dict[str, int] = {}

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bars.__exit__(*exc)

    def __call__(self, name: str, step: int, total: int, metrics: dict) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(name, total=total, info="")
        if "img_per_s" in metrics:  # logged every few steps: the last one stays shown
            self.ips[name] = metrics["img_per_s"]
        info = [f"loss {metrics['loss']:.4f}" if "loss" in metrics else "",
                f"{self.ips[name]:5.0f} img/s" if name in self.ips else ""]
        self.bars.update(self.tasks[name], completed=step, total=total, info="  ".join(filter(None, info)))
        if step >= total and not self.keep_finished:
            self.bars.remove_task(self.tasks.pop(name))
            self.ips.pop(name, None)


class PlainLines:
    """For a log file (SLURM, nohup, CI): one plain line per task every `every_s` seconds, and
    at its last step: step/total, loss and img/s where reported, elapsed time and ETA."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.started: dict[str, float] = {}
        self.printed: dict[str, float] = {}
        self.ips: dict[str, float] = {}
        self.steps: dict[str, int] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, name: str, step: int, total: int, metrics: dict) -> None:
        now = time.monotonic()
        if step < self.steps.get(name, 0):  # a new task of this name whose last step went unreported
            self.forget(name)
        self.steps[name] = step
        start = self.started.setdefault(name, now)
        if "img_per_s" in metrics:
            self.ips[name] = metrics["img_per_s"]
        if step < total and now - self.printed.get(name, start) < self.every_s:
            return
        self.printed[name] = now
        elapsed = now - start
        eta = elapsed / step * (total - step) if step else float("nan")
        parts = [f"{name} {step}/{total}",
                 f"loss {metrics['loss']:.4f}" if "loss" in metrics else "",
                 f"{self.ips[name]:.0f} img/s" if name in self.ips else "",
                 f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta)}"]
        if is_main_process():
            click.echo("  ".join(filter(None, parts)), err=True)
        if step >= total:  # the next task of this name (a suite's next run) starts its own clock
            self.forget(name)

    def forget(self, name: str) -> None:
        for seen in (self.started, self.printed, self.ips, self.steps):
            seen.pop(name, None)


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: no step done yet
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def reporter(keep_finished: bool = True):
    """Progress for long work: rich bars on a terminal (finished ones kept or not), plain timed
    lines otherwise, nothing with --quiet."""
    settings = click.get_current_context().find_root().obj or {}
    if settings.get("quiet"):
        return contextlib.nullcontext(None)
    if console.is_terminal:
        return ProgressBars(keep_finished)
    return PlainLines(settings.get("log_every_s", 30.0))


def print_results(run, results: dict) -> None:
    if not is_main_process():
        return
    table = Table(title=f"results: {run.path}")
    table.add_column("what")
    table.add_column("value", justify="right")
    pre = results.get("pretrain", {})
    if pre:
        table.add_row("target", results["target"]["name"])
        table.add_row("pre-training steps", str(pre["steps"]))
        table.add_row(f"final loss ({pre['loss']})", f"{pre['final_loss']:.4f}")
        table.add_row("pre-training wall time", f"{pre['wall_time_s']:.1f} s")
    evals = results.get("evals", {})
    for name, ev in evals.items():
        for key, value in ev.items():
            if isinstance(value, float):
                chance = ev.get("card", {}).get("chance")
                note = f" (chance {chance:.1f})" if chance else ""
                if ev.get("partial"):
                    note += f" PARTIAL: {ev['partial']}"
                table.add_row(f"{name}.{key}", f"{value:.2f}{note}")
    # the whole command: start-up, teacher builds and evaluations included
    table.add_row("this command's wall time", f"{time.perf_counter() - STARTED:.1f} s")
    Console().print(table)


@main.command()
@config_options
def pretrain(target, preset, config_file, overrides, out, resume, overwrite, data):
    """Pre-train a student with a target; writes a run directory."""
    with training(target, preset, config_file, overrides, out, resume, overwrite, data) as (run, _, results):
        print_results(run, results)


@main.command()
@config_options
def run(target, preset, config_file, overrides, out, resume, overwrite, data):
    """Pre-train, then run the evaluations in run.evals; prints a results table."""
    from mimbench.evals import run_evals

    with training(target, preset, config_file, overrides, out, resume, overwrite, data,
                  command="run") as trained:
        run_dir, config, results = trained
        if config.run.evals and is_main_process():  # evaluations run in rank 0 only
            with reporter() as report:
                from mimbench.model_source import ModelSource

                results = run_evals(config.run.evals, config, ModelSource.parse(run_dir.path),
                                    run_dir.path, report, config.run.preset)  # a resumed run's own preset
    print_results(run_dir, results)


@main.command("eval")
@click.argument("evaluation", type=click.Choice(["linear", "knn", "attentive", "seg_linear", "finetune",
                                                "segmentation"]))
@click.option("--checkpoint", "checkpoint_path", type=click.Path(exists=True),
              help="A run directory or checkpoint file to evaluate.")
@click.option("--model", help="Or a timm model: timm:<name>, timm:random (the student's shape, random "
              "init); or target:<name>, that target's own network (frozen in the probes; "
              "fine-tuning and segmentation train a copy of a CLIP ResNet tower).")
@click.option("--preset", default=None,
              help="Preset for data and protocol settings (default: a run's own saved config, "
                   "else tiny).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Where results.json goes (default: RUN/evals/<evaluation>-<config hash> for a "
                   "run directory, so the run's own results.json is never replaced).")
@click.option("--partial", is_flag=True,
              help="Evaluate a run that stopped before its last pre-training step (its results say so).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="A YAML file of config sections, applied over the run's saved config or the preset.")
@data_option
def evaluate(evaluation, checkpoint_path, model, preset, overrides, out, partial, config_file, data):
    """Evaluate a checkpoint or a timm model with one protocol; writes results.json.

    A run directory or checkpoint is evaluated with the config it was trained with (student,
    evaluation data and protocols) unless --preset or --set say otherwise."""
    if bool(checkpoint_path) == bool(model):
        raise MimbenchError("give exactly one of --checkpoint and --model.")
    from mimbench.run_dir import RunDir
    from mimbench.evals import run_evals
    from mimbench.evals.backbone import saved_config, saved_student
    from mimbench.model_source import ModelSource

    source = ModelSource.parse(checkpoint_path or model)
    target = source.name if source.kind == "target" else None
    saved = saved_config(source) if checkpoint_path else None
    # exactly the evaluation asked (a folder without label maps is fine for a probe), then
    # --data's keys, then the user's --set
    overrides = data_overrides(data, (f"run.evals=[{evaluation}]", *overrides))
    if saved is not None and preset is None:
        config = cfg.resolve(config_file=config_file, overrides=tuple(overrides), saved=saved)
    else:  # a preset's config; a checkpoint under another preset keeps the shape it was trained at
        student = checkpoint_path and saved_student(source)
        config = cfg.resolve(preset or "tiny", config_file, target, tuple(overrides),
                             settings={"student": student} if student else None)
    if out is None and source.kind == "run":
        digest = hashlib.sha256(json.dumps(cfg.to_dict(config), sort_keys=True).encode()).hexdigest()
        out = Path(source.name) / "evals" / f"{evaluation}-{digest[:8]}"
    out = Path(out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    with reporter() as report:
        results = run_evals([evaluation], config, source, out, report,
                            config.run.preset, partial=partial)
    print_results(RunDir(out), results)


@main.command("export")
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write config.json and model.safetensors to.")
def export_command(checkpoint_path, out):
    """Write the student of a run directory or checkpoint as a timm model folder
    (load it with timm.create_model("local-dir:OUT", pretrained=True))."""
    from mimbench.export import export

    folder = export(checkpoint_path, out)
    say(f"exported to [bold]{folder}[/]: timm.create_model(\"local-dir:{folder}\", pretrained=True)")


@main.command("bench")
@click.option("--target", default="clip", show_default=True, help="Target name.")
@click.option("--preset", default="tiny", show_default=True, help=f"Preset: {', '.join(cfg.PRESETS)}.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key.")
@click.option("--batch", type=int, help="Images per step (default: the preset's batch).")
@click.option("--repeats", default=5, show_default=True, help="Timed steps of each kind.")
def bench_command(target, preset, overrides, batch, repeats):
    """Time a pre-training step against the bare computation it must do, on this machine."""
    from mimbench.bench import bench

    config = cfg.resolve(preset, target=target, overrides=tuple(overrides))
    f = bench(config, repeats=repeats, batch_size=batch)
    from mimbench.distributed import resolve_device
    from mimbench.suites.estimate import save_rate

    if resolve_device(config.run.device).type == "cpu":  # the rate suite dry runs plan with
        save_rate(f["achieved_flops"], f"measured by mimbench bench --preset {preset} --target {target}",
                  preset)
    table = Table(title=f"{preset} / {target}: batch {f['batch']}, median of {f['repeats']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [("mimbench step", f"{f['step_s'] * 1e3:,.1f} ms"),
            ("bare reference step", f"{f['bare_s'] * 1e3:,.1f} ms"),
            ("ratio (step / bare)", f"{f['ratio']:.3f}"),
            ("images/s", f"{f['images_per_s']:,.1f}"),
            ("FLOPs per step", f"{f['flops'] / 1e9:,.1f} G"),
            ("achieved", f"{f['achieved_flops'] / 1e9:,.1f} GFLOP/s"),
            ("matmul peak (measured)", f"{f['peak_flops'] / 1e9:,.1f} GFLOP/s"),
            ("fraction of peak", f"{f['fraction_of_peak']:.0%}"),
            ("masks for a batch", f"{f['masks_s'] * 1e3:,.1f} ms ({f['masks_fraction']:.1%} of a step)"),
            ("views + masks for a batch", f"{f['data_s'] * 1e3:,.1f} ms ({f['data_fraction']:.1%} of a step)")]
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@main.group()
def suite():
    """Run grids of targets x seeds x ablations and report the gap with confidence intervals."""


@suite.command("list")
def suite_list():
    """The suites shipped with mimbench."""
    from mimbench.suites import schema

    for name in schema.shipped():
        loaded = schema.load(name)
        click.echo(f"{name}: {len(loaded.runs())} runs; {' '.join(loaded.description.split())}")


@suite.command("run")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False),
              help="Suite folder (default: suites-out/<name>); run again to continue it.")
@click.option("--dry-run", is_flag=True, help="Print the runs and the compute estimate, run nothing.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs trained at once, each in its own process with a share of the CPU threads.")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default=None,
              help="Submit each run as a job through submitit: slurm (one SLURM job per run), or "
              "local (submitit's local executor, to try that path here). Without it, runs go on "
              "this machine, --jobs at a time.")
@click.option("--slurm-partition", help="SLURM partition of the jobs.")
@click.option("--gpus-per-run", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--cpus-per-run", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--mem-gb", type=click.IntRange(min=1), help="Memory per job.")
@click.option("--timeout-min", type=click.IntRange(min=1), default=24 * 60, show_default=True,
              help="Wall-time limit of each job; an interrupted run resumes from its checkpoint "
              "when the suite is run again.")
@click.option("--preset", default=None, help="Run every run on this preset instead of the suite's "
              "(e.g. smoke, to try a suite small first); the suite is then named NAME-PRESET.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Add section.key=value to the suite's set: for every run (repeatable).")
def suite_run(name, out, dry_run, jobs, executor, slurm_partition, gpus_per_run, cpus_per_run,
              mem_gb, timeout_min, preset, overrides):
    """Run suite NAME (a shipped name or a .yaml path): what is not finished yet, then
    report.md, results.json and PNG plots."""
    from mimbench.suites import schema

    loaded = schema.load(name, preset, tuple(overrides))
    runs = loaded.runs()
    folder = Path(out or f"suites-out/{loaded.name}")
    if dry_run:
        print_estimate(loaded, runs, folder, jobs)
        return
    from mimbench.suites.report import write_report
    from mimbench.suites.runner import Cluster, run_suite

    cluster = executor and Cluster(executor, slurm_partition, gpus_per_run, cpus_per_run, mem_gb,
                                   timeout_min)
    say(f"suite [bold]{loaded.name}[/]: {len(runs)} runs in {folder}")
    with reporter(keep_finished=False) as report:  # a suite's finished runs leave no bars
        rows = run_suite(loaded, folder, report, say, jobs, cluster)
    path = write_report(loaded, rows, folder)
    say(f"report: [bold]{path}[/]")
    click.echo(path.read_text().split("## ")[0].strip())


def print_estimate(loaded, runs, folder: Path, jobs: int) -> None:
    """The runs and what the ones not yet finished in `folder` will cost with `jobs` at once
    (a finished run is read back, not redone)."""
    from mimbench.suites.estimate import estimate
    from mimbench.suites.runner import is_finished
    from mimbench.suites.schema import with_run_folders

    finished = {spec.id for spec in runs
                if is_finished(with_run_folders(spec, folder / "runs"), folder / "runs" / spec.id)}
    left = [spec for spec in runs if spec.id not in finished]
    figures = estimate(left, loaded.preset, jobs) if left else {"runs": []}  # nothing to time: answer at once
    cost = {spec.id: row for spec, row in zip(left, figures["runs"])}
    title = f"suite {loaded.name}: {len(runs)} runs" + (f", {len(finished)} finished in {folder}" if finished else "")
    table = Table(title=f"{title} (dry run)")
    for column in ("run", "target", "seed", "grid point", "images", "TFLOPs"):
        table.add_column(column)
    for spec in runs:
        row = cost.get(spec.id)
        table.add_row(spec.id, spec.target, str(spec.seed), json.dumps(spec.point) if spec.point else "-",
                      f"{row['images']:,}" if row else "finished", f"{row['flops'] / 1e12:,.1f}" if row else "-")
    Console().print(table)
    if not left:
        click.echo(f"every run is finished in {folder}: nothing left to run; `suite run` writes the report.")
        return
    click.echo(f"total{' of the runs left' if finished else ''}: {figures['total_flops'] / 1e15:,.2f} "
               f"PFLOPs ({figures['counted']}).")
    if figures["teachers_to_build"]:
        click.echo(f"teachers to build first: {', '.join(figures['teachers_to_build'])} "
                   f"({figures['teacher_build_time']} one after another, each as measured at one thread beside "
                   f"another job on 2 CPU cores).")
    bench_threads = f"OMP_NUM_THREADS={figures['threads_per_job']} " if jobs > 1 else ""
    threads = figures["threads_per_job"]
    at_once = (f"--jobs {jobs} ({threads} thread{'s' if threads > 1 else ''} each)" if jobs > 1
               else "one run at a time")
    click.echo(f"this machine, {at_once}: {figures['cpu_time']}, teacher builds included "
               f"(at {figures['cpu_rate'] / 1e9:,.0f} GFLOP/s a run, {figures['cpu_rate_source']}; "
               f"`{bench_threads}mimbench bench --preset {loaded.preset}` "
               f"measures it alone; set-up included, {figures['overhead_s']:,.0f} s over all runs); "
               f"{figures['gpu']}: {figures['gpu_time']} of GPU time.")
    notes = sorted({row["data"] for row in figures["runs"]} - {"measured"})
    if notes:
        click.echo(f"dataset sizes: {'; '.join(notes)}.")


@main.group()
def teachers():
    """Build and inspect the tiny teachers trained in-project on the world."""


@teachers.command("build")
@click.argument("name")
@click.option("--rebuild", is_flag=True, help="Train again even if a cached teacher exists.")
def teachers_build(name, rebuild):
    """Train teacher NAME (clip, dvae, vqkd, or their -smoke versions) unless cached; print its
    quality."""
    from mimbench import teachers as registry

    with reporter() as report:
        folder, quality = registry.ensure(name, report, rebuild=rebuild)
    table = Table(title=f"teacher {name}: {folder}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in quality.items():
        if isinstance(value, (int, float)):
            table.add_row(key, f"{value:.4g}")
    Console().print(table)


@main.group()
def targets():
    """Inspect the registered targets."""


@targets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def targets_list(as_json):
    """Every registered target: source, kind and options, read from the registry and the
    factory's signature; nothing is built or downloaded."""
    from mimbench.targets import TARGETS
    from mimbench.targets.source import RUN_CONTEXT

    rows = []
    for entry in TARGETS.entries():
        doc = (entry.factory.__doc__ or "").strip().splitlines()
        options = {name: (None if p.default is inspect.Parameter.empty else p.default)
                   for name, p in inspect.signature(entry.factory).parameters.items()
                   if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name not in RUN_CONTEXT}
        rows.append({"name": entry.name, "source": entry.source, "kind": getattr(entry.factory, "kind", None),
                     "options": options, "description": doc[0] if doc else ""})
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=repr))
        return
    table = Table(title="targets (--set target.OPTION=VALUE; a feature target on another grid "
                        "than the student's is resampled to it)")
    for column in ("name", "source", "kind", "options (defaults)", "description"):
        table.add_column(column)
    for row in rows:
        options = ", ".join(f"{k}={v!r}" for k, v in row["options"].items())
        table.add_row(row["name"], row["source"], row["kind"] or "-", options, row["description"])
    Console().print(table)


if __name__ == "__main__":
    main()
