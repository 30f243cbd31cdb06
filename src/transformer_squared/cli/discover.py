"""`t2 discover`: unlabeled prompts → proposed task types (see adapt/discover.py)."""

from __future__ import annotations

import argparse

from .options import add_library_arg, cosine, positive_int


def register(sub) -> None:
    from ..adapt.discover import DEFAULT_K_MAX

    p = sub.add_parser("discover", help="cluster unlabeled prompts into proposed task types; with --library, "
                                        "list those no expert covers",
                       description="Embeds the prompts with the sentence encoder, clusters them with k-means (k by "
                                   "the best silhouette over 2..--k-max unless --k), names each cluster by its most "
                                   "typical prompts and top TF-IDF terms, and writes one JSONL per cluster plus "
                                   "summary.json.")
    p.add_argument("--prompts", required=True, help="JSONL: one JSON string, or object with \"prompt\", per line")
    p.add_argument("--out", required=True, help="folder for cluster-NN.jsonl and summary.json")
    p.add_argument("--k", type=positive_int, default=None, help="number of clusters (default: chosen by silhouette)")
    p.add_argument("--k-max", type=positive_int, default=DEFAULT_K_MAX, help="largest k tried when choosing")
    p.add_argument("--encoder", default=None, help="sentence encoder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--threshold", type=cosine, default=None,
                   help="--library: cosine similarity below which routing falls to the base (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_library_arg(p)
    p.set_defaults(func=discover_cmd, library=None)


def discover_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..adapt.discover import _sklearn, coverage, discover, read_prompts, write_discovery
    from ..adapt.embedding import shared_encoder

    if Path(args.out).exists() and not args.overwrite:
        raise ValueError(f"--out {args.out} already exists; pass --overwrite or choose another folder")
    _sklearn()
    prompts = read_prompts(args.prompts)
    encoder = shared_encoder(args.encoder)
    report = discover(prompts, encoder, args.k, args.k_max, args.seed)
    if args.library is not None:
        from ..experts import ExpertLibrary

        coverage(report, ExpertLibrary(args.library), encoder, args.threshold)
    out = write_discovery(report, args.out, args.overwrite)
    how = f"silhouette {report.silhouette[report.k]:.3f}, best of k=2..{max(report.silhouette)}" \
        if report.chosen_by == "silhouette" else "given"
    print(f"{len(prompts)} prompts -> {report.k} clusters ({how})")
    for c in report.clusters:
        where = "" if c.covered is None else ("  covered by " + ", ".join(f"{n}:{v}" for n, v in c.routed.items())
                                             if c.covered else "  NOT COVERED (routing falls to base)")
        print(f"  {c.id:2d} {c.name:36} {c.size:5d} prompts{where}")
        print(f"       e.g. {c.typical[0][:100]!r}")
    if args.library is not None:
        missing = [c.name for c in report.clusters if not c.covered]
        print("no expert covers: " + (", ".join(missing) if missing else "none, every cluster reaches an expert"))
    print(f"wrote {out}/summary.json and {len(report.clusters)} cluster files")
    return 0
