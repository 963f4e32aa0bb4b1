"""Tests for edsr_jax.metrics: analytic cases, a slow SSIM reference, and the RCAN fixture."""

import math
import re

import numpy as np
import pytest
from PIL import Image

from edsr_jax import metrics

PEAK_SQ = 255.0**2


def _rng(seed=0):
  return np.random.default_rng(seed)


def _random_rgb(shape=(40, 48, 3), seed=0, low=0, high=256):
  return _rng(seed).integers(low, high, size=shape, dtype=np.uint8)


# --- the RCAN reference (MATLAB Evaluate_PSNR_SSIM.m output) -----------------------------

_LINE = re.compile(
  r"^x(?P<scale>\d+) \d+ (?P<name>\w+?)_(?P<method>RCAN\w*)_x\d+\.png: "
  r"PSNR= (?P<psnr>[\d.]+) SSIM= (?P<ssim>[\d.]+)$"
)
_MEAN = re.compile(r"^x(?P<scale>\d+): PSNR= (?P<psnr>[\d.]+) SSIM= (?P<ssim>[\d.]+)$")
_METHOD = re.compile(r"^Method_\d+: (?P<method>\w+); Set: Set5$")


def parse_rcan_results(path):
  """{(method, scale): {"images": {name: (psnr, ssim)}, "mean": (psnr, ssim)}}."""
  table = {}
  method = None
  for line in path.read_text().splitlines():
    line = line.strip()
    if m := _METHOD.match(line):
      method = m["method"]
    elif m := _LINE.match(line):
      assert m["method"] == method
      entry = table.setdefault((method, int(m["scale"])), {"images": {}})
      entry["images"][m["name"]] = (float(m["psnr"]), float(m["ssim"]))
    elif m := _MEAN.match(line):
      table[(method, int(m["scale"]))]["mean"] = (float(m["psnr"]), float(m["ssim"]))
  return table


RCAN_CASES = [(method, scale) for method in ("RCAN", "RCANplus") for scale in (2, 3, 4)]


@pytest.fixture(scope="module")
def rcan_table(shared_data):
  table = parse_rcan_results(shared_data / "reference/rcan_set5/PSNR_SSIM_Results_BI_model.txt")
  for case in RCAN_CASES:  # Guard against a parser that silently matches nothing.
    assert len(table[case]["images"]) == 5 and "mean" in table[case], case
  return table


@pytest.mark.parametrize("method,scale", RCAN_CASES)
def test_reproduces_rcan_matlab_scores(shared_data, rcan_table, method, scale):
  expected = rcan_table[(method, scale)]
  sr_dir = shared_data / f"reference/rcan_set5/SR/BI/{method}/Set5/x{scale}"
  psnrs, ssims = [], []
  for name, (want_psnr, want_ssim) in expected["images"].items():
    sr = np.asarray(Image.open(sr_dir / f"{name}_{method}_x{scale}.png"))
    hr = np.asarray(Image.open(shared_data / f"benchmark/Set5/HR/{name}.png"))
    got = metrics.evaluate_pair(sr, hr, scale=scale)
    # The required tolerance, and the print precision of the txt (%f, 1e-6) with slack:
    # float Y reproduces MATLAB to ~5e-7, whereas a rounded Y is off by up to 0.24 dB.
    assert got["psnr"] == pytest.approx(want_psnr, abs=1e-3), name
    assert got["ssim"] == pytest.approx(want_ssim, abs=1e-4), name
    assert abs(got["psnr"] - want_psnr) < 2e-6, name
    assert abs(got["ssim"] - want_ssim) < 2e-6, name
    psnrs.append(got["psnr"])
    ssims.append(got["ssim"])
  assert np.mean(psnrs) == pytest.approx(expected["mean"][0], abs=2e-6)
  assert np.mean(ssims) == pytest.approx(expected["mean"][1], abs=2e-6)


# --- rgb_to_y --------------------------------------------------------------------------


@pytest.mark.parametrize(
  "rgb,expected_y",
  [
    ((255, 255, 255), 235.0),  # 16 + (65.481 + 128.553 + 24.966) = 16 + 219
    ((0, 0, 0), 16.0),
    ((255, 0, 0), 81.481),  # 16 + 65.481
    ((0, 255, 0), 144.553),  # 16 + 128.553
    ((0, 0, 255), 40.966),  # 16 + 24.966
    ((51, 102, 204), 16.0 + (65.481 * 51 + 128.553 * 102 + 24.966 * 204) / 255.0),
  ],
)
def test_rgb_to_y_matches_matlab_formula(rgb, expected_y):
  image = np.broadcast_to(np.array(rgb, np.uint8), (3, 4, 3))
  y = metrics.rgb_to_y(image)
  assert y.shape == (3, 4) and y.dtype == np.float64
  np.testing.assert_allclose(y, expected_y, rtol=0, atol=1e-12)
  # Float input on the same scale gives the same (unrounded) Y.
  np.testing.assert_allclose(metrics.rgb_to_y(image.astype(np.float32)), y, atol=1e-12)


