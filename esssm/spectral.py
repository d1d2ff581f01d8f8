"""Fixed spectral filters of the Hankel matrix and the causal FFT convolution that applies them.

The filters are the top eigenvectors of the L x L Hankel matrix
Z[i, j] = 2 / ((i + j)^3 - (i + j)), i, j = 1..L (docs/design.md section 1). They are computed in
float64, ordered by descending eigenvalue (channel 1 = largest), given deterministic signs and
cached on disk keyed by (L, K); a cached entry is checked against the eigen-equation before use.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch

from esssm.files import atomic_write

CACHE_ENV = "ESSSM_CACHE_DIR"
_CACHE_VERSION = 1
_DENSE_MAX_LEN = 1024  # above this a dense eigendecomposition is wasteful: use Lanczos.
# Eigenvalues below this are float64 round-off (they can even come out negative, e.g.
# sigma_29..32 = -1.2e-17 at L = 1024): their filters enter with scale SIGMA_FLOOR^(1/4).
SIGMA_FLOOR = 1e-12
# A cached (sigma, phi) must solve the eigen-equation to this, relative to sigma_1 = ||Z||.
# The solvers reach about 1e-15 at L = 1024, 4096 and 16000 (K = 32); filters off by 1e-10
# would not change a model. Random or shifted filters are off by order 1.
EIGEN_TOLERANCE = 1e-10


def hankel_entries(seq_len: int) -> np.ndarray:
    """h[m] = Z value on anti-diagonal i + j = m + 2, for m = 0..2L-2 (float64, shape (2L-1,))."""
    s = np.arange(2, 2 * seq_len + 1, dtype=np.float64)
    return 2.0 / (s**3 - s)


def hankel_matrix(seq_len: int) -> np.ndarray:
    """The dense (L, L) float64 Hankel matrix Z; only for small L and for reference checks."""
    _check_len(seq_len)
    h = hankel_entries(seq_len)
    idx = np.arange(seq_len)
    return h[idx[:, None] + idx[None, :]]


def _check_len(seq_len: int) -> None:
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")


def _hankel_operator(seq_len: int) -> scipy.sparse.linalg.LinearOperator:
    """Z as a LinearOperator: Z x is a correlation with h, done as one real FFT convolution.

    (Z x)[i] = sum_j h[i + j] x[j] = (h * reverse(x))[i + L - 1], O(L log L) instead of O(L^2).
    """
    h = hankel_entries(seq_len)
    nfft = fast_fft_size(3 * seq_len - 2)
    h_hat = np.fft.rfft(h, nfft)

    def matvec(x: np.ndarray) -> np.ndarray:
        full = np.fft.irfft(h_hat * np.fft.rfft(x.ravel()[::-1], nfft), nfft)
        return full[seq_len - 1 : 2 * seq_len - 1]

    return scipy.sparse.linalg.LinearOperator(
        (seq_len, seq_len), matvec=matvec, rmatvec=matvec, dtype=np.float64
    )


def _eig_dense(seq_len: int, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    sigma, phi = scipy.linalg.eigh(
        hankel_matrix(seq_len), subset_by_index=[seq_len - k_max, seq_len - 1]
    )
    return sigma, phi


def _eig_lanczos(seq_len: int, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    # A fixed starting vector makes ARPACK's iteration (and so its output) reproducible.
    v0 = np.random.default_rng(0).standard_normal(seq_len)
    ncv = min(seq_len, max(2 * k_max + 1, k_max + 32))
    sigma, phi = scipy.sparse.linalg.eigsh(
        _hankel_operator(seq_len), k=k_max, which="LA", v0=v0, ncv=ncv, tol=0.0
    )
    return sigma, phi


def _fix_signs(phi: np.ndarray) -> np.ndarray:
    """Make each column's projection on a fixed pseudo-random vector positive.

    Eigenvectors are defined up to sign; a projection on a generic vector is never close to
    zero, so the choice is stable across LAPACK/ARPACK builds, machines and DDP ranks.
    """
    probe = np.random.default_rng(1234).standard_normal(phi.shape[0])
    signs = np.sign(probe @ phi)
    signs[signs == 0] = 1.0
    return phi * signs


def compute_spectral_filters(
    seq_len: int, k_max: int, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Top k_max eigenpairs of Z without the disk cache.

    Returns sigma (k_max,) descending and phi (seq_len, k_max) with orthonormal columns, float64.
    method: "dense" (LAPACK subset eigh), "lanczos" (ARPACK + FFT mat-vec) or "auto".
    """
    _check_len(seq_len)
    if not 1 <= k_max <= seq_len:
        raise ValueError(f"k_max must be in [1, seq_len={seq_len}], got {k_max}")
    if method == "auto":
        method = "dense" if seq_len <= _DENSE_MAX_LEN or k_max >= seq_len // 2 else "lanczos"
    if method == "dense":
        sigma, phi = _eig_dense(seq_len, k_max)
    elif method == "lanczos":
        if k_max >= seq_len - 1:
            raise ValueError("lanczos needs k_max < seq_len - 1; use method='dense'")
        sigma, phi = _eig_lanczos(seq_len, k_max)
    else:
        raise ValueError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
    order = np.argsort(sigma)[::-1]
    return np.ascontiguousarray(sigma[order]), np.ascontiguousarray(_fix_signs(phi[:, order]))


