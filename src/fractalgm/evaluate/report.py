"""Tables (markdown) and plots of an evaluation report."""
from __future__ import annotations

from pathlib import Path


def _f(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def quality_table(rows: list[dict]) -> str:
    """One markdown row per (cfg, temperature) setting; the extractor is named in the header."""
    if not rows:
        return ""
    ext = rows[0]["extractor"]
    score = "IS" if ext == "inception-v3" else "classifier score"
    has_acc = any("class_accuracy" in r for r in rows)
    head = ["cfg", "temperature", "samples", f"FID ({ext})", score, "precision", "recall", "density", "coverage"]
    head += ["class accuracy"] if has_acc else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['cfg']:g}", f"{r['temperature']:g}", str(r["samples"]), _f(r["fid"]),
                 f"{r['is']:.3f} ± {r['is_std']:.3f}", _f(r.get("precision")), _f(r.get("recall")),
                 _f(r.get("density")), _f(r.get("coverage"))]
        if has_acc:
            acc = r.get("class_accuracy")
            cells.append("–" if acc is None else f"{acc:.1%} ± {r['class_accuracy_stderr']:.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(report: dict, path: str | Path) -> Path:
    path = Path(path)
    out = [f"# Evaluation of `{report['model']}`", ""]
    if "likelihood" in report:
        out += ["## Likelihood", "", "| kind | images | bits/dim | ± stderr | masking stderr |", "|---|---|---|---|---|"]
        for key, r in report["likelihood"].items():
            if isinstance(r, dict):
                out.append(f"| {r['kind']} | {r['images']} | {r['bpd']:.4f} | {r['stderr']:.4f} | "
                           f"{_f(r['masking_stderr'], '.4f')} |")
        out += ["", f"Split: {report['likelihood'].get('split')}; unconditional.", ""]
    out += ["## Sample quality", "", f"Reference: {report['reference']}. Extractor: `{report['extractor']}` "
            "(numbers from different extractors are not comparable).", "", quality_table(report["settings"]), ""]
    if "recommended" in report:
        r = report["recommended"]
        out += [f"Recommended (lowest FID): cfg {r['cfg']:g}, temperature {r['temperature']:g}.", ""]
    if "cost" in report:
        c = report["cost"]
        out += ["## Cost", "", "| quantity | value |", "|---|---|", f"| parameters | {c['parameters']:,} |",
                f"| training-forward GFLOPs per image (all patches) | {c['train_forward_gflops_per_image']:.3f} |",
                f"| network evaluations per sampled image | {c['network_evaluations_per_image']['total']:,} |"]
        if "train_images_per_s" in c:
            out += [f"| training images/s (batch {c['train_batch']}, fwd+bwd, {c['amp']}) | {c['train_images_per_s']:.2f} |",
                    f"| sampling images/s (batch {c['sample_batch']}) | {c['sample_images_per_s']:.3f} |",
                    f"| measured matmul peak ({c['matmul_peak_dtype']}, {c['device']}, {c['threads']} threads) | "
                    f"{c['matmul_peak_tflops']:.3f} TFLOP/s |",
                    f"| training share of that peak | {c['train_share_of_matmul_peak']:.1%} |"]
        out.append("")
    path.write_text("\n".join(out))
    return path


def plot_guidance(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """FID, IS, precision and recall against cfg, one line per temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("fid", "FID"), ("is", "IS" if rows[0]["extractor"] == "inception-v3" else "classifier score"),
               ("precision", "precision"), ("recall", "recall")]
    metrics = [(k, n) for k, n in metrics if all(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        for t in sorted({r["temperature"] for r in rows}):
            pts = sorted((r["cfg"], r[key]) for r in rows if r["temperature"] == t)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"temperature {t:g}")
        ax.set_xlabel("cfg scale")
        ax.set_title(label + (f" ({rows[0]['extractor']})" if key == "fid" else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
