"""What a compiled executable is made of, read from XLA's own text and cost analysis."""

from __future__ import annotations

import re


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call, from XLA's cost analysis of the compiled executable (None if absent)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def hlo_op_counts(compiled) -> dict:
    """What the compiled step is made of: matmuls in a library fusion (XLA:CPU's YNNPACK/XNNPACK/
    oneDNN), other dots, and convolutions (the slow forms on XLA:CPU)."""
    try:
        text = compiled.as_text()
    except Exception:
        return {}
    library = len(re.findall(r'"kind":"__(?:ynn|xnn|onednn)[a-z_]*"', text))
    return {
        "library_fusions": library,
        "other_dots": len(re.findall(r"\bdot\(", text)) - _dots_inside_library_fusions(text),
        "convolutions": len(re.findall(r"\bconvolution\(", text)),
    }


def hlo_kernels(compiled) -> int | None:
    """Kernels the compiled step launches, about: its fusions and library calls (custom calls)
    outside fused computations. A `lax.scan` body counts once (divide by nothing: it is the
    per-step count). None where the backend gives no HLO text."""
    try:
        text = compiled.as_text()
    except Exception:
        return None
    outside_fusions = [
        block
        for block in re.split(r"\n(?=\S)", text)
        if not block.lstrip("%").startswith(("fused_", "wrapped_", "horizontally_fused"))
    ]
    body = "\n".join(outside_fusions)
    return len(re.findall(r"= [^\n=]*\b(?:fusion|custom-call)\(", body))


def _dots_inside_library_fusions(text: str) -> int:
    """Dots in the fused computations that library fusions call (counted once per fusion)."""
    called = set(re.findall(r'calls=(%[\w.\-]+)[^\n]*"kind":"__(?:ynn|xnn|onednn)', text))
    count = 0
    for block in re.split(r"\n(?=\S)", text):
        name = block.split(" ", 1)[0]
        if name in called:
            count += len(re.findall(r"\bdot\(", block))
    return count
