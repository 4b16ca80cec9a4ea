"""Run a suite: every run not finished yet, in order; finished runs are read back, not redone."""

from __future__ import annotations

import functools
import importlib.util
import json
import multiprocessing
import queue
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from mimbench import config as cfg, run_lock
from mimbench.engine import pretrain
from mimbench.run_dir import RunDir
from mimbench.errors import ConfigError, Interrupted
from mimbench.evals import RESULT_NAMES, run_evals
from mimbench.model_source import ModelSource
from mimbench.suites.ceiling import train_supervised
from mimbench.suites.schema import SUPERVISED, RunSpec, Suite, with_run_folders

RESULTS = "results.json"


def missing_evals(spec: RunSpec, results: dict) -> list[str]:
    done = results.get("evals", {})
    return [e for e in spec.config.run.evals if RESULT_NAMES[e] not in done]


def changed(spec: RunSpec, folder: Path) -> list[str]:
    """The config keys in which the run saved in `folder` differs from `spec`'s ([] if none
    was saved there yet): a run whose suite was edited since."""
    saved = RunDir(folder).saved_config()
    return cfg.differing_keys(saved, spec.config) if saved is not None else []


def is_finished(spec: RunSpec, folder: Path) -> bool:
    results = _read(folder / RESULTS)
    return (not changed(spec, folder) and (not spec.pretrains or "pretrain" in results)
            and not missing_evals(spec, results))


def run_one(spec: RunSpec, folder: Path, preset: str, progress=None) -> dict:
    """Pre-train (resuming a checkpoint left by an interrupted suite of the same config) and
    evaluate what is missing; returns the run's results.json. A run saved under another config
    (the suite was edited) is removed and run afresh: one table never mixes two configs."""
    with run_lock.holding(folder):  # before anything there is read, for the whole run
        return _run_one(spec, folder, preset, progress)


def _run_one(spec: RunSpec, folder: Path, preset: str, progress) -> dict:
    run = RunDir(folder)
    if changed(spec, folder):
        run.clear()
    if not run.config.exists():  # every row records its config, reference rows included
        folder.mkdir(parents=True, exist_ok=True)
        run.config.write_text(cfg.dump_yaml(spec.config))
    results = _read(folder / RESULTS)
    if spec.pretrains and "pretrain" not in results:
        train = train_supervised if spec.target == SUPERVISED else pretrain
        results = train(spec.config, RunDir(folder), progress)
    missing = missing_evals(spec, results)
    if missing:
        source = ModelSource.parse(spec.source or str(folder))
        results = run_evals(missing, spec.config, source, folder, progress, preset)
    return results


_PROGRESS: multiprocessing.Queue | None = None  # in a --jobs worker: where its progress goes
_STOP = None  # in a --jobs worker: set by the suite's process once the user asked it to stop
_STOPPED = False  # in a --jobs worker: Ctrl-C stopped one of its runs


def _start_worker(threads: int, progress: multiprocessing.Queue, stop, on_ctrl_c) -> None:
    """A --jobs worker, started with Ctrl-C ignored (a Ctrl-C while it imports would end it
    with a traceback); from here on, Ctrl-C is handled as in the suite's process."""
    global _PROGRESS, _STOP
    signal.signal(signal.SIGINT, on_ctrl_c)
    torch.set_num_threads(threads)
    # progress lines are disposable: a worker that exits (after Ctrl-C, while the suite's
    # process no longer reads them) must not wait to flush them into a full pipe
    progress.cancel_join_thread()
    _PROGRESS, _STOP = progress, stop


def _run_in_worker(spec: RunSpec, folder: Path, preset: str, progress) -> dict:
    """run_one in a --jobs worker, which takes no new run once the suite was asked to stop
    (a worker hands over the runs queued to it one by one: without this it would go on), nor
    once Ctrl-C stopped a run of its own (it may take the next run before the suite's process
    has set the stop event)."""
    global _STOPPED
    if _STOP.is_set() or _STOPPED:
        raise Interrupted(f"{spec.id} not started: the suite was asked to stop.")
    try:
        return run_one(spec, folder, preset, progress)
    except (Interrupted, KeyboardInterrupt):
        _STOPPED = True
        raise


