"""A suite's report: the gap between two targets with a confidence interval, a table per
evaluation, expectations checked, and plots (bars with CIs, loss curves, ablation lines)."""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from mimbench.run_dir import read_predictions
from mimbench.suites import picture
from mimbench.suites.schema import METRICS, RANDOM_INIT, Suite

CONFIDENCE = 0.95


def has_spread(values) -> bool:
    """Whether a t interval can be built: two values or more, not all equal (accuracies are
    multiples of 1/N, so seeds can tie exactly)."""
    return len(values) >= 2 and np.ptp(values) > 0


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and the 95 % Student-t interval of the mean (NaN bounds without spread)."""
    m = float(np.mean(values))
    if not has_spread(values):
        return m, math.nan, math.nan
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=m, scale=stats.sem(values))
    return m, float(low), float(high)


def by_seed(rows: list[dict], target: str, metric: str) -> dict[int, float]:
    return {r["seed"]: r["metrics"][metric] for r in rows if r["target"] == target and metric in r["metrics"]}


def paired(a: str, b: str, x: dict[int, float], y: dict[int, float], metric: str) -> dict | None:
    """x minus y over the seeds both have: mean, 95 % CI and p-value of a paired t-test; None
    when no seed is shared. a and b name x and y."""
    seeds = sorted(set(x) & set(y))
    if not seeds:
        return None
    d = np.array([x[s] - y[s] for s in seeds])
    gap = {"metric": metric, "a": a, "b": b, "n": len(seeds), "mean": float(d.mean()),
           "low": math.nan, "high": math.nan, "p": math.nan}
    if has_spread(d):
        test = stats.ttest_1samp(d, 0.0)
        ci = test.confidence_interval(CONFIDENCE)
        gap |= {"low": float(ci.low), "high": float(ci.high), "p": float(test.pvalue)}
    return gap


def paired_gap(rows: list[dict], a: str, b: str, metric: str) -> dict | None:
    """Target a minus target b over the seeds both ran (rows of one grid point)."""
    return paired(a, b, by_seed(rows, a, metric), by_seed(rows, b, metric), metric)


def grid_changes(rows: list[dict], targets, pairs, metric: str, base: dict, point: dict) -> list[dict]:
    """What moving from grid point `base` to `point` does, paired by seed: to each target's
    metric, and to each compared pair's gap (a difference of differences)."""
    at = {json.dumps(p, sort_keys=True): [r for r in rows if r["point"] == p] for p in (base, point)}
    here, there = at[json.dumps(point, sort_keys=True)], at[json.dumps(base, sort_keys=True)]
    label, base_label = point_label(point), point_label(base)
    shared = {r["target"] for r in here if r.get("shared")}  # one run at both points: no change
    changes = [paired(f"{t} at {label}", f"{t} at {base_label}", by_seed(here, t, metric),
                      by_seed(there, t, metric), metric) for t in targets if t not in shared]
    for a, b in pairs:
        gaps = []
        for rows_at in (here, there):
            x, y = by_seed(rows_at, a, metric), by_seed(rows_at, b, metric)
            gaps.append({s: x[s] - y[s] for s in set(x) & set(y)})
        changes.append(paired(f"({a} - {b}) at {label}", f"({a} - {b}) at {base_label}", *gaps, metric))
    return [c for c in changes if c]


def bar_extent(values: list[float]) -> tuple[float, float, float]:
    """(mean, extent below, extent above) of a bar: the 95% CI clipped to a percentage's range,
    0..100 (no interval without spread)."""
    m, low, high = mean_ci(values)
    if math.isnan(low):
        return m, 0.0, 0.0
    return m, m - max(low, 0.0), min(high, 100.0) - m


def short_label(point: dict) -> str:
    """A grid point as short key=value text for a plot's axis: 'ratio=0.3, layer=2'."""
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) or "default"


