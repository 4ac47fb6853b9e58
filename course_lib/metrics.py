"""Numbers that say how close, how good, how fast: the course's measurements.

``compare`` is what notebooks use to show parity with a reference implementation. It prints
the tolerance that holds, not the raw difference: the last bits of a float32 result vary
between CPUs (vector widths, summation order), and notebooks must print the same text on
every machine.
"""

from __future__ import annotations

from typing import Any


def to_numpy(x: Any):
    """A NumPy array from a torch tensor (any device or dtype, bfloat16 too), the course's
    teaching Tensor (anything with ``.numpy()``), a number or nested lists. Never imports torch."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()  # NumPy has no bfloat16
    if callable(getattr(x, "numpy", None)):
        return np.asarray(x.numpy())
    return np.asarray(x)


def _as_float64(x: Any):
    return to_numpy(x).astype("float64")


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute element-wise difference between two arrays/tensors of one shape."""
    a64, b64 = _as_float64(a), _as_float64(b)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {a64.shape} vs {b64.shape}")
    return float(abs(a64 - b64).max()) if a64.size else 0.0


def compare(label: str, ours: Any, reference: Any, atol: float = 1e-6) -> None:
    """Print ``label: max |Δ| ≤ atol ✓`` when ``ours`` matches ``reference`` within ``atol``;
    raise AssertionError (with the actual difference) when it does not.

    Returns nothing, so a notebook cell ending with it shows only the printed line
    (``max_abs_diff`` gives the number)."""
    diff = max_abs_diff(ours, reference)
    if not diff <= atol:  # also catches NaN
        raise AssertionError(f"{label}: max |Δ| = {diff:.3g} exceeds the tolerance {atol:g}")
    print(f"{label}: max |Δ| ≤ {atol:g} ✓")
