"""The bench's report: its tables in markdown (docs/speed.md quotes them), ``bench.json``,
and a run in the tracking store's ``bench`` experiment. :mod:`experiments.bench` measures."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.tracking import Tracker


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table: the header, the rule, one line a row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def markdown(report: dict) -> str:
    """The tables for docs/speed.md: step time, K rates at once, tracking, memory."""
    m = report["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['threads']} threads)"
    lines = [f"Machine: {where}, torch {m['torch']}; medians of {report['repeats']} repeats.", ""]
    lines += [*_step_table(report["step"]), "", *_batch_table(report["lr_batch"])]
    if "minibatch" in report:
        lines += ["", *_minibatch_table(report["minibatch"])]
    if "sharpness" in report:
        lines += ["", *_sharpness_table(report["sharpness"])]
    if "tracking" in report:
        lines += ["", *_tracking_table(report["tracking"]), "", *_sweep_line(report["sweep"])]
    if "memory" in report:
        lines += ["", *_memory_table(report["memory"])]
    return "\n".join(lines) + "\n"


def _step_table(step: list[dict]) -> list[str]:
    timed = [k for row in step for k in row if k.endswith("_ms")]
    names = [
        k.removesuffix("_ms")
        for k in dict.fromkeys(timed)
        if "floor" not in k and "one_read" not in k
    ]
    rows = [
        [
            f"{row['m']:,} × {row['n']}",
            f"{row['two_read_floor_ms']:.3g} ms",
            *(
                f"{row[f'{name}_ms']:.3g} ms ({row[f'{name}_vs_floor']:.2f}×)"
                if f"{name}_ms" in row
                else "–"
                for name in names
            ),
            f"{row['manual_vs_one_read']:.2f}×",
            f"{row['compiled_vs_one_read']:.2f}×",
            f"{row['compile_s']:.1f} s",
            _pays_after(row["compile_pays_after_steps"]),
        ]
        for row in step
    ]
    floor = f"{step[-1]['copy_GBps']:.0f} GB/s moved at the largest size"
    header = ["m × n", "two-read floor", *names, "manual / one read", "compiled / one read"]
    return [
        *table([*header, "compile", "compile pays after"], rows),
        "",
        f"Step time (ratio to the two-read floor: one copy of X, {floor}). Compiled: "
        "`compile: true`, the manual loss and gradient through torch.compile; its first step "
        "compiles, and pays back after the steps shown (never: no faster).",
    ]


def _pays_after(steps: float) -> str:
    return "never" if steps == float("inf") else f"{steps:,.0f} steps"


def _batch_table(rows: list[dict]) -> list[str]:
    header = ["model", "what", "impl", "m × n", "K", "K at once / one", "speedup per lr"]
    return table(
        header,
        [
            [r["model"], r["what"], r["impl"], f"{r['m']:,} × {r['n']}", r["K"],
             f"{r['K_at_once_vs_one']:.2f}×", f"{r['speedup_per_lr']:.1f}×"]
            for r in rows
        ],
    )  # fmt: skip


def _minibatch_table(rows: list[dict]) -> list[str]:
    header = ["batch", "picked on the device (the loop)", "b rows of their own",
              "DataLoader", "picked / own", "DataLoader / picked"]  # fmt: skip
    lines = [
        [r["batch"], f"{r['picked_ms']:.3g} ms", f"{r['alone_ms']:.3g} ms",
         f"{r['loader_ms']:.3g} ms", f"{r['picked_vs_alone']:.2f}×",
         f"{r['loader_vs_picked']:.2f}×"]
        for r in rows
    ]  # fmt: skip
    data = f"{rows[0]['m']:,} × {rows[0]['n']}"
    return [f"A manual mini-batch step, batches of {data} (float32):", "", *table(header, lines)]


def _sharpness_table(rows: list[dict]) -> list[str]:
    header = ["model", "m × n", "K", "steps", "without", "measured", "measured / without"]
    return [
        *table(
            header,
            [
                [
                    r["model"],
                    f"{r['m']:,} × {r['n']}",
                    r["K"],
                    r["steps"],
                    f"{r['off_ms']:.4g} ms",
                    f"{r['on_ms']:.4g} ms",
                    f"{r['on_vs_off']:.2f}×",
                ]
                for r in rows
            ],
        ),
        "",
        f"A checked run of K rates with the sharpness measured every {rows[0]['every']} steps "
        f"({rows[0]['iterations']} block steps of two Hessian-vector products each, the first "
        "from random vectors) against the same run without.",
    ]


def _tracking_table(t: dict) -> list[str]:
    header = [
        "MLflow floor", "this repo, in turn", "handed to the writer (pickled)",
        "naive per-step log_metric (est.)", "ours / floor", "naive / ours", "naive / handed over",
    ]  # fmt: skip
    row = [
        f"{t['floor_ms']:.1f} ms", f"{t['ours_ms']:.1f} ms", f"{t['handover_ms']:.2f} ms",
        f"{t['naive_ms_estimated']:.0f} ms ({t['naive_ms_per_point']:.2f} ms a value)",
        f"{t['ours_vs_floor']:.2f}×", f"{t['naive_vs_ours']:.0f}×",
        f"{t['naive_vs_handover']:.0f}×",
    ]  # fmt: skip
    return [f"Tracking one run ({t['run']}):", "", *table(header, [row])]


def _sweep_line(s: dict) -> list[str]:
    share = f"{100 * s['tracking_share']:.0f}%"
    return [
        f"A whole sweep ({s['config']}, {s['runs']} runs, CPU): {s['seconds']:.1f} s, "
        f"{s['train_seconds']:.1f} s of it in the passes: tracking {share} of the wall time."
    ]


def _memory_table(rows: list[dict]) -> list[str]:
    cuda = "peak_cuda_mb" in rows[0]
    header = ["steps", "rows kept (every)", "peak RSS", "vs the first"]
    header += ["peak CUDA"] * cuda + ["every-step buffer (not held)"]
    lines = [
        [
            f"{row['steps']:,}",
            f"{row['kept_rows']:,} ({row['trajectory_every']})",
            f"{row['peak_rss_mb']:.0f} MB",
            f"{row['peak_vs_first']:.2f}×",
            *([f"{row['peak_cuda_mb']:.0f} MB"] if cuda else []),
            f"{row['every_step_buffer_mb']:,.0f} MB",
        ]
        for row in rows
    ]
    title = f"Peak memory of one 8-rate pass on synthetic {rows[0]['n']}, trained and recorded:"
    return [title, "", *table(header, lines)]


def metrics(report: dict) -> dict[str, float]:
    """The ratios a bench run records, as MLflow metrics (compare them across runs in the UI)."""
    out = {}
    for row in report["step"]:
        out[f"step/manual_vs_floor/{row['m']}x{row['n']}"] = row["manual_vs_floor"]
        out[f"step/compiled_vs_one_read/{row['m']}x{row['n']}"] = row["compiled_vs_one_read"]
    for row in report["lr_batch"]:
        what = row["what"].split()[0]
        where = f"{row['model']}/{row['impl']}/{what}/{row['m']}x{row['n']}/K{row['K']}"
        out[f"lr_batch/{where}"] = row["speedup_per_lr"]
    for row in report.get("sharpness", []):
        out[f"sharpness/on_vs_off/{row['model']}"] = row["on_vs_off"]
    for row in report.get("minibatch", []):
        out[f"minibatch/picked_vs_alone/b{row['batch']}"] = row["picked_vs_alone"]
        out[f"minibatch/loader_vs_picked/b{row['batch']}"] = row["loader_vs_picked"]
    if "tracking" in report:
        out["tracking/ours_vs_floor"] = report["tracking"]["ours_vs_floor"]
        out["tracking/naive_vs_ours"] = report["tracking"]["naive_vs_ours"]
        out["tracking/sweep_share"] = report["sweep"]["tracking_share"]
    for row in report.get("memory", []):
        out[f"memory/peak_rss_mb/{row['steps']}"] = row["peak_rss_mb"]
    return out


def write(report: dict, out: Path, tracker: Tracker | None = None) -> Path:
    """``bench.json`` and ``bench.md`` (named by device) in ``out``; a run in experiment
    ``bench`` of the tracker's store if given one."""
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if report["machine"]["device"] == "cpu" else f"-{report['machine']['device']}"
    suffix = suffix.replace(":", "")
    json_path = out / f"bench{suffix}.json"
    json_path.write_text(json.dumps(report, indent=2))
    (out / f"bench{suffix}.md").write_text(markdown(report))
    if tracker is not None:
        tracker.open()
        experiment = tracker.experiment("bench")
        name = f"bench · {report['machine']['device']}"
        run_id = tracker.start_run(experiment, name, tags={"kind": "bench"})
        params = {**report["machine"], "quick": report["quick"]}
        tracker.log(run_id, params=params, metrics=metrics(report))
        tracker.log_text(run_id, json.dumps(report, indent=2), "bench.json")
        tracker.log_text(run_id, markdown(report), "bench.md")
        tracker.finish(run_id)
    return json_path