def _relay(run_id: str, task: str, step: int, total: int, metrics: dict) -> None:
    """A worker's progress, sent to the suite's process, which shows it."""
    _PROGRESS.put((f"{run_id} {task}", step, total, metrics))


def row(spec: RunSpec, folder: Path, results: dict, base: cfg.Config) -> dict:
    """One line of the suite's results.json: what differs from the preset, and every metric."""
    metrics = {}
    for name, result in results.get("evals", {}).items():
        for key, value in result.items():
            if isinstance(value, float):
                metrics[f"{name}.{key}"] = value
    curve = []
    if (folder / "metrics.jsonl").exists():
        curve = [(r["step"], r["loss"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]
    return {"id": spec.id, "target": spec.target, "seed": spec.seed, "point": spec.point,
            "config_diff": cfg.diff(spec.config, base), "metrics": metrics,
            "pretrain": results.get("pretrain", {}).get("wall_time_s"), "loss_curve": curve,
            "folder": str(folder)}


@dataclass(frozen=True)
class Cluster:
    """Runs as batch jobs through submitit: `slurm`, or `local` (submitit's own local executor:
    the same job path on this machine). One job per run, one process each."""

    executor: str = "slurm"
    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int = 8
    mem_gb: int | None = None
    timeout_min: int = 24 * 60

    def executor_for(self, folder: Path):
        if importlib.util.find_spec("submitit") is None:
            raise ConfigError(f"--executor {self.executor} needs the submitit package: "
                              f"pip install 'mimbench[slurm]'.")
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm" if self.executor == "slurm" else "local")
        params = {"name": "mimbench", "timeout_min": self.timeout_min, "tasks_per_node": 1,
                  "gpus_per_node": self.gpus_per_run, "cpus_per_task": self.cpus_per_run}
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(**params)
        return executor


def run_suite(suite: Suite, out: Path, progress=None, notify=None, jobs: int = 1,
              cluster: Cluster | None = None) -> list[dict]:
    """All runs of `suite` under out/runs/<id>; returns one row per run. With jobs > 1,
    that many runs train at once in their own processes, sharing this machine's threads;
    with a cluster, each run is a job (its logs under out/submitit) and this call waits for
    them all, then the report is written."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [with_run_folders(spec, out / "runs") for spec in suite.runs()]
    folders = [out / "runs" / spec.id for spec in runs]
    todo = [i for i, (spec, folder) in enumerate(zip(runs, folders)) if not is_finished(spec, folder)]
    for i in todo:
        keys = changed(runs[i], folders[i])
        if keys and notify:
            notify(f"{runs[i].id}: saved under another config ({', '.join(keys[:4])}"
                   f"{' ...' if len(keys) > 4 else ''}); running it afresh")
    tally = Tally([spec.id for spec in runs], progress, notify)
    for i in range(len(runs)):
        if i not in todo:
            tally.finished(i, reused=True)
    if cluster and todo:
        executor = cluster.executor_for(out / "submitit")
        for wave in waves(runs, todo):  # a run whose target loads another run's student: a later wave
            _on_cluster(executor, runs, folders, wave, suite.preset, tally, notify)
    elif jobs == 1:
        for i in todo:
            if notify:
                notify(f"running {runs[i].id}")
            run_one(runs[i], folders[i], suite.preset, progress)
            tally.finished(i, reused=False)
    elif todo:
        # seed by seed, so that runs of different targets (and teachers) train side by side
        todo.sort(key=lambda i: suite.seeds.index(runs[i].seed))
        _in_processes(jobs, runs, folders, todo, suite.preset, tally, progress)
    base = cfg.resolve(suite.preset)
    rows = []
    for spec, folder in zip(runs, folders):  # a shared reference run: one row at each of its points
        one = row(spec, folder, _read(folder / RESULTS), base)
        rows += [{**one, "point": point, "shared": len(spec.points) > 1} for point in spec.points]
    return rows


class Tally:
    """Counts finished runs and says so: '[3/12] clip-s1', and the suite's progress bar."""

    def __init__(self, ids: list[str], progress=None, notify=None):
        self.ids, self.progress, self.notify, self.done = ids, progress, notify, 0

    def finished(self, i: int, reused: bool) -> None:
        self.done += 1
        if self.notify:
            self.notify(f"[{self.done}/{len(self.ids)}] {self.ids[i]}" + (": finished earlier, reused" if reused else ""))
        if self.progress:
            self.progress("suite", self.done, len(self.ids), {})


def ready(runs: list[RunSpec], waiting: list[int], unfinished: set[str]) -> list[int]:
    """The waiting runs none of whose loaded runs ({run:ROW}) is unfinished."""
    return [i for i in waiting if not unfinished & set(runs[i].after)]


def waves(runs: list[RunSpec], todo: list[int]) -> list[list[int]]:
    """`todo` in waves: each run after the wave holding the runs it loads."""
    unfinished, left, out = {runs[i].id for i in todo}, list(todo), []
    while left:
        out.append(ready(runs, left, unfinished))
        left = [i for i in left if i not in out[-1]]
        unfinished -= {runs[i].id for i in out[-1]}
    return out


def _on_cluster(executor, runs, folders, todo, preset, tally: Tally, notify) -> None:
    """Each run a submitit job; waits for them all. A failed job stops the suite with its
    error; finished runs are kept."""
    import submitit

    submitted = {}
    for i in todo:
        job = executor.submit(run_one, runs[i], folders[i], preset)
        submitted[job] = i
        if notify:
            notify(f"submitted {runs[i].id} as job {job.job_id}")
    for job in submitit.helpers.as_completed(list(submitted)):
        job.result()
        tally.finished(submitted[job], reused=False)


def threads_per_job(jobs: int) -> int:
    """The threads each of `jobs` runs at once gets: this machine's, shared out."""
    return max(1, torch.get_num_threads() // jobs)


def _in_processes(jobs: int, runs, folders, todo, preset, tally: Tally, progress) -> None:
    """`jobs` runs at once, each in a spawned process with this machine's threads shared out.
    A failed run stops the suite (finished ones are kept); Ctrl-C stops it, the running runs
    checkpointed, and no worker starts another."""
    threads = threads_per_job(jobs)
    context = multiprocessing.get_context("spawn")
    updates = context.Queue()  # the workers' progress: (task, step, total, metrics)
    stop = context.Event()
    on_ctrl_c = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN in a background job
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                               initargs=(threads, updates, stop, on_ctrl_c))
    waiting = list(todo)  # in order; a run is started once the runs it loads have finished
    unfinished = {runs[i].id for i in todo}
    pending = {}
    try:
        while waiting or pending:
            for i in ready(runs, waiting, unfinished):
                waiting.remove(i)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a worker spawned now inherits it ...
                try:
                    pending[pool.submit(_run_in_worker, runs[i], folders[i], preset,
                                        functools.partial(_relay, runs[i].id))] = i
                finally:
                    signal.signal(signal.SIGINT, on_ctrl_c)  # ... and this process handles Ctrl-C again
            ended, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            _show(updates, progress)
            for future in ended:
                future.result()
                i = pending.pop(future)
                unfinished.discard(runs[i].id)
                tally.finished(i, reused=False)
    except (KeyboardInterrupt, Interrupted):
        # Ctrl-C reaches the whole process group: the running runs checkpoint and stop by
        # themselves
        stop.set()
        pool.shutdown(cancel_futures=True)
        raise Interrupted("the suite stopped: its running runs saved a checkpoint and no "
                          "other run was started; run the same command again to continue.") from None
    finally:
        stop.set()
        pool.shutdown(cancel_futures=True)


def _show(updates: multiprocessing.Queue, progress) -> None:
    """Pass on what the workers reported since the last call."""
    while True:
        try:
            update = updates.get_nowait()
        except queue.Empty:
            return
        if progress:
            progress(*update)


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