def test_rgb_to_y_greyscale_is_r_equals_g_equals_b():
  grey = _random_rgb((7, 9), seed=1)
  want = 16 + (65.481 + 128.553 + 24.966) * grey.astype(np.float64) / 255
  for image in (grey, grey[..., None]):
    y = metrics.rgb_to_y(image)
    assert y.dtype == np.float64 and y.shape == (7, 9)
    np.testing.assert_allclose(y, want, atol=1e-12)


def test_rgb_to_y_rejects_other_channel_counts():
  with pytest.raises(ValueError, match=r"\(4, 4, 4\)"):
    metrics.rgb_to_y(np.zeros((4, 4, 4), np.uint8))


# --- quantize / cropping ---------------------------------------------------------------


def test_quantize_clips_then_rounds_half_up():
  x = np.array([-3.0, 0.49, 0.5, 1.5, 2.5, 3.5, 127.4999, 254.5, 254.6, 300.0])
  expected = np.array([0, 0, 1, 2, 3, 4, 127, 255, 255, 255], np.uint8)
  out = metrics.quantize(x)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, expected)
  # np.round would send 2.5 to 2 (half to even); the rule here must not.
  assert np.round(2.5) == 2.0 and metrics.quantize(np.array([2.5]))[0] == 3


def test_quantize_passes_uint8_through_and_rejects_nan():
  image = _random_rgb(seed=2)
  assert metrics.quantize(image) is image
  with pytest.raises(ValueError, match="NaN"):
    metrics.quantize(np.array([1.0, np.nan]))


def test_crop_border():
  image = np.arange(10 * 12).reshape(10, 12)
  cropped = metrics.crop_border(image, 3)
  np.testing.assert_array_equal(cropped, image[3:7, 3:9])
  assert metrics.crop_border(image, 0) is image
  with pytest.raises(ValueError, match="border 5"):
    metrics.crop_border(image, 5)


def test_crop_helpers_keep_top_left():
  hr = np.arange(11 * 14 * 3).reshape(11, 14, 3)
  np.testing.assert_array_equal(metrics.crop_to(hr, 9, 12), hr[:9, :12])
  np.testing.assert_array_equal(metrics.crop_hr_to_lr(hr, (3, 4), scale=3), hr[:9, :12])
  with pytest.raises(ValueError):
    metrics.crop_hr_to_lr(hr, (4, 4), scale=3)


# --- PSNR ------------------------------------------------------------------------------


def test_psnr_of_known_mse_rgb():
  hr = _random_rgb(seed=3, low=1, high=255)
  # Every value off by one: MSE = 1, PSNR = 10 log10(255^2) = 48.1308 dB.
  assert metrics.psnr(hr + 1, hr, border=0, y_channel=False) == pytest.approx(
    10 * math.log10(PEAK_SQ), abs=1e-12
  )
  assert 10 * math.log10(PEAK_SQ) == pytest.approx(48.1308, abs=1e-4)
  # Only the red channel off by 3: MSE over all channels = 9 / 3 = 3.
  sr = hr.copy()
  red = hr[..., 0]
  sr[..., 0] = np.where(red > 128, red - 3, red + 3)
  assert metrics.psnr(sr, hr, border=0, y_channel=False) == pytest.approx(
    10 * math.log10(PEAK_SQ / 3.0), abs=1e-12
  )


def test_psnr_of_known_mse_on_y():
  hr = _random_rgb(seed=4, low=1, high=255)
  # +1 on R, G and B shifts Y by (65.481 + 128.553 + 24.966) / 255 = 219 / 255.
  dy = 219.0 / 255.0
  assert metrics.psnr(hr + 1, hr, border=0) == pytest.approx(
    10 * math.log10(PEAK_SQ / dy**2), abs=1e-9
  )


def test_psnr_identical_is_inf_and_accepts_float_sr():
  hr = _random_rgb(seed=5)
  assert metrics.psnr(hr, hr.copy(), border=2) == math.inf
  # Float SR on 0..255 is quantised first: +0.4 rounds back to the HR values.
  assert metrics.psnr(hr.astype(np.float32) + 0.4, hr, border=2) == math.inf
  assert metrics.psnr(hr.astype(np.float32) + 0.5, hr, border=2) < math.inf


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_border_is_removed(scale):
  hr = _random_rgb((30, 34, 3), seed=6)
  sr = hr.copy()
  ring = np.ones(hr.shape[:2], bool)
  ring[scale:-scale, scale:-scale] = False
  sr[ring] = 255 - hr[ring]  # Huge errors, but only inside the border.
  assert metrics.psnr(sr, hr, border=scale) == math.inf
  assert metrics.psnr(sr, hr, border=scale, y_channel=False) == math.inf
  assert metrics.ssim(sr, hr, border=scale) == pytest.approx(1.0, abs=1e-12)
  assert metrics.psnr(sr, hr, border=scale - 1) < 40
  assert metrics.psnr(sr, hr, border=0) < 30
  assert metrics.ssim(sr, hr, border=scale - 1) < 1.0 - 1e-6