def filter_scale(sigma: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """sigma^(1/4) with sigma clamped to >= SIGMA_FLOOR, shape of sigma (K,).

    The one rule for every place that scales filters (as the authors do): eigenvalues at
    round-off, possibly negative, get a tiny positive scale instead of NaN. Works on torch
    tensors (differentiable, device and dtype kept) and on numpy arrays. The raw eigenvalues
    are stored unchanged.
    """
    if isinstance(sigma, np.ndarray):
        return np.maximum(sigma, SIGMA_FLOOR) ** 0.25
    return sigma.clamp_min(SIGMA_FLOOR).pow(0.25)


def default_cache_dir() -> Path:
    """$ESSSM_CACHE_DIR, else ~/.cache/esssm/filters."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "esssm" / "filters"


def _digest(sigma: np.ndarray, phi: np.ndarray) -> str:
    return hashlib.sha256(sigma.tobytes() + phi.tobytes()).hexdigest()


def _load_cached(path: Path, seq_len: int, k_max: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached pair, or None when there is none or it fails a check (which warns, naming the file).

    A digest only shows that the file is what was written; the eigen-equation shows that what
    was written is right, so a wrong file with a matching digest is recomputed, not trained on.
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            sigma, phi, digest = f["sigma"], f["phi"], str(f["digest"])
    except Exception as error:  # any unreadable file is recomputed, never trusted
        problem = f"is unreadable ({type(error).__name__}: {error})"
    else:
        problem = _cache_entry_problem(sigma, phi, digest, seq_len, k_max)
    if problem is None:
        return sigma, phi
    warnings.warn(f"spectral filter cache {path} {problem}; recomputing the filters (and rewriting the file)")
    return None


def _cache_entry_problem(
    sigma: np.ndarray, phi: np.ndarray, digest: str, seq_len: int, k_max: int
) -> str | None:
    """What is wrong with a cache entry (sigma (K,), phi (L, K)), or None when it can be used."""
    if sigma.shape != (k_max,) or phi.shape != (seq_len, k_max):
        return f"holds sigma {sigma.shape} and phi {phi.shape}, expected ({k_max},) and ({seq_len}, {k_max})"
    if sigma.dtype != np.float64 or phi.dtype != np.float64:
        return f"holds sigma {sigma.dtype} and phi {phi.dtype}, expected float64"
    if digest != _digest(sigma, phi):
        return "fails its checksum"
    problem = eigenpair_problem(sigma, phi)
    return None if problem is None else f"holds wrong filters: {problem}"


def eigenpair_problem(sigma: np.ndarray, phi: np.ndarray, tolerance: float = EIGEN_TOLERANCE) -> str | None:
    """Why sigma (K,) and phi (L, K) are not the top K eigenpairs of Z, or None when they are.

    Checked against Z itself by FFT mat-vecs (0.05-0.08 s at L = 16000, K = 32; the eigensolve
    takes 0.25-1 s), with errors relative to sigma_1 = ||Z||: sigma descending, phi
    orthonormal, each column's residual ||Z phi_k - sigma_k phi_k||, and no eigenvalue of Z
    outside span(phi) above sigma_K.
    Round-off tail channels pass: their vectors are not determined, but still satisfy these.
    """
    if not (np.isfinite(sigma).all() and np.isfinite(phi).all()):
        return "it holds NaN or infinite values"
    if not sigma[0] > 0:
        return f"the largest eigenvalue is {sigma[0]:.3g}, but Z is positive definite"
    if np.any(np.diff(sigma) > 0):
        return "the eigenvalues are not in descending order"
    gram_error = np.abs(phi.T @ phi - np.eye(phi.shape[1])).max()
    if gram_error > tolerance:
        return f"the filters are not orthonormal (|phi^T phi - I| = {gram_error:.1e})"
    operator = _hankel_operator(phi.shape[0])
    residual = np.linalg.norm(operator.matmat(phi) - phi * sigma, axis=0).max() / sigma[0]
    if residual > tolerance:
        return f"||Z phi_k - sigma_k phi_k|| is {residual:.1e} sigma_1 (at most {tolerance:.0e} expected)"
    missed = _largest_eigenvalue_outside(operator, phi)
    if missed > sigma[-1] + tolerance * sigma[0]:
        return f"they are not the top {len(sigma)}: Z has an eigenvalue >= {missed:.3g} outside them"
    return None


def _largest_eigenvalue_outside(
    operator: scipy.sparse.linalg.LinearOperator, phi: np.ndarray, steps: int = 4
) -> float:
    """A lower bound on the largest eigenvalue of Z on the complement of span(phi).

    Power iteration on P Z P (P projects out phi); a Rayleigh quotient never exceeds the top
    eigenvalue, and with Z's eigenvalues falling about 3x per index a few steps reach it.
    -inf when phi spans everything.
    """
    if phi.shape[1] >= phi.shape[0]:
        return -np.inf
    vector = np.random.default_rng(0).standard_normal(phi.shape[0])
    quotient = 0.0
    for _ in range(steps):
        vector -= phi @ (phi.T @ vector)
        vector /= np.linalg.norm(vector)
        image = operator.matvec(vector)
        quotient, vector = float(vector @ image), image
    return quotient


def _save_atomic(path: Path, sigma: np.ndarray, phi: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, sigma=sigma, phi=phi, digest=np.array(_digest(sigma, phi)))

    atomic_write(path, write)


def spectral_filters(
    seq_len: int, k_max: int, cache_dir: str | Path | None = None, use_cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(sigma, phi) of Z, float64, from the disk cache when a valid entry exists.

    sigma: (k_max,) descending; phi: (seq_len, k_max), orthonormal columns, deterministic signs.
    """
    if not use_cache:
        return compute_spectral_filters(seq_len, k_max)
    path = Path(cache_dir or default_cache_dir()) / f"hankel_v{_CACHE_VERSION}_L{seq_len}_K{k_max}.npz"
    cached = _load_cached(path, seq_len, k_max)
    if cached is not None:
        return cached
    sigma, phi = compute_spectral_filters(seq_len, k_max)
    try:
        _save_atomic(path, sigma, phi)
    except OSError:
        pass  # a read-only cache location only costs recomputation
    return sigma, phi


# --------------------------------------------------------------------------- FFT convolution


def fast_fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: sizes pocketfft and cuFFT handle without slow prime passes."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (bf16/fp16/fp32) is convolved in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def filter_spectra(filters: torch.Tensor, nfft: int) -> torch.Tensor:
    """Real FFT of a filter bank (L, K) -> (K, nfft // 2 + 1) complex, zero-padded to nfft."""
    return torch.fft.rfft(filters.t(), n=nfft, dim=-1)


def padded_rfft(x: torch.Tensor, nfft: int) -> torch.Tensor:
    """rfft of x (..., L) zero-padded to nfft along the last dim -> (..., nfft // 2 + 1).

    x is made contiguous first: rfft's own padding of a strided (e.g. transposed) input is
    about 10x slower on CPU than padding a contiguous one.
    """
    return torch.fft.rfft(x.contiguous(), n=nfft, dim=-1)


def causal_fft_conv(u: torch.Tensor, spectra: torch.Tensor, nfft: int) -> torch.Tensor:
    """Causal linear convolution of every feature of u with every filter of a bank.

    u: (B, L, D); spectra: (K, F) from `filter_spectra` with nfft >= 2L - 1 (no wrap-around).
    Returns (B, K, D, L) in the FFT dtype: y[b, k, d, t] = sum_{s <= t} phi_k[t - s] u[b, s, d].
    The (B, K, D, L) layout keeps time contiguous for the FFT and lets the caller contract
    (K, D) in one GEMM without a permute copy. Autocast is disabled: FFTs stay in float32.
    This materialises all K*D signals at once; `ESSSMLayer` convolves in cache-sized blocks.
    """
    seq_len = u.shape[1]
    check_fft_size(seq_len, nfft)
    with torch.autocast(u.device.type, enabled=False):
        u_hat = padded_rfft(u.to(fft_dtype(u.dtype)).transpose(1, 2), nfft)
        return convolve_block(u_hat.unsqueeze(1), spectra[None, :, None, :], nfft)[..., :seq_len]


def check_fft_size(seq_len: int, nfft: int) -> None:
    if nfft < 2 * seq_len - 1:
        raise ValueError(f"nfft={nfft} is too small for a linear convolution of length {seq_len}")


def convolve_block(u_hat: torch.Tensor, spectra: torch.Tensor, nfft: int) -> torch.Tensor:
    """irfft(u_hat * spectra) over broadcast shapes, e.g. (b, 1, d, F) x (1, c, 1, F) -> (b, c, d, nfft).

    The caller keeps the first L samples: with nfft >= 2L - 1 they are the causal linear
    convolution, untouched by wrap-around.
    """
    return torch.fft.irfft(u_hat * spectra, n=nfft, dim=-1)
