"""Spectral filters against a dense float64 eigendecomposition; FFT convolution against direct."""

import time
import warnings

import numpy as np
import pytest
import torch

from esssm import spectral
from esssm.spectral import (
    causal_fft_conv,
    compute_spectral_filters,
    fast_fft_size,
    filter_spectra,
    hankel_matrix,
    spectral_filters,
)


def test_hankel_matrix_entries():
    z = hankel_matrix(5)
    i, j = 2, 4  # zero-based -> i + j = 8 in one-based indices
    s = (i + 1) + (j + 1)
    assert z[i, j] == pytest.approx(2.0 / (s**3 - s), rel=1e-15)
    assert np.allclose(z, z.T)
    assert z.dtype == np.float64


def _align(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    return other * np.sign(np.sum(reference * other, axis=0))


@pytest.mark.parametrize("seq_len,method", [(64, "dense"), (256, "lanczos"), (1024, "lanczos")])
def test_filters_match_dense_eigendecomposition(seq_len, method):
    k = 24
    z = hankel_matrix(seq_len)
    values, vectors = np.linalg.eigh(z)
    ref_sigma, ref_phi = values[::-1][:k], vectors[:, ::-1][:, :k]
    sigma, phi = compute_spectral_filters(seq_len, k, method=method)
    assert sigma.dtype == phi.dtype == np.float64
    assert phi.shape == (seq_len, k) and sigma.shape == (k,)
    assert np.all(np.diff(sigma) <= 0), "descending order"
    # Eigenvalues in absolute terms relative to sigma_1 (docs/design.md section 2).
    assert np.max(np.abs(sigma - ref_sigma)) < 1e-13 * ref_sigma[0]
    # Eigenvectors up to sign where they are determined by float64 arithmetic.
    determined = sigma / sigma[0] > 1e-6
    assert determined.sum() >= 8
    err = np.abs(_align(ref_phi, phi) - ref_phi)[:, determined].max()
    assert err < 1e-8
    # The whole basis, tail included: orthonormal, small residual relative to ||Z||.
    assert np.abs(phi.T @ phi - np.eye(k)).max() < 1e-12
    residual = np.linalg.norm(z @ phi - phi * sigma, axis=0).max()
    assert residual < 1e-13 * np.linalg.norm(z, 2)


def test_dense_and_lanczos_agree_including_signs():
    s_dense, p_dense = compute_spectral_filters(512, 16, "dense")
    s_lanczos, p_lanczos = compute_spectral_filters(512, 16, "lanczos")
    determined = s_dense / s_dense[0] > 1e-6
    assert np.abs(p_dense - p_lanczos)[:, determined].max() < 1e-8  # same deterministic signs


def test_deterministic_and_spectrum_shape():
    a = compute_spectral_filters(300, 8)
    b = compute_spectral_filters(300, 8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    sigma = a[0]
    assert sigma[0] == pytest.approx(0.36, abs=0.01)
    assert sigma[4] / sigma[0] < 1e-2  # about 100x every 4 channels


def test_long_sequence_is_fast():
    start = time.perf_counter()
    sigma, phi = compute_spectral_filters(16000, 32)
    assert time.perf_counter() - start < 20.0
    assert phi.shape == (16000, 32)
    assert np.abs(phi.T @ phi - np.eye(32)).max() < 1e-10
    assert sigma[0] == pytest.approx(0.3604, abs=1e-3)
    assert spectral.eigenpair_problem(sigma, phi, tolerance=1e-13) is None  # the cache check's margin


def test_disk_cache_roundtrip_and_corruption(tmp_path, monkeypatch):
    sigma, phi = spectral_filters(128, 8, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "L128_K8" in files[0].name
    calls = []
    real = spectral.compute_spectral_filters
    monkeypatch.setattr(spectral, "compute_spectral_filters", lambda *a: calls.append(a) or real(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid entry is used without a word
        cached = spectral_filters(128, 8, cache_dir=tmp_path)
    assert not calls and np.array_equal(cached[1], phi)
    files[0].write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match=f"{files[0]} is unreadable"):
        recomputed = spectral_filters(128, 8, cache_dir=tmp_path)
    assert len(calls) == 1 and np.array_equal(recomputed[1], phi)
    # A well-formed file whose numbers were altered fails its checksum and is recomputed.
    with np.load(files[0]) as f:
        data = dict(f)
    data["phi"] = data["phi"] * 2
    np.savez(files[0], **data)
    with pytest.warns(UserWarning, match="fails its checksum"):
        assert np.array_equal(spectral_filters(128, 8, cache_dir=tmp_path)[1], phi)
    assert len(calls) == 2


def _write_entry(path, sigma, phi):
    """A cache file holding (sigma, phi) with a matching digest, as a wrong writer would leave it."""
    np.savez(path, sigma=sigma, phi=phi, digest=np.array(spectral._digest(sigma, phi)))


def _random_filters(sigma, phi):
    return sigma, np.linalg.qr(np.random.default_rng(0).standard_normal(phi.shape))[0]


def _second_to_ninth(sigma, phi):
    sigma9, phi9 = compute_spectral_filters(128, 9)
    return sigma9[1:], phi9[:, 1:]


# Filters that a digest accepts but the eigen-equation does not: (what the warning says, make).
WRONG_FILTERS = [
    ("sigma_1", _random_filters),
    ("sigma_1", lambda sigma, phi: (1.5 * sigma, phi)),
    ("not orthonormal", lambda sigma, phi: (sigma, 2 * phi)),
    ("not in descending order", lambda sigma, phi: (sigma[::-1].copy(), phi[:, ::-1].copy())),
    ("not the top 8", _second_to_ninth),
    ("NaN or infinite", lambda sigma, phi: (np.full_like(sigma, np.nan), phi)),
    ("expected float64", lambda sigma, phi: (sigma.astype(str), phi)),
]


@pytest.mark.parametrize(
    "problem,make", WRONG_FILTERS, ids=["random", "scaled", "doubled", "reversed", "shifted", "nan", "text"]
)
def test_cache_with_wrong_filters_and_a_matching_digest_is_recomputed(tmp_path, problem, make):
    sigma, phi = compute_spectral_filters(128, 8)
    path = tmp_path / f"hankel_v{spectral._CACHE_VERSION}_L128_K8.npz"
    _write_entry(path, *make(sigma, phi))
    with pytest.warns(UserWarning, match=f"{path} holds .*{problem}"):
        loaded = spectral_filters(128, 8, cache_dir=tmp_path)
    assert np.array_equal(loaded[0], sigma) and np.array_equal(loaded[1], phi)
    with np.load(path) as f:  # rewritten with the right filters
        assert np.array_equal(f["phi"], phi)


@pytest.mark.parametrize("seq_len,k", [(64, 64), (1024, 32), (4096, 32)])
def test_real_filters_pass_the_eigen_check_with_margin(seq_len, k):
    """Both solvers' outputs, round-off tail included, sit far inside the cache check's tolerance."""
    sigma, phi = compute_spectral_filters(seq_len, k)
    assert spectral.eigenpair_problem(sigma, phi, tolerance=1e-13) is None
    start = time.perf_counter()
    assert spectral.eigenpair_problem(sigma, phi) is None
    assert time.perf_counter() - start < 0.5


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ESSSM_CACHE_DIR", str(tmp_path / "c"))
    spectral_filters(40, 4)
    assert list((tmp_path / "c").glob("*L40_K4*.npz"))


@pytest.mark.parametrize("bad", [(0, 4), (10, 0), (10, 11)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        compute_spectral_filters(*bad)


def test_fast_fft_size():
    for n in [1, 2, 7, 100, 8191, 31999]:
        size = fast_fft_size(n)
        assert size >= n
        rest = size
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        assert rest == 1
    assert fast_fft_size(8191) == 8192


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_causal_fft_conv_matches_direct(dtype):
    gen = torch.Generator().manual_seed(0)
    batch, length, d, k = 2, 37, 3, 4
    u = torch.randn(batch, length, d, generator=gen, dtype=torch.float64)
    filters = torch.randn(length, k, generator=gen, dtype=torch.float64)
    direct = torch.zeros(batch, k, d, length, dtype=torch.float64)
    for t in range(length):
        for s in range(t + 1):
            direct[:, :, :, t] += filters[t - s][None, :, None] * u[:, s][:, None, :]
    nfft = fast_fft_size(2 * length - 1)
    out = causal_fft_conv(u.to(dtype), filter_spectra(filters.to(dtype), nfft), nfft)
    assert out.shape == (batch, k, d, length) and out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out.double(), direct, atol=tol, rtol=0)


def test_causal_fft_conv_rejects_wraparound():
    u = torch.randn(1, 10, 2)
    with pytest.raises(ValueError, match="nfft"):
        causal_fft_conv(u, filter_spectra(torch.randn(10, 1), 16), 16)


def test_causal_fft_conv_float32_under_autocast():
    u = torch.randn(1, 16, 4).bfloat16()
    spectra = filter_spectra(torch.randn(16, 2), 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_fft_conv(u, spectra, 32)
    assert out.dtype == torch.float32
