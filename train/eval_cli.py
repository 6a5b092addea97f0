"""`edgessl eval knn|linear|fewshot|openset`: evaluate a checkpoint's frozen features.

Each kind prints one line (or one JSON object with --json); `--report DIR` also writes PNGs:
the training loss curve, a 2-D projection of the embeddings coloured by class, and per kind
the k-NN accuracy over the run's checkpoints or the few-shot confusion matrix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgessl.edge_runtime.fewshot.cohort import COHORT_IMAGES


def _common(p: argparse.ArgumentParser, per_class_default: int | None, per_class_help: str) -> None:
    p.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    p.add_argument("--per-class", type=int, default=per_class_default, help=per_class_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-weights", action="store_true",
                   help="evaluate the same architecture with untrained weights (the baseline)")
    p.add_argument("--report", type=Path, metavar="DIR", help="also write PNG figures into DIR")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    k = sub.add_parser("knn", help="weighted k-NN classification (k=200, T=0.1) on frozen features",
                       description="Labels of --test from the k most similar --train features, each voting "
                       "with weight exp(cos/T) (Wu et al. 2018, as in DINO). Features are cached in RUN/features/.")
    _common(k, None, "images per class of each folder (default: all)")
    k.add_argument("--train", type=Path, required=True, help="labelled folder (one sub-folder per class)")
    k.add_argument("--test", type=Path, required=True, help="labelled folder with the same classes")
    k.add_argument("--k", type=int, default=200, help="neighbours (default: 200)")
    k.add_argument("--temperature", type=float, default=0.1, help="vote temperature (default: 0.1)")

    lin = sub.add_parser("linear", help="linear probe (logistic regression) on frozen features",
                         description="Multinomial logistic regression (L-BFGS, L2) on standardised frozen "
                         "features of --train, top-1 accuracy on --test.")
    _common(lin, None, "images per class of each folder (default: all)")
    lin.add_argument("--train", type=Path, required=True, help="labelled folder (one sub-folder per class)")
    lin.add_argument("--test", type=Path, required=True, help="labelled folder with the same classes")
    lin.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty (default: 1e-4)")
    lin.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations (default: 300)")

    f = sub.add_parser("fewshot", help="N-way K-shot episodes, nearest centred prototype (the device's code)",
                       description="Supports are drawn from --support, queries from --query (one sub-folder "
                       "per class in both). Prints mean accuracy and its 95%% interval; features are cached "
                       "in RUN/features/.")
    _common(f, 500, "images per class whose features are extracted (default: 500)")
    f.add_argument("--support", type=Path, required=True, help="labelled folder for supports (e.g. train/)")
    f.add_argument("--query", type=Path, required=True, help="labelled folder for queries (e.g. test/)")
    f.add_argument("--way", type=int, default=5, help="classes per episode (default: 5)")
    f.add_argument("--shot", type=int, default=5, help="supports per class (default: 5)")
    f.add_argument("--queries", type=int, default=15, help="queries per class and episode (default: 15)")
    f.add_argument("--episodes", type=int, default=None,
                   help="number of episodes (default: 1000 for the prototype head, 300 otherwise)")
    f.add_argument("--head", choices=("prototype", "fitted", "auto", "all"), default="prototype",
                   help="the device's head: nearest centred prototype, a fitted ridge classifier, or auto "
                   "(chosen per episode by leave-one-out); all: every head at every --shots (default: prototype)")
    f.add_argument("--shots", type=lambda v: [int(x) for x in v.split(",")], default=None, metavar="K,K,...",
                   help="with --head all: the shots per class to compare at (default: 5,20,50)")

    o = sub.add_parser("openset", help="unknown detection: calibrated per-class thresholds vs one global threshold",
                       description="Per split, --known classes are enrolled with --shot images of --support; all "
                       "images of --query are classified and those of the other classes should be unknown. "
                       "Prints AUROC and FAR at 95%% TAR (threshold swept) and TAR/FAR at the fixed threshold "
                       "and at the calibrated thresholds, mean ± 95%% interval over --splits random splits.")
    _common(o, 500, "images per class whose features are extracted (default: 500)")
    o.add_argument("--support", type=Path, required=True, help="labelled folder to enroll from (e.g. train/)")
    o.add_argument("--query", type=Path, required=True, help="labelled folder for queries (e.g. test/)")
    o.add_argument("--known", type=int, default=5, help="classes enrolled per split (default: 5)")
    o.add_argument("--shot", type=int, default=5, help="exemplars per enrolled class (default: 5)")
    o.add_argument("--splits", type=int, default=20, help="random class splits to average over (default: 20)")
    o.add_argument("--threshold", type=float, default=0.5,
                   help="the fixed global threshold, also the calibration's fallback (default: 0.5)")
    o.add_argument("--background", type=int, default=0, metavar="M",
                   help="also calibrate on M support images of half of the non-enrolled classes, which are "
                   "then left out of the unknown queries (default: 0, the gallery alone)")
    o.add_argument("--cohort", type=int, default=COHORT_IMAGES, metavar="M",
                   help="normalise the scores by a cohort of M unlabelled support images, never enrolled, "
                   "as the device does with the bundle's cohort.npy (default: %(default)s, as many as "
                   "`edgessl export` writes; 0: no cohort)")


def _openset_text(r: dict[str, Any], kind: str) -> str:
    def f(name: str, pct: bool = True) -> str:
        m, c = r[name]["mean"], r[name]["ci95"]
        return f"{100 * m:.1f}% ± {100 * c:.1f}" if pct else f"{m:.3f} ± {c:.3f}"

    return "\n".join([
        f"open set ({kind}): {r['known']} classes enrolled with {r['shot']} shots, {r['queries']} queries of "
        f"{len(r['classes'])} classes, {r['splits']} splits" + (f", {r['background']} background images"
                                                                 if r["background"] else "")
        + (f", a cohort of {r['cohort']} images" if r["cohort"] else ", no cohort (--cohort 0, or too few support "
                                                                    "images for one)"),
        f"  AUROC          calibrated {f('auroc_calibrated', False)}   global {f('auroc_global', False)}",
        f"  FAR @ 95% TAR  calibrated {f('far95_calibrated')}   global {f('far95_global')}",
        f"  calibrated vs global on the same splits: AUROC {r['auroc_gain']['mean']:+.3f} ± "
        f"{r['auroc_gain']['ci95']:.3f}, FAR @ 95% TAR {-100 * r['far95_gain']['mean']:+.1f} ± "
        f"{100 * r['far95_gain']['ci95']:.1f} points",
        f"  of which the cohort alone (one threshold on the normalised score): AUROC {f('auroc_cohort', False)}, "
        f"FAR @ 95% TAR {f('far95_cohort')}",
        f"  oracle (per-class thresholds read off the queries, the most calibration could do): "
        f"AUROC {f('auroc_oracle', False)}, FAR @ 95% TAR {f('far95_oracle')}",
        f"  at the thresholds: calibrated TAR {f('tar_calibrated')} FAR {f('far_calibrated')} "
        f"(accepted right {f('accuracy_calibrated')}); fixed {r['fallback']:g} TAR {f('tar_fixed')} "
        f"FAR {f('far_fixed')} (accepted right {f('accuracy_fixed')})",
        f"  closed-set accuracy of the known queries {f('closed_accuracy')}",
    ])


def run(args: argparse.Namespace) -> int:
    from edgessl.train import evaluate as E

    ev = E.Evaluator(args.checkpoint, args.random_weights)
    kind = "random weights" if args.random_weights else f"step {ev.step}"
    r: dict[str, Any]
    if args.kind == "openset":
        s, test = ev.encode_pair(args.support, args.query, args.per_class, args.seed)
        r = E.openset(ev, s, test, known=args.known, shot=args.shot, splits=args.splits, seed=args.seed,
                      fallback=args.threshold, background=args.background, cohort=args.cohort)
        line = _openset_text(r, kind)
    elif args.kind == "fewshot" and args.head != "prototype":
        s, test = ev.encode_pair(args.support, args.query, args.per_class, args.seed)
        heads = ("prototype", "fitted", "auto") if args.head == "all" else (args.head,)
        shots = (args.shots or [5, 20, 50]) if args.head == "all" else [args.shot]
        episodes = args.episodes or 300
        table = E.fewshot_heads(ev, s, test, way=args.way, shots=shots, heads=heads, queries=args.queries,
                                episodes=episodes, seed=args.seed)
        r = {"checkpoint": str(ev.path), "random_weights": args.random_weights, "way": args.way,
             "episodes": episodes, "classes": s.class_names,
             "results": [{"shot": k, "head": h, "accuracy": res.mean, "ci95": res.ci95}
                         for k, by_head in table.items() for h, res in by_head.items()]}
        line = "\n".join(
            f"{args.way}-way {k}-shot ({kind}, {episodes} episodes): " + ", ".join(
                f"{h} {100 * res.mean:.2f}% ± {100 * res.ci95:.2f}" for h, res in by_head.items())
            for k, by_head in table.items())
        res = table[shots[-1]][heads[-1]]
    elif args.kind == "fewshot":
        s, q = ev.encode_pair(args.support, args.query, args.per_class, args.seed)
        episodes = args.episodes or 1000
        res = E.fewshot_episodes(ev, s, q, way=args.way, shot=args.shot, queries=args.queries,
                                 episodes=episodes, seed=args.seed)
        r = {"checkpoint": str(ev.path), "random_weights": args.random_weights, "way": args.way,
             "shot": args.shot, "episodes": episodes, "accuracy": float(res.mean),
             "ci95": float(res.ci95), "classes": s.class_names}
        line = (f"{r['way']}-way {r['shot']}-shot ({kind}, {r['episodes']} episodes): "
                f"{100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f}")
        test = q
    else:
        tr, test = ev.encode_pair(args.train, args.test, args.per_class, args.seed)
        if args.kind == "knn":
            r = E._knn_result(ev, tr, test, args.k, args.temperature)
            line = f"k-NN (k={args.k}, T={args.temperature}, {kind}): top-1 {100 * r['top1']:.2f}%" + (
                f", top-5 {100 * r['top5']:.2f}%" if r["top5"] is not None else "")
        else:
            scores = E.linear_probe(tr.features, tr.labels, test.features, len(tr.class_names),
                                    args.weight_decay, args.max_iter)
            r = {"checkpoint": str(ev.path), "step": ev.step, "random_weights": args.random_weights,
                 "train": len(tr.labels), "test": len(test.labels), "weight_decay": args.weight_decay,
                 "top1": float((scores.argmax(1) == test.labels).mean()), "classes": tr.class_names}
            line = f"linear probe ({kind}): top-1 {100 * r['top1']:.2f}%"

    if args.report is not None:
        from edgessl.train import report

        out: Path = args.report
        out.mkdir(parents=True, exist_ok=True)
        written = [report.loss_curve(ev.run_dir, out / "loss.png"),
                   report.view_grid(ev.ckpt, out / "augmented_views.png"),
                   report.projection(test.features, test.labels, test.class_names, out / "embedding_pca.png")]
        if args.kind == "knn" and not args.random_weights:
            points = E.knn_over_checkpoints(ev.run_dir, args.train, args.test, k=args.k,
                                            temperature=args.temperature, per_class=args.per_class,
                                            seed=args.seed)
            written.append(report.metric_over_checkpoints(points, out / "knn_over_checkpoints.png"))
        if args.kind == "fewshot":
            names = [s.class_names[i] for i in res.labels]  # the last shot and head with --head
            written.append(report.confusion(res.confusion, names, out / "fewshot_confusion.png",
                                            f"{args.way}-way {args.shot}-shot episodes, {kind}"))
        r["report"] = [str(p) for p in written if p is not None]

    print(json.dumps(r) if args.json else line)
    if args.report is not None and not args.json:
        print("report: " + ", ".join(r["report"]))
    return 0
