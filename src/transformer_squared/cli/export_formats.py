"""`t2 export --format lora|gguf`: the engines users already run (multi-LoRA servers, llama.cpp/Ollama)."""

from __future__ import annotations


def export_other(args, expert, load_svf) -> int:
    """`load_svf(args, targets, expert)` is the export verb's model loader."""
    if args.format == "lora":
        from ..lora_export import export_lora, parse_rank

        rank = parse_rank(args.rank)  # before loading the model: a bad --rank fails at once
        svf = load_svf(args, expert.meta.targets, expert)
        report = export_lora(svf, expert, args.out, rank, overwrite=args.overwrite)
        worst, worst_err = report.worst()
        print(f"exported {expert.name} as a rank-{report.rank} LoRA adapter ({len(report.matrices)} matrices, "
              f"scaling 1) -> {report.out}")
        print(f"relative error ‖ΔW−ΔW_K‖/‖ΔW‖: overall {report.relative_error:.3e} (of W': "
              f"{report.relative_weight_error:.3e}); worst matrix {worst_err:.3e} ({worst}); per matrix in t2_lora.json")
        return 0
    from ..gguf_export import check_architecture, export_gguf

    svf = load_svf(args, expert.meta.targets, expert)
    check_architecture(svf.model)
    out = export_gguf(svf, expert, args.out, args.gguf_type, overwrite=args.overwrite)
    print(f"exported {expert.name} merged into {svf.model_id} as GGUF ({args.gguf_type}) -> {out}")
    return 0