def point_label(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "the default"


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest of m is
    multiplied by m - i + 1, and no adjusted value is below a smaller p's. A p that could not be
    computed (NaN: no spread) counts in m as 1."""
    p = [1.0 if math.isnan(v) else v for v in p_values]
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(sorted(range(len(p)), key=p.__getitem__)):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def predictions_by_seed(rows: list[dict], target: str, evaluation: str) -> dict[int, tuple]:
    """seed -> (predicted [N], labels [N]) of `target`'s runs that saved them."""
    saved = {r["seed"]: read_predictions(Path(r["folder"]), evaluation) for r in rows if r["target"] == target}
    return {seed: p for seed, p in saved.items() if p is not None}


def bootstrap_gap(a: dict[int, tuple], b: dict[int, tuple], samples: int = 2000, seed: int = 0):
    """The 95 % percentile interval of a's minus b's top-1 (points) when both the seeds (kept
    in pairs) and the evaluation images (the same ones for a and b) are resampled; None without
    two shared seeds or with different labels (another split)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2 or any(not np.array_equal(a[s][1], b[s][1]) for s in seeds):
        return None
    d = np.stack([(a[s][0] == a[s][1]).astype(np.float64) - (b[s][0] == b[s][1]) for s in seeds])  # [S, N]
    n_seeds, n_images = d.shape
    rng = np.random.default_rng(seed)
    gaps = []
    for chunk in np.array_split(np.arange(samples), max(1, samples // 250)):
        images = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=len(chunk))  # [B, N] counts
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=len(chunk))  # [B, S]
        gaps.append(((d @ images.T).T * seed_counts).sum(1) / (n_seeds * n_images) * 100)
    return tuple(np.percentile(np.concatenate(gaps), [2.5, 97.5]).tolist())


def primary_family(suite: Suite, rows: list[dict]) -> list[dict]:
    """The suite's primary claims ("a above b on metric", at the default grid point), each a
    paired gap with its Holm-adjusted p over the family and whether the claim holds; for a
    top-1 whose runs saved per-image predictions, also a bootstrap interval over seeds and images."""
    at = [r for r in rows if not r["point"]]
    gaps = [paired_gap(at, a, b, metric) or {"metric": metric, "a": a, "b": b, "n": 0, "mean": math.nan,
                                             "low": math.nan, "high": math.nan, "p": math.nan}
            for a, b, metric in suite.primary]
    saved = functools.cache(lambda target, evaluation: predictions_by_seed(at, target, evaluation))  # read once
    for gap, adjusted in zip(gaps, holm([g["p"] for g in gaps])):
        evaluation, _, measure = gap["metric"].partition(".")
        interval = bootstrap_gap(saved(gap["a"], evaluation), saved(gap["b"], evaluation)) if measure == "top1" else None
        gap |= {"p_holm": adjusted, "holds": bool(adjusted < 1 - CONFIDENCE and gap["mean"] > 0),
                "bootstrap": interval}
    return gaps


def primary_lines(family: list[dict]) -> list[str]:
    lines = [f"## Primary family: {len(family)} claims, Holm's correction", "",
             "Each claim is 'a above b'; it holds when the mean gap is positive and its paired "
             "t-test's p, adjusted by Holm over the family, is below 0.05.", "",
             "The bootstrap interval resamples seeds and evaluation images together (from the "
             "per-image predictions; top-1 metrics only).", "",
             "| claim | metric | gap | 95% CI (t) | bootstrap 95% CI | n | p | Holm p | holds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in family:
        interval = "-" if math.isnan(g["low"]) else f"{g['low']:+.1f}..{g['high']:+.1f}"
        boot = "-" if g["bootstrap"] is None else f"{g['bootstrap'][0]:+.1f}..{g['bootstrap'][1]:+.1f}"
        lines.append(f"| {g['a']} > {g['b']} | {g['metric']} | {g['mean']:+.1f} | {interval} | {boot} | "
                     f"{g['n']} | {g['p']:.3g} | {g['p_holm']:.3g} | {'yes' if g['holds'] else 'no'} |")
    held = sum(g["holds"] for g in family)
    return lines + ["", f"{held} of {len(family)} claims hold.", ""]


def describe_gap(gap: dict) -> str:
    text = f"{gap['a']} vs {gap['b']}: {gap['mean']:+.1f} {gap['metric']}"
    if gap["n"] < 2:
        return text + f" (n = {gap['n']} seed: too few for a confidence interval)"
    if math.isnan(gap["low"]):
        return text + (f" (the same difference on each of {gap['n']} seeds: no spread to build "
                       f"a confidence interval from)")
    verdict = ("the difference is significant" if gap["low"] > 0 or gap["high"] < 0 else
               "the interval includes 0: no difference shown")
    return (text + f" (95% CI {gap['low']:+.1f}..{gap['high']:+.1f}, paired t-test over "
                   f"{gap['n']} seeds, p = {gap['p']:.3g}; {verdict})")


def groups(rows: list[dict], metric: str) -> dict[tuple, list[float]]:
    """(target, grid point) -> the metric over seeds."""
    out = defaultdict(list)
    for r in rows:
        if metric in r["metrics"]:
            out[(r["target"], json.dumps(r["point"], sort_keys=True))].append(r["metrics"][metric])
    return out


def ordering(rows: list[dict], metric: str) -> str:
    """The targets ranked by their mean over seeds at the default grid point, as measured."""
    means = {target: np.mean(values) for (target, point), values in groups(rows, metric).items()
             if point == "{}"}
    ranked = sorted(means, key=means.get, reverse=True)
    if len(ranked) < 2:
        return ""  # an ablation suite: its line plot shows the order
    return "Ordering by mean: " + " > ".join(f"{t} ({means[t]:.2f})" for t in ranked) + "."


def write_report(suite: Suite, rows: list[dict], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    family = primary_family(suite, rows)
    (out / "results.json").write_text(json.dumps({"suite": suite.name, "runs": rows, "primary": family},
                                                 indent=2))
    measured = {m for r in rows for m in r["metrics"]}
    metrics = [m for e in suite.evals for m in METRICS[e] if m in measured]
    lines = [f"# Suite `{suite.name}`", "", suite.description.strip(), ""]
    points = list({json.dumps(r["point"], sort_keys=True): r["point"] for r in rows}.values())
    if family:
        lines += primary_lines(family) + (["## Other comparisons (uncorrected p)", ""] if suite.compare else [])
    if suite.compare:
        for point in points:
            if len(points) > 1:
                lines += [f"At {point_label(point)}:", ""]
            at = [r for r in rows if r["point"] == point]
            for metric in metrics:
                for pair in suite.compare:
                    gap = paired_gap(at, *pair, metric)
                    if gap:
                        lines.append(f"**{describe_gap(gap)}**  ")
            lines.append("")
    if len(points) > 1:
        gaps = ", then the change of each compared gap" if suite.compare else ""
        lines += ["## What the grid changes", "",
                  f"Each grid point against {point_label(points[0])}, paired by seed: each "
                  f"target's own change{gaps}.", ""]
        for point in points[1:]:
            for metric in metrics:
                for change in grid_changes(rows, suite.targets, suite.compare, metric, points[0], point):
                    lines.append(f"- {describe_gap(change)}")
            lines.append("")
    for metric in metrics:
        lines += [f"## {metric}", "", "| target | grid point | mean +- std | 95% CI | n |",
                  "|---|---|---|---|---|"]
        for (target, point), values in groups(rows, metric).items():
            m, low, high = mean_ci(values)
            spread = f"{m:.2f} +- {np.std(values, ddof=1):.2f}" if len(values) > 1 else f"{m:.2f}"
            interval = "-" if math.isnan(low) else f"{low:.2f}..{high:.2f}"
            lines.append(f"| {target} | {point if point != '{}' else '-'} | {spread} | {interval} | "
                         f"{len(values)} |")
        ranking = ordering(rows, metric)
        lines += ["", ranking, ""] if ranking else [""]
    if suite.expect:
        lines += ["## Expectations", "", "| target | metric | expected | measured | within tolerance |",
                  "|---|---|---|---|---|"]
        for e in suite.expect:
            values = [r["metrics"][e.metric] for r in rows if r["target"] == e.target and e.metric in r["metrics"]]
            measured = f"{np.mean(values):.2f}" if values else "not run"
            ok = ("yes" if abs(np.mean(values) - e.value) <= e.tolerance else "no") if values else "-"
            lines.append(f"| {e.target} | {e.metric} | {e.value} +- {e.tolerance} | {measured} | {ok} |")
        lines.append("")
    plots = make_plots(suite, rows, metrics, out)
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def make_plots(suite: Suite, rows: list[dict], metrics: list[str], out: Path) -> list[Path]:
    """The report's figures: a bar chart per metric, the loss curves, example pictures and,
    for a one-key grid, a curve per target along that key."""
    import matplotlib

    matplotlib.use("Agg")
    for old in out.glob("*.png"):  # an earlier report's figures: none may outlive its data
        old.unlink()
    written = [bars(suite, rows, metric, out) for metric in metrics]
    written.append(loss_curves(rows, out))
    written.append(block_curves(rows, out))
    examples = {}
    for r in rows:
        if r["target"] not in examples and r["loss_curve"] and not r["point"]:
            drawn = picture.example(Path(r["folder"]))
            if drawn is not None:
                examples[r["target"]] = drawn
    if examples:
        written.append(save(picture.draw(examples), out / "examples.png"))
    if isinstance(suite.grid, dict) and len(suite.grid) == 1:
        written += [ablation(suite, rows, metric, out) for metric in metrics]
    return [path for path in written if path]


def bars(suite: Suite, rows: list[dict], metric: str, out: Path) -> Path | None:
    """Mean and 95% CI per target (and grid point), each seed a dot, the floor a dashed line."""
    import matplotlib.pyplot as plt

    data = groups([r for r in rows if not r["point"]] or rows, metric)
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(data)), 3.8))
    for x, ((target, point), values) in enumerate(data.items()):
        m, below, above = bar_extent(values)
        ax.bar(x, m, yerr=[[below], [above]], capsize=4, color="tab:blue", alpha=0.75)
        ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)  # each seed
    floor = [np.mean(v) for (t, p), v in data.items() if t == RANDOM_INIT]
    if floor:
        ax.axhline(floor[0], color="tab:red", linestyle="--", linewidth=1, label="random-init floor")
        ax.legend(fontsize=7, loc="upper right")
    labels = [target if point == "{}" else f"{target}\n{short_label(json.loads(point))}"
              for target, point in data]
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 5 else 0,
                  ha="right" if len(labels) > 5 else "center", fontsize=8)
    ax.set_ylim(0, min(100.0, max(max(v) for v in data.values()) * 1.15 + 1))
    ax.set_ylabel(f"{metric}, % (bar: mean, 95% CI; dots: seeds)", fontsize=8)
    ax.set_title(f"{suite.name}: {metric}", fontsize=9)
    return save(fig, out / f"bars_{metric.replace('.', '_')}.png")


def loss_curves(rows: list[dict], out: Path) -> Path | None:
    """Each target's pre-training loss against the step, one panel per target (each loss has
    its own scale), a line per run."""
    import matplotlib.pyplot as plt

    curves = defaultdict(list)
    for r in rows:
        if r["loss_curve"]:
            curves[r["target"]].append(r)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3), squeeze=False)
    for ax, (target, runs) in zip(axes[0], curves.items()):
        for r in runs:
            steps, losses = zip(*r["loss_curve"])
            ax.plot(steps, losses, label=r["id"].removeprefix(f"{target}-"), linewidth=1)
        ax.set_title(target)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("pre-training loss")
    return save(fig, out / "loss_curves.png")


def per_block(rows: list[dict]) -> dict[str, list[float]]:
    """target -> the linear probe's mean top-1 over seeds at each block (linear.block=all runs
    at the default grid point)."""
    curves = defaultdict(list)
    for r in rows:
        blocks = sorted((int(m.rsplit("block", 1)[1]), v) for m, v in r["metrics"].items()
                        if m.startswith("linear_probe.top1_block"))
        if blocks and not r["point"]:
            curves[r["target"]].append([v for _, v in blocks])
    return {t: np.mean(runs, axis=0).tolist() for t, runs in curves.items()}


def block_curves(rows: list[dict], out: Path) -> Path | None:
    """The linear probe's top-1 against the block it reads, one line per target."""
    import matplotlib.pyplot as plt

    curves = per_block(rows)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for target, curve in curves.items():
        ax.plot(range(len(curve)), curve, marker="o", label=target)
    ax.set_xlabel("block (0 = first)")
    ax.set_ylabel("linear probe top-1 (%), mean over seeds")
    ax.legend(fontsize=7)
    return save(fig, out / "per_block_linear_probe.png")


def ablation(suite: Suite, rows: list[dict], metric: str, out: Path) -> Path:
    """A one-key grid: each target's mean and 95% CI at each value of the key."""
    import matplotlib.pyplot as plt

    key = next(iter(suite.grid))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for target in suite.targets:
        xs, ms, es = [], [], []
        for value in suite.grid[key]:
            values = [r["metrics"][metric] for r in rows if r["target"] == target
                      and r["point"].get(key) == value and metric in r["metrics"]]
            if values:
                m, low, _ = mean_ci(values)
                xs.append(str(value))
                ms.append(m)
                es.append(0 if math.isnan(low) else m - low)
        if xs:
            ax.errorbar(xs, ms, yerr=es, marker="o", capsize=3, label=target)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.legend()
    return save(fig, out / f"ablation_{metric.replace('.', '_')}.png")


def save(fig, path: Path) -> Path:
    """Write a figure (110 dpi) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