def test_psnr_shape_mismatch_names_both_shapes():
  with pytest.raises(ValueError, match=r"\(20, 24, 3\).*\(20, 25, 3\)"):
    metrics.psnr(np.zeros((20, 24, 3), np.uint8), np.zeros((20, 25, 3), np.uint8), border=0)
  with pytest.raises(ValueError, match=r"\(12, 12\).*\(11, 12\)"):
    metrics.ssim(np.zeros((12, 12), np.uint8), np.zeros((11, 12), np.uint8), border=0)


# --- SSIM ------------------------------------------------------------------------------


def _slow_ssim(a, b):
  """Textbook SSIM: explicit loop over every valid 11x11 window position."""
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  offsets = np.arange(11) - 5.0
  window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
  window /= window.sum()
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  values = []
  for i in range(a.shape[0] - 10):
    for j in range(a.shape[1] - 10):
      pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
      mu_a, mu_b = (window * pa).sum(), (window * pb).sum()
      var_a = (window * (pa - mu_a) ** 2).sum()
      var_b = (window * (pb - mu_b) ** 2).sum()
      cov = (window * (pa - mu_a) * (pb - mu_b)).sum()
      values.append(
        ((2 * mu_a * mu_b + c1) * (2 * cov + c2))
        / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
      )
  return float(np.mean(values))


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_slow_reference(seed):
  rng = _rng(seed)
  hr = rng.integers(0, 256, (20, 24), dtype=np.uint8)
  noise = rng.normal(0, 20, hr.shape)
  sr = np.clip(hr + noise, 0, 255).round().astype(np.uint8)
  got = metrics.ssim(sr, hr, border=0)
  want = _slow_ssim(16 + 219 * sr.astype(np.float64) / 255, 16 + 219 * hr.astype(np.float64) / 255)
  assert 0.0 < want < 1.0
  assert got == pytest.approx(want, abs=1e-10)
  # On RGB input both sides score Y, cropped by the border first.
  hr_rgb = rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)
  sr_rgb = np.clip(hr_rgb + rng.normal(0, 10, hr_rgb.shape), 0, 255).round().astype(np.uint8)
  want_rgb = _slow_ssim(metrics.rgb_to_y(sr_rgb)[2:-2, 2:-2], metrics.rgb_to_y(hr_rgb)[2:-2, 2:-2])
  assert metrics.ssim(sr_rgb, hr_rgb, border=2) == pytest.approx(want_rgb, abs=1e-10)


def test_ssim_identical_is_one_and_degraded_is_less():
  hr = _random_rgb((64, 64, 3), seed=7)
  assert metrics.ssim(hr, hr.copy(), border=0) == pytest.approx(1.0, abs=1e-12)
  shifted = np.roll(hr, 1, axis=1)
  noisy = np.clip(hr + _rng(8).normal(0, 5, hr.shape), 0, 255).astype(np.uint8)
  assert metrics.ssim(shifted, hr, border=0) < 0.5  # Random texture decorrelates.
  assert 0.5 < metrics.ssim(noisy, hr, border=0) < 0.999


def test_ssim_too_small_raises():
  with pytest.raises(ValueError, match="11x11"):
    metrics.ssim(np.zeros((14, 14), np.uint8), np.zeros((14, 14), np.uint8), border=2)


# --- greyscale rules -------------------------------------------------------------------


