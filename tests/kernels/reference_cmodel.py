"""Slow, obviously-correct numpy reference of forced CModel (forcedphot.kernels.cmodel).

Per source: the source's own image (the plane with its own heavy footprint put back), every
coadd pixel tested against the region ellipse, the models as explicit sums of 2-D Gaussians
(np.linalg.inv / det of each convolved covariance), the stage amplitudes by np.linalg.lstsq on
the model column and the non-negative joint fit by trying every active set with lstsq on the
two-column matrix (the exact NNLS of two variables).
"""

from __future__ import annotations

import numpy as np


def own_image(image, valid, fp, src):
    """The image as source ``src`` sees it: its own heavy values on its footprint's valid pixels."""
    out = np.array(image, np.float64)
    used, span_off, span_y, span_x0, span_x1, val_off, values = fp
    f = used[src]
    if f < 0:
        return out
    k = val_off[f]
    h, w = image.shape
    for s in range(span_off[f], span_off[f + 1]):
        y, x0, x1 = int(span_y[s]), int(span_x0[s]), int(span_x1[s])
        for x in range(x0, x1 + 1):
            if 0 <= y < h and 0 <= x < w and valid[y, x]:
                out[y, x] = values[k + x - x0]
        k += x1 - x0 + 1
    return out


def model(x, y, xc, yc, q, weights, variances, amp, centre, cov):
    """sum_k sum_j w_k a_j N((x, y); (xc, yc) + mu_j, v_k Q + C_j) at the points (x, y)."""
    out = np.zeros(np.shape(x))
    q2 = np.array([[q[0], q[2]], [q[2], q[1]]])
    for w, v in zip(weights, variances):
        for a, mu, c in zip(amp, centre, cov):
            cc = v * q2 + np.array([[c[0], c[2]], [c[2], c[1]]])
            inv = np.linalg.inv(cc)
            dx = x - (xc + mu[0])
            dy = y - (yc + mu[1])
            e = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
            out += w * a * np.exp(-0.5 * e) / (2 * np.pi * np.sqrt(np.linalg.det(cc)))
    return out


def nnls_two(m, d):
    """argmin ||d - m alpha|| over alpha >= 0 for a (P, 2) matrix m: every active set, lstsq."""
    best, best_alpha = np.sum(d * d), np.zeros(2)
    for cols in ((0,), (1,), (0, 1)):
        sub = m[:, cols]
        if np.linalg.matrix_rank(sub) < len(cols):
            continue
        a, *_ = np.linalg.lstsq(sub, d, rcond=None)
        if np.any(a < 0):
            continue
        alpha = np.zeros(2)
        alpha[list(cols)] = a
        r = np.sum((d - m @ alpha) ** 2)
        if r < best:
            best, best_alpha = r, alpha
    return best_alpha


def reference_cmodel(image, variance, mask, valid, fp, xl, yl, region, q_exp, q_dev, stage_ok, psf_amp, psf_centre,
                     psf_cov, exp_w, exp_v, dev_w, dev_v, bad_bits, max_bad_fraction=0.1):
    """dict of per-source arrays: exp/dev/final flux, err, inner, fracDev, objective, and flags
    (badRef, edge, noGood, maxBad, noFlux, expFailed, devFailed, failed)."""
    n = len(xl)
    h, w = image.shape
    keys = ("exp_flux", "exp_err", "exp_inner", "dev_flux", "dev_err", "dev_inner", "flux", "err", "inner", "frac_dev",
            "objective")
    out = {k: np.full(n, np.nan) for k in keys}
    for k in ("bad_ref", "edge", "no_good", "max_bad", "no_flux", "exp_failed", "dev_failed", "failed"):
        out[k] = np.zeros(n, bool)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    good_plane = (valid != 0) & ((mask & bad_bits) == 0)
    for s in range(n):
        r = np.array([[region[s, 0], region[s, 2]], [region[s, 2], region[s, 1]]])
        if not (np.all(np.isfinite(r)) and r[0, 0] > 0 and np.linalg.det(r) > 0):
            for k in ("bad_ref", "failed", "exp_failed", "dev_failed"):
                out[k][s] = True
            continue
        has = [bool(stage_ok[s, 0]), bool(stage_ok[s, 1])]
        if not all(has):
            out["bad_ref"][s] = out["failed"][s] = True
        out["exp_failed"][s] |= not has[0]
        out["dev_failed"][s] |= not has[1]
        rinv = np.linalg.inv(r)
        # every pixel centre of an (generously) enlarged grid, on the coadd or not
        half = int(np.ceil(np.sqrt(max(r[0, 0], r[1, 1])))) + 3
        gy, gx = np.mgrid[int(round(yl[s])) - half:int(round(yl[s])) + half + 1,
                          int(round(xl[s])) - half:int(round(xl[s])) + half + 1].astype(float)
        dx, dy = gx - xl[s], gy - yl[s]
        inside = rinv[0, 0] * dx * dx + 2 * rinv[0, 1] * dx * dy + rinv[1, 1] * dy * dy <= 1.0
        px, py = gx[inside].astype(int), gy[inside].astype(int)
        on = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        out["edge"][s] = not on.all()
        good = np.zeros(px.size, bool)
        good[on] = good_plane[py[on], px[on]]
        n_in, n_good = px.size, good.sum()
        if n_good == 0 or n_in - n_good > max_bad_fraction * n_in:
            out["max_bad"][s] = True
            out["no_good"][s] = n_good == 0
            out["failed"][s] = out["exp_failed"][s] = out["dev_failed"][s] = True
            continue
        img = own_image(image, valid, fp, s)
        x, y = px[good].astype(float), py[good].astype(float)
        d = img[py[good], px[good]]
        v = np.asarray(variance, float)[py[good], px[good]]
        cols = []
        for stage, q, wts, var in (("exp", q_exp, exp_w, exp_v), ("dev", q_dev, dev_w, dev_v)):
            m = model(x, y, xl[s], yl[s], q[s], wts, var, psf_amp[s], psf_centre[s], psf_cov[s])
            total = np.sum(np.outer(wts, psf_amp[s]))
            cols.append((m, total))
            if not has[0 if stage == "exp" else 1]:
                continue
            (a,), *_ = np.linalg.lstsq(m[:, None], d, rcond=None)
            out[f"{stage}_flux"][s] = a * total
            out[f"{stage}_err"][s] = total * np.sqrt(np.sum(m * m * v)) / np.sum(m * m)
            out[f"{stage}_inner"][s] = a * m.sum()
            if a * m.sum() == 0:
                out[f"{stage}_failed"][s] = True
        if not all(has):
            continue
        mm = np.stack([cols[0][0], cols[1][0]], axis=1)
        alpha = nnls_two(mm, d)
        totals = np.array([cols[0][1], cols[1][1]])
        flux = alpha @ totals
        fit = mm @ alpha
        out["objective"][s] = 0.5 * np.sum((d - fit) ** 2)
        out["flux"][s] = flux
        out["inner"][s] = fit.sum()
        if not flux > 0:
            out["no_flux"][s] = out["failed"][s] = True
            continue
        out["err"][s] = flux * np.sqrt(np.sum(fit * fit * v)) / np.sum(fit * d)
        out["frac_dev"][s] = alpha[1] * totals[1] / flux
    return out