def test_greyscale_pairs_score_as_replicated_rgb():
  rng = _rng(10)
  hr = rng.integers(0, 256, (30, 32), dtype=np.uint8)
  sr = np.clip(hr.astype(int) + rng.integers(-4, 5, hr.shape), 0, 255).astype(np.uint8)
  diff = sr[2:-2, 2:-2].astype(np.float64) - hr[2:-2, 2:-2]
  # RGB mode: three equal channels, the grey MSE. Y mode: Y differences are 219/255 of it.
  want_rgb = 10 * math.log10(PEAK_SQ / np.mean(diff**2))
  want_y = 10 * math.log10(PEAK_SQ / np.mean((diff * 219 / 255) ** 2))
  assert metrics.psnr(sr, hr, border=2, y_channel=False) == pytest.approx(want_rgb, abs=1e-12)
  assert metrics.psnr(sr, hr, border=2) == pytest.approx(want_y, abs=1e-10)
  # HxWx1 and the replicated RGB image are the same image as HxW.
  rgb = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731
  assert metrics.psnr(sr[..., None], hr[..., None], border=2) == pytest.approx(want_y, abs=1e-10)
  assert metrics.ssim(sr[..., None], hr, border=2) == metrics.ssim(sr, hr, border=2)
  assert metrics.ssim(rgb(sr), hr, border=2) == metrics.ssim(sr, rgb(hr), border=2)
  for convention in metrics.CONVENTIONS:
    assert metrics.evaluate_pair(sr[..., None], hr, scale=2, convention=convention) == (
      metrics.evaluate_pair(rgb(sr), rgb(hr), scale=2, convention=convention)
    )


def test_grey_vs_rgb_compares_with_the_replicated_grey():
  rng = _rng(11)
  sr_rgb = rng.integers(0, 256, (30, 32, 3), dtype=np.uint8)
  hr_grey = rng.integers(0, 256, (30, 32), dtype=np.uint8)
  r, g, b = (sr_rgb[2:-2, 2:-2, c].astype(np.float64) for c in range(3))
  y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
  y_hr = 16 + 219 * hr_grey[2:-2, 2:-2].astype(np.float64) / 255
  want = 10 * math.log10(PEAK_SQ / np.mean((y - y_hr) ** 2))
  assert metrics.psnr(sr_rgb, hr_grey, border=2) == pytest.approx(want, abs=1e-10)
  assert metrics.psnr(hr_grey, sr_rgb, border=2) == pytest.approx(want, abs=1e-10)
  d = sr_rgb[2:-2, 2:-2].astype(np.float64) - hr_grey[2:-2, 2:-2, None]
  assert metrics.psnr(sr_rgb, hr_grey, border=2, y_channel=False) == pytest.approx(
    10 * math.log10(PEAK_SQ / np.mean(d**2)), abs=1e-10
  )
  assert metrics.ssim(sr_rgb, hr_grey, border=2) == pytest.approx(_slow_ssim(y, y_hr), abs=1e-10)


# --- evaluate_pair ---------------------------------------------------------------------


def test_evaluate_pair_crops_hr_top_left():
  hr = _random_rgb((50, 53, 3), seed=12)
  sr = hr[:48, :51].copy()  # modcrop(hr, 3)
  result = metrics.evaluate_pair(sr, hr, scale=3)
  assert result == {"psnr": math.inf, "ssim": pytest.approx(1.0, abs=1e-12)}
  # A bottom-right crop would not match, so the score is finite.
  assert metrics.evaluate_pair(hr[2:, 2:], hr, scale=3)["psnr"] < 30


def test_evaluate_pair_conventions():
  hr = _random_rgb((40, 44, 3), seed=13, low=4, high=250)
  sr = hr.copy()
  sr[..., 0] += 3  # Red off by 3 everywhere.
  bench = metrics.evaluate_pair(sr, hr, scale=2, convention="benchmark")
  div2k = metrics.evaluate_pair(sr, hr, scale=2, convention="div2k")
  dy = 65.481 * 3 / 255
  assert bench["psnr"] == pytest.approx(10 * math.log10(PEAK_SQ / dy**2), abs=1e-9)
  assert div2k["psnr"] == pytest.approx(10 * math.log10(PEAK_SQ / 3.0), abs=1e-9)
  assert div2k["ssim"] == pytest.approx(metrics.ssim(sr, hr, border=8), abs=0)
  # Errors only in rows 3..7: inside the div2k border (8), not the benchmark's (2).
  sr = hr.copy()
  sr[3:-3, 3:-3][:5] = 255 - hr[3:-3, 3:-3][:5]
  assert metrics.evaluate_pair(sr, hr, scale=2, convention="div2k")["psnr"] == math.inf
  assert metrics.evaluate_pair(sr, hr, scale=2, convention="benchmark")["psnr"] < 30


def test_evaluate_pair_rejects_bad_inputs():
  hr = _random_rgb((40, 44, 3), seed=14)
  with pytest.raises(ValueError, match="benchmark, div2k") as info:
    metrics.evaluate_pair(hr, hr, scale=2, convention="DIV2K")
  assert "'DIV2K'" in str(info.value)
  with pytest.raises(ValueError, match=r"sr shape \(40, 45, 3\) is larger than hr shape"):
    metrics.evaluate_pair(np.zeros((40, 45, 3), np.uint8), hr, scale=2)
  with pytest.raises(ValueError, match="scale"):
    metrics.evaluate_pair(hr, hr, scale=0)
